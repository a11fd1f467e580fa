# Shell helpers shared by slurm-up.sh and slurm-down.sh (sourced; they define say()).

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
