#!/usr/bin/env bash
# Tear down the single-node Slurm cluster started by deploy/slurm-up.sh:
# cancel all jobs, then stop slurmd, slurmctld and (if slurm-up started it) munged.
#
# Usage (as root):  deploy/slurm-down.sh
# Safe to run again: stopping what does not run is not an error.
# Config, keys, fake GPU devices and installed packages are left in place.
set -euo pipefail

RUN_DIR=/run/slurm
MUNGE_MARKER=$RUN_DIR/munged.started-by-werkbank

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "slurm-down: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-down: must run as root" >&2
    exit 3
fi

# alive, running, stop: see daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

# Cancel all jobs first, while slurmctld and slurmd can still clean them up
# (otherwise job processes would outlive the daemons).
if running slurmctld "$RUN_DIR/slurmctld.pid"; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(echo "$jobs" | paste -sd' ' -)"
        # shellcheck disable=SC2086  # one argument per job id is intended
        timeout 10 scancel $jobs || true
        # Wait (bounded) until Slurm lists no active job and the jobs'
        # slurmstepd processes (which run the jobs' programs) have exited:
        # squeue shows CANCELLED before those processes are gone.
        left=
        for _ in $(seq 1 30); do
            left=$(timeout 10 squeue -h -t PD,R,CG,S -o %A 2>/dev/null || true)
            [ -z "$left" ] && ! pgrep -x slurmstepd >/dev/null && break
            sleep 1
        done
        [ -z "$left" ] || say "jobs still not finished after 30 s: $left"
    fi
fi

stop slurmd "$RUN_DIR/slurmd.pid"
stop slurmctld "$RUN_DIR/slurmctld.pid"
# Forget the running config, so the next slurm-up starts from a clean slate.
rm -f "$RUN_DIR/config.sha256"

# munged may serve other software on a real machine: only stop ours.
if [ -e "$MUNGE_MARKER" ]; then
    stop munged /run/munge/munged.pid
    rm -f "$MUNGE_MARKER"
fi

echo "slurm: down"
