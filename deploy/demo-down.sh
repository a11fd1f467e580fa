#!/usr/bin/env bash
# `make demo-stop`: stop what `make demo` started: the users' server jobs, JupyterHub (and
# with it the proxy and MLflow, which it started), then Slurm and munge. Stops either kind of
# demo: the multi-node one (make demo NODES=2) through deploy/demo-multinode.sh, which stops the
# multi-node cluster only if the demo started it; then the single-node one, unless only the
# multi-node demo ran (its Slurm is not the demo's then, e.g. a test cluster).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PID_FILE=/var/lib/werkbank/hub/jupyterhub.pid

stop_hub() {
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo-stop: stopping JupyterHub (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
    rm -f "$1"
}

if [ "$(id -u)" -ne 0 ]; then
    # The fallback hub of demo-up-user.sh (its servers are its children and stop with it).
    stop_hub "${WERKBANK_USER_DIR:-$HOME/.werkbank}/hub/jupyterhub.pid"
    echo "demo-stop: done"
    exit 0
fi

if [ -d /run/werkbank-demo-multinode ]; then
    "$HERE/demo-multinode.sh" down
    if ! { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }; then
        echo "demo-stop: done"
        exit 0
    fi
fi

# Servers first: the hub keeps user jobs alive across its own restarts on purpose.
if command -v scancel >/dev/null 2>&1; then
    scancel --name=werkbank-jupyter 2>/dev/null || true
fi
stop_hub "$PID_FILE"
"$HERE/slurm-down.sh"
echo "demo-stop: done"
