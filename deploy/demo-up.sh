#!/usr/bin/env bash
# `make demo`: Slurm (+ munge, fake GPUs), a demo user, and JupyterHub with its managed
# MLflow server, all on this machine. Prints the URL and the credentials. Safe to re-run.
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

if [ "$(id -u)" -ne 0 ]; then
    exec "$HERE/demo-up-user.sh"
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
