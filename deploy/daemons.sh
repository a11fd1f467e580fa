# Shell helpers for starting and stopping werkbank's daemons, sourced by the deploy scripts
# (which define say()).

# alive PID NAME: PID is a live process called NAME (the name check guards
# against a stale pid file whose pid now belongs to something else).
alive() {
    kill -0 "$1" 2>/dev/null && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

# running NAME PIDFILE: the pid file names a live process called NAME.
running() {
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 1
    [ -n "$pid" ] && alive "$pid" "$1"
}

# stop NAME PIDFILE: TERM, wait up to 10 s for the process (not the pid file,
# which the daemons remove early during shutdown) to go away, then KILL.
stop() {
    local pid
    running "$1" "$2" || return 0
    pid=$(cat "$2")
    say "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" "$1" || return 0; sleep 0.1; done
    say "$1 did not stop within 10 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
}

# node_readiness STATE: what sinfo's node state (%T) asks of a script bringing a cluster up:
# "ready" (the node runs jobs), "resume" (left DOWN, DRAINED or FAILED by an earlier run, a fault
# test or a killed slurmd: resume it, once), or "wait" (anything else, e.g. still registering).
# Globs, not exact states: sinfo appends "*" to a node that does not answer (yet), e.g. "down*".
node_readiness() {
    case "$1" in
        idle | mixed | allocated | completing) echo ready ;;
        down* | drain* | fail*) echo resume ;;
        *) echo wait ;;
    esac
}

# wait_for_hub URL PID_FILE LOG: wait up to 60 s until JupyterHub answers on URL; fail with the
# tail of LOG if its process (PID_FILE) exits first.
wait_for_hub() {
    for _ in $(seq 120); do
        curl -fsS "$1/hub/health" >/dev/null 2>&1 && return 0
        if ! kill -0 "$(cat "$2")" 2>/dev/null; then
            say "JupyterHub exited; last lines of $3:" >&2
            tail -n 30 "$3" >&2
            return 1
        fi
        sleep 0.5
    done
    say "JupyterHub did not answer on $1 within 60 s; see $3" >&2
    return 1
}
