#!/usr/bin/env bash
# Tear down the multi-node test cluster started by deploy/multinode-up.sh: cancel its jobs,
# stop its slurmd and slurmctld (from their own pid files), end what is left in its
# namespaces, then remove the namespaces, links, slurm.conf, pid files and Slurm state.
# Logs stay in /var/log/werkbank-multinode. munged and the single-node cluster are not touched.
#
# Usage (as root):  deploy/multinode-down.sh
# Safe to run again: removing what is not there is not an error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=multinode/cluster.env
. "$HERE/multinode/cluster.env"
CONF=$MN_RUN_DIR/slurm.conf
NS_DIR=$MN_RUN_DIR/ns

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "multinode-down: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "multinode-down: must run as root" >&2
    exit 3
fi

# alive, running, stop: see daemons.sh
. "$HERE/daemons.sh"

NAMESPACES=("$MN_HUB_NS" "$MN_NODE1_NS" "$MN_NODE2_NS")
NODES=(node1 node2)
client() { nsenter --net="/run/netns/$MN_HUB_NS" env SLURM_CONF="$CONF" timeout 10 "$@"; }
# pids_in NS: the processes in network namespace NS (ours: nothing else enters it).
pids_in() { [ -e "/run/netns/$1" ] && ip netns pids "$1" 2>/dev/null || true; }

# Cancel the jobs first, while the daemons can still end them.
if running slurmctld "$MN_RUN_DIR/slurmctld.pid"; then
    jobs=$(client squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(echo "$jobs" | paste -sd' ' -)"
        # shellcheck disable=SC2086  # one argument per job id is intended
        client scancel $jobs || true
        for _ in $(seq 1 20); do
            [ -z "$(client squeue -h -t PD,R,CG,S -o %A 2>/dev/null || true)" ] && break
            sleep 0.5
        done
    fi
fi

# All three at once: each takes 1-2 s to shut down.
for node in "${NODES[@]}"; do stop slurmd "$MN_RUN_DIR/slurmd-$node.pid" & done
stop slurmctld "$MN_RUN_DIR/slurmctld.pid" &
wait

# Whatever still runs in our namespaces (job steps whose node was unreachable, a test's
# listener) was started by this cluster: TERM, then KILL after 5 s.
left=
for ns in "${NAMESPACES[@]}"; do left="$left $(pids_in "$ns")"; done
# shellcheck disable=SC2086  # one argument per pid is intended
if [ -n "${left// /}" ]; then
    say "ending processes left in the namespaces:$left"
    kill $left 2>/dev/null || true
    for _ in $(seq 1 50); do
        still=
        for ns in "${NAMESPACES[@]}"; do still="$still$(pids_in "$ns")"; done
        [ -z "$still" ] && break
        sleep 0.1
    done
    for ns in "${NAMESPACES[@]}"; do
        # shellcheck disable=SC2046  # one argument per pid is intended
        kill -9 $(pids_in "$ns") 2>/dev/null || true
    done
fi

for ns in "${NAMESPACES[@]}"; do
    ip link del "v$ns" 2>/dev/null || true # deletes both ends of the veth pair
    if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
done
ip link del "$MN_BRIDGE" 2>/dev/null || true
# The UTS and mount namespaces (bind-mounted files), then their private mount.
for file in "$NS_DIR"/*.uts "$NS_DIR"/*.mnt "$NS_DIR"; do
    if mountpoint -q "$file" 2>/dev/null; then umount "$file"; fi
done

# Config, pid files and state go: the next multinode-up.sh starts a fresh cluster.
rm -rf "$MN_RUN_DIR" "$MN_SPOOL_DIR"
echo "multinode: down"
