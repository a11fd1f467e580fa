#!/usr/bin/env bash
# `make demo` for a user who is not root: Slurm cannot be set up (installing it and running
# its daemons needs root), so this says so and runs the hub under your own account with the
# clearly labelled local-process spawner. Everything lives in ~/.werkbank; safe to re-run.
#
# Environment: WERKBANK_DEMO_PORT (8000), WERKBANK_DEMO_MLFLOW_PORT (5000),
# WERKBANK_USER_DIR (~/.werkbank).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BASE=${WERKBANK_USER_DIR:-$HOME/.werkbank}
PORT=${WERKBANK_DEMO_PORT:-8000}
MLFLOW_PORT=${WERKBANK_DEMO_MLFLOW_PORT:-5000}
HUB_DIR=$BASE/hub
PID_FILE=$HUB_DIR/jupyterhub.pid
LOG=$HUB_DIR/jupyterhub.log
URL=http://127.0.0.1:$PORT
PASSWORD=werkbank-demo
ME=$(id -un)

say() { echo "demo: $*"; }
. "$HERE/daemons.sh"

say "not root: Slurm cannot be set up here (installing it and running its daemons needs root)."
say "FALLBACK: servers run as LOCAL PROCESSES under your account ($ME): no Slurm, no GPUs, no limits."
mkdir -p "$HUB_DIR"
chmod 0700 "$BASE"

# Python: the shared environment if root installed it, else a private one.
VENV=${WERKBANK_PREFIX:-/opt/werkbank}/venv
if ! "$VENV/bin/python" -c "import jupyterhub, werkbank_spawner" 2>/dev/null; then
    VENV=$BASE/venv
    if ! "$VENV/bin/python" -c "import jupyterhub, werkbank_spawner" 2>/dev/null; then
        say "creating $VENV (a few minutes)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q -r "$REPO/requirements.txt" 2>&1 | grep -v '^WARNING: Location' || true
        "$VENV/bin/pip" install -q "$REPO/spawner" 2>&1 | grep -v '^WARNING: Location' || true
    fi
fi

# The proxy: from the machine, else a private npm install.
if ! command -v configurable-http-proxy >/dev/null 2>&1; then
    if [ ! -x "$BASE/node/node_modules/.bin/configurable-http-proxy" ]; then
        command -v npm >/dev/null 2>&1 || { say "npm is needed for configurable-http-proxy" >&2; exit 1; }
        say "npm install configurable-http-proxy@5.3.0 into $BASE/node"
        npm install -s --no-fund --no-audit --prefix "$BASE/node" configurable-http-proxy@5.3.0 >/dev/null
    fi
    export PATH=$BASE/node/node_modules/.bin:$PATH
fi

# A site file of your own: the repo's demo site with your user, ports and folders.
"$VENV/bin/python" - "$REPO/hub_config/site.yaml" "$BASE/site.yaml" "$ME" "$PORT" "$MLFLOW_PORT" "$BASE" <<'PY'
import sys
import yaml

source, target, user, port, mlflow_port, base = sys.argv[1:]
site = yaml.safe_load(open(source))
site["hub"].update(
    bind_url=f"http://127.0.0.1:{port}",
    hub_bind_url=f"http://127.0.0.1:{int(port) + 81}",
    data_dir=f"{base}/hub",
    spawner="local",
)
site["auth"]["allowed_users"] = [user]
# Workshops make accounts and Slurm reservations: root's demo only.
site["workshops"] = {"enabled": False}
site["tracking"]["mlflow"].update(
    port=int(mlflow_port),
    url=f"http://127.0.0.1:{mlflow_port}",
    backend_store_uri=f"sqlite:///{base}/mlflow/mlflow.db",
    artifacts_destination=f"{base}/mlflow/artifacts",
)
with open(target, "w") as f:
    f.write("# Written by deploy/demo-up-user.sh from hub_config/site.yaml; edit that one.\n")
    yaml.safe_dump(site, f, sort_keys=False)
PY
mkdir -p "$BASE/mlflow"
"$VENV/bin/werkbank-site" check "$BASE/site.yaml" 2>/dev/null || "$VENV/bin/werkbank-site" check "$BASE/site.yaml"

if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    say "JupyterHub already running (pid $(cat "$PID_FILE"))"
else
    say "starting JupyterHub (log: $LOG)"
    (
        cd "$HUB_DIR"
        export WERKBANK_SITE_CONFIG=$BASE/site.yaml WERKBANK_SPAWNER=local
        exec setsid "$VENV/bin/jupyterhub" -f "$REPO/hub_config/jupyterhub_config.py" >>"$LOG" 2>&1
    ) &
    echo $! >"$PID_FILE"
fi

wait_for_hub "$URL" "$PID_FILE" "$LOG" || exit 1
cat <<TXT

  werkbank is up (FALLBACK: local processes, no Slurm).
    URL:       $URL/
    user:      $ME
    password:  $PASSWORD
    MLflow:    $URL/services/mlflow/  (after login; the hub starts it, ~15 s)
  Stop it with: make demo-stop
TXT
