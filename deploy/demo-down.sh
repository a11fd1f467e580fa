#!/usr/bin/env bash
# `make demo-stop`: stop what `make demo` started: the users' server jobs, JupyterHub (and
# with it the proxy and MLflow, which it started), then Slurm and munge.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PID_FILE=/var/lib/werkbank/hub/jupyterhub.pid

# Servers first: the hub keeps user jobs alive across its own restarts on purpose.
if command -v scancel >/dev/null 2>&1; then
    scancel --name=werkbank-jupyter 2>/dev/null || true
fi
if [ -f "$PID_FILE" ]; then
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo-stop: stopping JupyterHub (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$PID_FILE"
fi
"$HERE/slurm-down.sh"
echo "demo-stop: done"
