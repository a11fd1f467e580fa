#!/usr/bin/env bash
# Bring up werkbank's multi-node test cluster on this machine: a hub host and two compute
# nodes, each a network namespace on one bridge with its own address (deploy/multinode/
# cluster.env) and a UTS namespace with its own hostname; slurmctld runs in the hub's,
# `slurmd -N node1` and `slurmd -N node2` in theirs, entered with nsenter (not `ip netns exec`,
# which hides the cgroup mounts). The three share one mount namespace that differs from the
# machine's only in /etc/hosts, which names the three hosts: a host's name resolves to its
# address everywhere, as on a cluster with DNS (torch/gloo look their own hostname up).
#
# A second Slurm cluster beside the single-node one from deploy/slurm-up.sh, which it never
# touches: its own ClusterName, ports, slurm.conf, state, spool, pid and log files. It shares
# munged and /etc/munge/munge.key (munge's socket is a file, reachable from every namespace).
#
# Clients run in the hub namespace with its slurm.conf, e.g.
#   nsenter --net=/run/netns/wb-hub env SLURM_CONF=/run/werkbank-multinode/slurm.conf sinfo
#
# What lives where:
#   /run/werkbank-multinode/   slurm.conf, config.sha256 (config of the running daemons),
#                              slurmctld.pid, slurmd-node1.pid, slurmd-node2.pid, hosts (the
#                              hosts' /etc/hosts), ns/ (a private bind mount holding the UTS
#                              namespaces <namespace>.uts and the mount namespace hosts.mnt)
#   /var/log/werkbank-multinode/  slurmctld.log, slurmd-node1.log, slurmd-node2.log, jobcomp.log
#   /var/spool/werkbank-multinode/  slurmctld (StateSaveLocation), slurmd-node1, slurmd-node2
#   /run/netns/wb-hub, wb-node1, wb-node2; links wb-br0 (bridge), vwb-hub, vwb-node1, vwb-node2
#
# Usage (as root):  deploy/multinode-up.sh
# Safe to run again: it creates, repairs (a link left down) or (re)starts only what is missing
# or changed, and resumes nodes left DOWN. deploy/multinode-down.sh removes all of it.
# Exit codes: 0 up, 3 cannot set up here (not root / missing commands), 1 anything else failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=multinode/cluster.env
. "$HERE/multinode/cluster.env"
CONF=$MN_RUN_DIR/slurm.conf
NS_DIR=$MN_RUN_DIR/ns
RUNNING_SUM=$MN_RUN_DIR/config.sha256
WAIT_SECONDS=30

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "multinode-up: $*"; }
die() {
    echo "multinode-up: error: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "multinode-up: must run as root (it creates namespaces and starts daemons)" >&2
    exit 3
fi
for cmd in ip nsenter unshare mountpoint slurmctld slurmd sinfo scontrol munge unmunge; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "multinode-up: $cmd is not installed (deploy/slurm-up.sh installs Slurm and munge)" >&2
        exit 3
    fi
done

# alive, running, stop, node_readiness: see daemons.sh
. "$HERE/daemons.sh"

# Host name → namespace and address.
declare -A NS=([wb-hub]=$MN_HUB_NS [node1]=$MN_NODE1_NS [node2]=$MN_NODE2_NS)
declare -A ADDR=([wb-hub]=$MN_HUB_ADDR [node1]=$MN_NODE1_ADDR [node2]=$MN_NODE2_ADDR)
HOSTS=(wb-hub node1 node2)
NODES=(node1 node2)

# in_host HOST CMD...: run CMD on HOST: in its network and UTS namespaces and the hosts' mount
# namespace (not `ip netns exec`, which remounts /sys and hides the cgroup mounts slurmd reads).
in_host() {
    local host=$1
    shift
    nsenter --net="/run/netns/${NS[$host]}" --uts="$NS_DIR/${NS[$host]}.uts" --mount="$NS_DIR/hosts.mnt" "$@"
}
# A Slurm client in the hub namespace, bounded: a wedged slurmctld must not hang us.
client() { nsenter --net="/run/netns/$MN_HUB_NS" env SLURM_CONF="$CONF" timeout 10 "$@"; }

if id -u slurm >/dev/null 2>&1; then SLURM_USER=slurm; else SLURM_USER=root; fi

# ---------------------------------------------------------------- address range
# Our addresses must not be in use on this machine already (the root namespace's interfaces).
for host in "${HOSTS[@]}"; do
    if ip -4 -o addr show | grep -qw "inet ${ADDR[$host]}"; then
        die "${ADDR[$host]} is already an address of this machine; change deploy/multinode/cluster.env"
    fi
done

# ---------------------------------------------------------------- directories
mkdir -p "$NS_DIR" "$MN_LOG_DIR" "$MN_SPOOL_DIR/slurmctld"
for node in "${NODES[@]}"; do mkdir -p "$MN_SPOOL_DIR/slurmd-$node"; done
chown "$SLURM_USER:" "$MN_RUN_DIR" "$MN_LOG_DIR" "$MN_SPOOL_DIR/slurmctld"
chmod 0755 "$MN_RUN_DIR" "$MN_LOG_DIR" "$MN_SPOOL_DIR"

# ---------------------------------------------------------------- munge (shared)
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    # The single-node cluster's munged is the one meant here; start it as slurm-up.sh does if
    # nothing answers. multinode-down.sh leaves it running: the other cluster may use it.
    [ -s /etc/munge/munge.key ] || die "no /etc/munge/munge.key: run deploy/slurm-up.sh once"
    say "starting munged"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge: /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- network
if ! ip link show "$MN_BRIDGE" >/dev/null 2>&1; then
    say "creating bridge $MN_BRIDGE"
    ip link add "$MN_BRIDGE" type bridge
fi
ip link set "$MN_BRIDGE" up

for host in "${HOSTS[@]}"; do
    ns=${NS[$host]}
    veth=v$ns # the bridge's end of the host's cable; the host's end is eth0
    if [ ! -e "/run/netns/$ns" ]; then
        say "creating namespace $ns (${ADDR[$host]})"
        ip netns add "$ns"
    fi
    if ! ip link show "$veth" >/dev/null 2>&1; then
        ip link add "$veth" type veth peer name eth0 netns "$ns"
    fi
    ip link set "$veth" master "$MN_BRIDGE"
    # Also repairs a link a fault test left down.
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr replace "${ADDR[$host]}/$MN_PREFIX_LEN" dev eth0
    ip -n "$ns" link set eth0 up
done

# ---------------------------------------------------------------- hostnames
# Namespace files can only be bind-mounted onto a private mount (else the mount could propagate
# into the namespace it names): make NS_DIR one, as `ip netns` does with /run/netns.
if ! mountpoint -q "$NS_DIR"; then
    mount --bind "$NS_DIR" "$NS_DIR"
    mount --make-private "$NS_DIR"
fi
for host in "${HOSTS[@]}"; do
    uts=$NS_DIR/${NS[$host]}.uts
    if ! mountpoint -q "$uts"; then
        touch "$uts"
        unshare --uts="$uts" hostname "$host"
    fi
done
hosts=$(
    printf '# /etc/hosts of the multi-node cluster'"'"'s hosts (deploy/multinode-up.sh)\n'
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
    for host in "${HOSTS[@]}"; do printf '%s\t%s\n' "${ADDR[$host]}" "$host"; done
)
# Rewritten in place, never replaced: the mount namespace holds this file's inode.
[ "$(cat "$MN_RUN_DIR/hosts" 2>/dev/null)" = "$hosts" ] || echo "$hosts" >"$MN_RUN_DIR/hosts"
mnt=$NS_DIR/hosts.mnt
if ! mountpoint -q "$mnt"; then
    touch "$mnt"
    # slave: mounts made on the machine later still show inside; none made inside leak out.
    unshare --mount="$mnt" --propagation slave mount --bind "$MN_RUN_DIR/hosts" /etc/hosts
fi

# ---------------------------------------------------------------- config
tmp=$(mktemp)
sed -e "s|@RUN_DIR@|$MN_RUN_DIR|g" \
    -e "s|@LOG_DIR@|$MN_LOG_DIR|g" \
    -e "s|@SPOOL_DIR@|$MN_SPOOL_DIR|g" \
    -e "s|@SLURM_USER@|$SLURM_USER|g" \
    -e "s|@HUB_NAME@|wb-hub|g" \
    -e "s|@HUB_ADDR@|$MN_HUB_ADDR|g" \
    -e "s|@NODE1_ADDR@|$MN_NODE1_ADDR|g" \
    -e "s|@NODE2_ADDR@|$MN_NODE2_ADDR|g" \
    -e "s|@CTLD_PORT@|$MN_CTLD_PORT|g" \
    -e "s|@SLURMD_PORT@|$MN_SLURMD_PORT|g" \
    -e "s|@SLURMD_TIMEOUT@|$MN_SLURMD_TIMEOUT|g" \
    "$HERE/multinode/slurm.conf.in" >"$tmp"
if cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
else
    say "writing $CONF"
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
fi
config_sum=$(sha256sum "$CONF" | cut -d' ' -f1)

# ---------------------------------------------------------------- daemons
ctld_pid=$MN_RUN_DIR/slurmctld.pid
any_running=no
running slurmctld "$ctld_pid" && any_running=yes
for node in "${NODES[@]}"; do running slurmd "$MN_RUN_DIR/slurmd-$node.pid" && any_running=yes; done
if [ "$any_running" = yes ] && [ "$(cat "$RUNNING_SUM" 2>/dev/null)" != "$config_sum" ]; then
    say "config changed; restarting this cluster's daemons"
    for node in "${NODES[@]}"; do stop slurmd "$MN_RUN_DIR/slurmd-$node.pid" & done
    stop slurmctld "$ctld_pid" &
    wait
fi

started=no
if ! running slurmctld "$ctld_pid"; then
    say "starting slurmctld in $MN_HUB_NS"
    in_host wb-hub env SLURM_CONF="$CONF" slurmctld -f "$CONF"
    started=yes
fi
for node in "${NODES[@]}"; do
    if ! running slurmd "$MN_RUN_DIR/slurmd-$node.pid"; then
        say "starting slurmd -N $node in ${NS[$node]}"
        in_host "$node" env SLURM_CONF="$CONF" slurmd -f "$CONF" -N "$node"
        started=yes
    fi
done
echo "$config_sum" >"$RUNNING_SUM"

show_logs() {
    for log in slurmctld "${NODES[@]/#/slurmd-}"; do
        echo "--- tail $MN_LOG_DIR/$log.log" >&2
        tail -n 20 "$MN_LOG_DIR/$log.log" >&2 2>/dev/null || true
    done
}

# ---------------------------------------------------------------- wait for the nodes
declare -A resumed=()
deadline=$((SECONDS + WAIT_SECONDS))
while :; do
    ready=0
    states=
    for node in "${NODES[@]}"; do
        state=$(client sinfo -h -n "$node" -o %T 2>/dev/null || true)
        states="$states $node=${state:-?}"
        case "$(node_readiness "$state")" in
            ready) ready=$((ready + 1)) ;;
            resume)
                if [ -z "${resumed[$node]:-}" ]; then
                    say "$node is $state; resuming it"
                    client scontrol update nodename="$node" state=resume || true
                    resumed[$node]=yes
                fi
                ;;
        esac
    done
    [ "$ready" -eq "${#NODES[@]}" ] && break
    # A daemon that exited (a config it refuses, "This host ... not a valid controller") will
    # not come back: say so now rather than at the deadline.
    for daemon in slurmctld "${NODES[@]/#/slurmd-}"; do
        if ! running "${daemon%%-*}" "$MN_RUN_DIR/$daemon.pid"; then
            echo "multinode-up: error: ${daemon/-/ -N } is not running" >&2
            show_logs
            exit 1
        fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "multinode-up: error: nodes not ready after ${WAIT_SECONDS}s:$states" >&2
        show_logs
        exit 1
    fi
    sleep 0.5
done

[ "$started" = yes ] || say "slurmctld and both slurmd already running"
echo "multinode: up (slurmctld on $MN_HUB_NS $MN_HUB_ADDR:$MN_CTLD_PORT; node1 $MN_NODE1_ADDR," \
    "node2 $MN_NODE2_ADDR; SLURM_CONF=$CONF)"
