#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster on localhost for werkbank's tests:
# node1 with 32 CPUs, 64 GiB and 2 fake GPUs, partitions "cpu" (default) and "gpu".
#
# Usage (as root):  deploy/slurm-up.sh
# Safe to run again: it only installs, writes or (re)starts what is missing or
# changed. Exit codes: 0 up, 3 cannot set up here (not root / no apt-get),
# 1 anything else failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=$HERE/slurm
CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
FAKE_GPU_DIR=/var/lib/werkbank/fake-gpu
# Checksum of the config the running daemons were started with; lives in /run
# so that it disappears together with the daemons on reboot.
RUNNING_SUM=$RUN_DIR/config.sha256
# Marker that tells slurm-down.sh that munged was started by us.
MUNGE_MARKER=$RUN_DIR/munged.started-by-werkbank
WAIT_SECONDS=30

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- preconditions
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-up: must run as root (it installs packages and starts daemons)" >&2
    exit 3
fi

# ---------------------------------------------------------------- packages
need_install=no
for cmd in sbatch slurmctld slurmd munged sudo; do
    command -v "$cmd" >/dev/null 2>&1 || need_install=yes
done
if [ "$need_install" = yes ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "slurm-up: Slurm is not installed and there is no apt-get to install it" >&2
        exit 3
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The packages' postinst would start the daemons through init scripts;
    # we start them ourselves, so forbid that while installing (policy-rc.d
    # exit code 101 = "action forbidden"), unless a policy is already in place.
    made_policy=no
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=yes
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    pkgs="slurm-wlm munge sudo"
    say "installing $pkgs"
    # Only refresh the package lists when apt does not know the packages yet,
    # or when the install fails (stale lists point at removed versions).
    if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
        apt-get update -q
    fi
    # shellcheck disable=SC2086  # word splitting of $pkgs is intended
    if ! apt-get install -y -q --no-install-recommends $pkgs; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends $pkgs
    fi
    if [ "$made_policy" = yes ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

# The Debian package creates the system user "slurm"; fall back to root.
if id -u slurm >/dev/null 2>&1; then SLURM_USER=slurm; else SLURM_USER=root; fi

# ---------------------------------------------------------------- directories
mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" /var/spool/slurmd /var/spool/slurmctld
# slurmctld drops to SlurmUser: it must be able to write its state, pid and logs.
chown "$SLURM_USER:" "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld
chmod 0755 "$RUN_DIR" "$LOG_DIR"

# ---------------------------------------------------------------- munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge: /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge: /run/munge /var/log/munge /var/lib/munge

if ! munge_ok; then
    say "starting munged"
    # A munged killed hard leaves its socket and pid file behind; --force
    # lets a new one take over the stale socket.
    runuser -u munge -- /usr/sbin/munged --force
    touch "$MUNGE_MARKER"
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- fake GPUs
# Character devices with the NVIDIA major number 195; never under /dev/nvidia*.
mkdir -p "$FAKE_GPU_DIR"
for n in 0 1; do
    dev=$FAKE_GPU_DIR/nvidia$n
    # stat prints major/minor in hex: 195 = c3.
    if [ "$(stat -c '%F %t %T' "$dev" 2>/dev/null)" != "character special file c3 $n" ]; then
        rm -f "$dev"
        mknod "$dev" c 195 "$n" || die "cannot mknod $dev (no CAP_MKNOD in this container?)"
    fi
    chmod 0666 "$dev"
done

# ---------------------------------------------------------------- config
# Render a template into /etc/slurm, touching the file only if it changes.
render() {
    local name=$1 tmp
    tmp=$(mktemp)
    sed -e "s|@HOSTNAME@|$(hostname -s)|g" \
        -e "s|@SLURM_USER@|$SLURM_USER|g" \
        -e "s|@FAKE_GPU_DIR@|$FAKE_GPU_DIR|g" \
        "$TEMPLATES/$name.in" >"$tmp"
    if cmp -s "$tmp" "$CONF_DIR/$name"; then
        rm -f "$tmp"
    else
        say "writing $CONF_DIR/$name"
        install -m 0644 "$tmp" "$CONF_DIR/$name"
        rm -f "$tmp"
    fi
}
render slurm.conf
render gres.conf
config_sum=$(cat "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf" | sha256sum | cut -d' ' -f1)

# ---------------------------------------------------------------- daemons
# alive, running, stop, node_readiness: see daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

ctld_pid=$RUN_DIR/slurmctld.pid
slurmd_pid=$RUN_DIR/slurmd.pid

# Restart both daemons if they run with another config than the one on disk.
if running slurmctld "$ctld_pid" || running slurmd "$slurmd_pid"; then
    if [ "$(cat "$RUNNING_SUM" 2>/dev/null)" != "$config_sum" ]; then
        say "config changed; restarting slurmd and slurmctld"
        stop slurmd "$slurmd_pid"
        stop slurmctld "$ctld_pid"
    fi
fi

started=no
if ! running slurmctld "$ctld_pid"; then
    say "starting slurmctld"
    # slurmctld forks into the background itself and keeps job state in
    # StateSaveLocation, so jobs survive a restart.
    slurmctld
    started=yes
fi
if ! running slurmd "$slurmd_pid"; then
    say "starting slurmd -N node1"
    slurmd -N node1
    started=yes
fi
echo "$config_sum" >"$RUNNING_SUM"

# ---------------------------------------------------------------- wait for node1
show_logs() {
    echo "--- tail $LOG_DIR/slurmctld.log" >&2
    tail -n 20 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
    echo "--- tail $LOG_DIR/slurmd.log" >&2
    tail -n 20 "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
}

resumed=no
state=
deadline=$((SECONDS + WAIT_SECONDS))
while :; do
    # timeout: a wedged slurmctld must not hang us past the deadline.
    state=$(timeout 10 sinfo -h -n node1 -o %T 2>/dev/null || true)
    case "$(node_readiness "$state")" in
        ready) break ;;
        resume)
            if [ "$resumed" = no ]; then
                say "node1 is $state; resuming it"
                timeout 10 scontrol update nodename=node1 state=resume || true
                resumed=yes
            fi
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "slurm-up: error: node1 not ready after ${WAIT_SECONDS}s (state: '${state:-no answer}')" >&2
        show_logs
        exit 1
    fi
    sleep 0.5
done

# ---------------------------------------------------------------- summary
node=$(timeout 10 scontrol -o show node node1)
cpus=$(echo "$node" | sed -n 's/.*CPUTot=\([0-9]*\).*/\1/p')
gpus=$(echo "$node" | sed -n 's/.* Gres=gpu:\([0-9]*\).*/\1/p')
parts=$(timeout 10 sinfo -h -o %R | paste -sd, - | sed 's/,/, /g')
[ "$started" = yes ] || say "slurmctld and slurmd already running"
echo "slurm: up (node1: ${cpus:-?} CPUs, ${gpus:-?} GPUs; partitions $parts)"
