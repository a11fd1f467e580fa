#!/usr/bin/env bash
# `make demo NODES=2` (up) and its part of `make demo-stop` (down): the demo on the multi-node
# cluster of deploy/multinode-up.sh instead of this machine's single-node Slurm. JupyterHub, its
# proxy and the managed MLflow (with its proxy service) run on the hub host wb-hub (its network,
# UTS and mount namespaces, as slurmctld there); users' servers are Slurm jobs on node1 and node2,
# which reach the hub's API and MLflow at wb-hub's address (deploy/multinode/cluster.env).
#
# Only the namespaces' addresses and loopback are used: this machine has no route to wb-hub's
# address, so the printed URL is on this machine's loopback, where deploy/netns-forward.py
# listens and forwards each connection from inside wb-hub to the proxy (websockets included).
#
# Login is PAM (the demo user's system password, set by deploy/users.sh): the hub listens on a
# cluster address, where the demo site's shared password is refused (hub_config/site.yaml).
#
# What lives where:
#   /var/lib/werkbank/multinode-demo/  site.yaml (written from hub_config/site.yaml at each up),
#                                      hub/ (state, jupyterhub.log), mlflow/, forward.log
#   /run/werkbank-demo-multinode/      jupyterhub.pid, forward.pid, port (the forwarder's), and
#                                      the markers started-cluster / started-slurm: what `up`
#                                      started and `down` therefore stops
# `down` cancels the demo user's jobs on the cluster, stops the hub (which stops its proxy and
# MLflow) and the forwarder, and stops the multi-node cluster only if `up` started it (likewise
# the single-node Slurm, which `up` starts only where Slurm was not installed yet).
#
# Usage (as root):  deploy/demo-multinode.sh up|down      (make demo NODES=2 / make demo-stop)
# Environment: WERKBANK_DEMO_PORT (8000): the loopback port of the printed URL; the hub's own
#   ports on wb-hub are fixed (8000, 8001, 8081; MLflow 5000, 5001), as nothing else is there.
#   WERKBANK_DEMO_INSTALL=no skips deploy/install.sh; for tests only, which run from a --dev
#   environment that install.sh without --dev would replace.
# Exit codes: 0 done, 2 usage, 3 cannot run here (not root), 1 anything else failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
VENV=${WERKBANK_PREFIX:-/opt/werkbank}/venv
# shellcheck source=multinode/cluster.env
. "$HERE/multinode/cluster.env"
STATE=/var/lib/werkbank/multinode-demo
HUB_DIR=$STATE/hub
SITE=$STATE/site.yaml
RUN=/run/werkbank-demo-multinode
HUB_PID=$RUN/jupyterhub.pid
FORWARD_PID=$RUN/forward.pid
LOG=$HUB_DIR/jupyterhub.log
FORWARD_LOG=$STATE/forward.log
SINGLE_NODE_HUB_PID=/var/lib/werkbank/hub/jupyterhub.pid
PORT=${WERKBANK_DEMO_PORT:-8000}
HUB_PORT=8000
MLFLOW_PROXY_PORT=5001
DEMO_USER=demo
DEMO_PASSWORD=werkbank-demo
CONF=$MN_RUN_DIR/slurm.conf

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "demo: $*"; }
die() {
    echo "demo: error: $*" >&2
    exit 1
}
# alive, running, stop, wait_for_hub: see daemons.sh
. "$HERE/daemons.sh"

# A Slurm client on the hub host, bounded: a wedged slurmctld must not hang us.
client() { nsenter --net="/run/netns/$MN_HUB_NS" env SLURM_CONF="$CONF" timeout 10 "$@"; }
# The forwarder runs as "$VENV/bin/python" (its process name).
forwarding() { running python "$FORWARD_PID"; }
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

