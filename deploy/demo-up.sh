#!/usr/bin/env bash
# `make demo`: Slurm (+ munge, fake GPUs), a demo user, and JupyterHub with its managed
# MLflow server, all on this machine. Prints the URL and the credentials. Safe to re-run.
#
# Usage: deploy/demo-up.sh [--nodes 1|2]   (make demo [NODES=2])
#   --nodes 1 (default): this machine's single-node Slurm (deploy/slurm-up.sh).
#   --nodes 2: the multi-node cluster (deploy/multinode-up.sh): the hub on its hub host, servers
#   on node1 and node2; deploy/demo-multinode.sh does that part (as root only).
#
# Where Slurm cannot be set up, it says so and runs the hub with the clearly labelled
# local-process spawner instead of failing: without apt-get here, without root in
# demo-up-user.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
VENV=${WERKBANK_PREFIX:-/opt/werkbank}/venv
STATE=/var/lib/werkbank
HUB_DIR=$STATE/hub
PID_FILE=$HUB_DIR/jupyterhub.pid
LOG=$HUB_DIR/jupyterhub.log
URL=http://127.0.0.1:8000
DEMO_USER=demo
DEMO_PASSWORD=werkbank-demo   # the shared password in hub_config/site.yaml

say() { echo "demo: $*"; }
. "$HERE/daemons.sh"

nodes=1
case "${1:-}" in
    "") ;;
    --nodes) nodes=${2:-} ;;
    --nodes=*) nodes=${1#--nodes=} ;;
    *) echo "usage: $0 [--nodes 1|2]" >&2; exit 2 ;;
esac
case "$nodes" in
    1) ;;
    2) exec "$HERE/demo-multinode.sh" up ;;
    *)
        echo "demo: NODES must be 1 (this machine's Slurm) or 2 (the multi-node cluster of" \
            "deploy/multinode-up.sh), got '$nodes'" >&2
        exit 2
        ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    exec "$HERE/demo-up-user.sh"
fi
# One demo at a time on the loopback port: the multi-node demo's forwarder may hold it.
if [ "$(cat /run/werkbank-demo-multinode/port 2>/dev/null)" = "${URL##*:}" ] \
    && running python /run/werkbank-demo-multinode/forward.pid; then
    say "the multi-node demo (make demo NODES=2) serves $URL/; stop it first: make demo-stop" >&2
    exit 1
fi
"$HERE/install.sh"

spawner=slurm
rc=0
"$HERE/slurm-up.sh" || rc=$?
if [ "$rc" -eq 3 ]; then
    say "Slurm cannot be set up on this machine (see above)."
    say "FALLBACK: servers will run as LOCAL PROCESSES (no Slurm, no GPUs, no limits)."
    spawner=local
elif [ "$rc" -ne 0 ]; then
    say "Slurm failed to start; see the messages above." >&2
    exit "$rc"
fi

# PAM sites log in with the system password; the demo site uses a shared password. Both work.
"$HERE/users.sh" "$DEMO_USER" "$DEMO_PASSWORD" >/dev/null

"$VENV/bin/werkbank-site" check "$REPO/hub_config/site.yaml"

mkdir -p "$HUB_DIR"
chmod 0700 "$HUB_DIR"
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    say "JupyterHub already running (pid $(cat "$PID_FILE"))"
else
    say "starting JupyterHub (log: $LOG)"
    (
        cd "$HUB_DIR"
        export WERKBANK_SPAWNER=$spawner
        exec setsid "$VENV/bin/jupyterhub" -f "$REPO/hub_config/jupyterhub_config.py" >>"$LOG" 2>&1
    ) &
    echo $! >"$PID_FILE"
fi

wait_for_hub "$URL" "$PID_FILE" "$LOG" || exit 1
cat <<TXT

  werkbank is up.
    URL:       $URL/
    user:      $DEMO_USER
    password:  $DEMO_PASSWORD
    spawner:   $spawner$([ "$spawner" = local ] && echo "  (FALLBACK: local processes, no Slurm)")
    MLflow:    $URL/services/mlflow/  (after login; the hub starts it, ~15 s)
  Stop everything with: make demo-stop
TXT