up() {
    [[ $PORT =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] \
        || { echo "demo: WERKBANK_DEMO_PORT must be a TCP port, got '$PORT'" >&2; exit 2; }
    # The loopback port is the one thing this demo shares with the single-node one.
    if ! forwarding && listening "$PORT"; then
        if [ -f "$SINGLE_NODE_HUB_PID" ] && kill -0 "$(cat "$SINGLE_NODE_HUB_PID")" 2>/dev/null; then
            die "the single-node demo (make demo) serves http://127.0.0.1:$PORT/; stop it first: make demo-stop"
        fi
        die "something else listens on 127.0.0.1:$PORT (ss -ltnp 'sport = :$PORT' names it)"
    fi

    mkdir -p "$RUN"
    if [ "${WERKBANK_DEMO_INSTALL:-yes}" != no ]; then "$HERE/install.sh"; fi
    # The multi-node cluster needs Slurm installed and munge's key, which slurm-up.sh provides
    # (it also starts the single-node cluster; `down` stops that again).
    if ! command -v slurmctld >/dev/null 2>&1 || [ ! -s /etc/munge/munge.key ]; then
        say "Slurm is not set up yet: deploy/slurm-up.sh installs it"
        "$HERE/slurm-up.sh"
        touch "$RUN/started-slurm"
    fi
    if ! running slurmctld "$MN_RUN_DIR/slurmctld.pid" && [ ! -e "$RUN/started-cluster" ]; then
        touch "$RUN/started-cluster"
    fi
    "$HERE/multinode-up.sh"

    "$HERE/users.sh" "$DEMO_USER" "$DEMO_PASSWORD" >/dev/null

    mkdir -p "$HUB_DIR"
    chmod 0755 "$STATE"
    chmod 0700 "$HUB_DIR"
    "$VENV/bin/python" - "$REPO/hub_config/site.yaml" "$SITE" "$STATE" "$CONF" "$MN_HUB_ADDR" "$HUB_PORT" \
        "$DEMO_USER" <<'PY'
import sys

import yaml

source, target, state, conf, address, port, user = sys.argv[1:]
site = yaml.safe_load(open(source))
# The hub's proxy and API on wb-hub's address: the nodes report there, and the forwarder
# connects there. PAM, as shared-password is refused off loopback.
site["hub"].update(
    bind_url=f"http://{address}:{port}",
    hub_bind_url=f"http://{address}:{int(port) + 81}",
    data_dir=f"{state}/hub",
    spawner="slurm",
)
site["auth"] = {"type": "pam", "allowed_users": [user], "allow_all": False}
site["slurm"].update(conf=conf)
# What the two nodes have (4 CPUs, 4 GiB each, partition cpu, no GPUs).
site["profiles"] = [p for p in site["profiles"] if p["partition"] == "cpu" and not p.get("gpus")]
site["custom_fields"] = [f for f in site["custom_fields"] if f not in ("gpus", "partition")]
site["limits"] = {
    "default": {**site["limits"]["default"], "gpus": 0, "cpus": 4, "memory": "4G",
                "partitions": ["cpu"], "nodes": 2},
    "groups": {},
}
# Workshops make accounts and Slurm reservations on this machine's cluster: the single-node demo's.
site["workshops"] = {"enabled": False}
with open(target, "w") as f:
    f.write("# Written by deploy/demo-multinode.sh from hub_config/site.yaml; edit that one.\n")
    yaml.safe_dump(site, f, sort_keys=False)
PY
    "$VENV/bin/werkbank-site" check "$SITE" >/dev/null || "$VENV/bin/werkbank-site" check "$SITE"

    if running jupyterhub "$HUB_PID"; then
        say "JupyterHub already running on $MN_HUB_NS (pid $(cat "$HUB_PID"))"
    else
        say "starting JupyterHub on $MN_HUB_NS (log: $LOG)"
        (
            cd "$HUB_DIR"
            export WERKBANK_SITE_CONFIG=$SITE WERKBANK_SPAWNER=slurm
            exec setsid nsenter --net="/run/netns/$MN_HUB_NS" --uts="$MN_RUN_DIR/ns/$MN_HUB_NS.uts" \
                --mount="$MN_RUN_DIR/ns/hosts.mnt" env SLURM_CONF="$CONF" \
                "$VENV/bin/jupyterhub" -f "$REPO/hub_config/jupyterhub_config.py" >>"$LOG" 2>&1
        ) &
        echo $! >"$HUB_PID"
    fi
    if forwarding; then
        [ "$(cat "$RUN/port")" = "$PORT" ] \
            || die "the demo's forwarder serves port $(cat "$RUN/port"), not $PORT: make demo-stop first"
    else
        say "forwarding 127.0.0.1:$PORT to $MN_HUB_ADDR:$HUB_PORT on $MN_HUB_NS (log: $FORWARD_LOG)"
        setsid "$VENV/bin/python" "$HERE/netns-forward.py" "127.0.0.1:$PORT" "/run/netns/$MN_HUB_NS" \
            "$MN_HUB_ADDR:$HUB_PORT" >>"$FORWARD_LOG" 2>&1 &
        echo $! >"$FORWARD_PID"
        echo "$PORT" >"$RUN/port"
    fi

    if ! wait_for_hub "http://127.0.0.1:$PORT" "$HUB_PID" "$LOG"; then
        # Which half failed: the hub on wb-hub, or the way to it?
        if nsenter --net="/run/netns/$MN_HUB_NS" curl -fsS -m 5 "http://$MN_HUB_ADDR:$HUB_PORT/hub/health" \
            >/dev/null 2>&1; then
            say "JupyterHub answers on $MN_HUB_NS ($MN_HUB_ADDR:$HUB_PORT), but not through the forwarder:" >&2
            tail -n 5 "$FORWARD_LOG" >&2
        fi
        exit 1
    fi
    forwarding || { tail -n 20 "$FORWARD_LOG" >&2; die "the forwarder exited (log: $FORWARD_LOG)"; }
    cat <<TXT

  werkbank is up on the multi-node cluster (hub host $MN_HUB_NS, nodes node1 and node2).
    URL:       http://127.0.0.1:$PORT/  (forwarded to the hub's proxy on $MN_HUB_NS, $MN_HUB_ADDR:$HUB_PORT)
    user:      $DEMO_USER
    password:  $DEMO_PASSWORD  (the account's system password; the hub uses PAM here)
    spawner:   slurm: servers are jobs on node1 ($MN_NODE1_ADDR) or node2 ($MN_NODE2_ADDR)
    MLflow:    http://127.0.0.1:$PORT/services/mlflow/  (after login; the hub starts it, ~15 s);
               jobs use http://$MN_HUB_ADDR:$MLFLOW_PROXY_PORT/services/mlflow
    Slurm:     nsenter --net=/run/netns/$MN_HUB_NS env SLURM_CONF=$CONF squeue
  Stop everything with: make demo-stop
TXT
}

down() {
    [ -d "$RUN" ] || { say "the multi-node demo is not running"; return 0; }
    # Servers first: the hub keeps users' jobs alive across its own restarts on purpose.
    if running slurmctld "$MN_RUN_DIR/slurmctld.pid" && id -u "$DEMO_USER" >/dev/null 2>&1; then
        if [ -n "$(client squeue -h -u "$DEMO_USER" -o %A 2>/dev/null || true)" ]; then
            say "cancelling $DEMO_USER's jobs on the multi-node cluster"
            client scancel --user="$DEMO_USER" || true
            for _ in $(seq 1 40); do
                [ -z "$(client squeue -h -u "$DEMO_USER" -t PD,R,CG,S -o %A 2>/dev/null || true)" ] && break
                sleep 0.25
            done
        fi
    fi
    # The hub stops its proxy and MLflow itself on TERM.
    stop jupyterhub "$HUB_PID"
    stop python "$FORWARD_PID"
    if [ -e "$RUN/started-cluster" ]; then
        "$HERE/multinode-down.sh"
    elif running slurmctld "$MN_RUN_DIR/slurmctld.pid"; then
        say "the multi-node cluster keeps running (the demo did not start it)"
    fi
    if [ -e "$RUN/started-slurm" ]; then "$HERE/slurm-down.sh"; fi
    rm -rf "$RUN"
    say "multi-node demo stopped"
}

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: the multi-node demo must run as root (it creates network namespaces and starts daemons)" >&2
    exit 3
fi
case "${1:-}" in
    up) up ;;
    down) down ;;
    *)
        echo "usage: $0 up|down" >&2
        exit 2
        ;;
esac
