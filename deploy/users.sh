#!/usr/bin/env bash
# Create a local Linux user with a home directory, e.g. for a test user that
# logs into JupyterHub (PAM) and owns Slurm jobs.
#
# Usage (as root):  deploy/users.sh USER [PASSWORD]
# Safe to run again: an existing user is kept; the password is (re)set if given.
set -euo pipefail

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 USER [PASSWORD]" >&2
    exit 2
fi
user=$1

# Conservative portable user name (lower case, at most 32 characters),
# checked before the name reaches any command.
if ! [[ $user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]]; then
    echo "users.sh: invalid user name: '$user' (must match ^[a-z_][a-z0-9_-]{0,31}\$)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "users.sh: must run as root" >&2
    exit 3
fi

if id -u "$user" >/dev/null 2>&1; then
    echo "users.sh: user $user exists"
else
    useradd -m -s /bin/bash "$user"
    echo "users.sh: created user $user (home $(getent passwd "$user" | cut -d: -f6))"
fi

if [ $# -eq 2 ]; then
    # chpasswd reads "user:password" on stdin, so the password stays out of ps.
    printf '%s:%s\n' "$user" "$2" | chpasswd
    echo "users.sh: password set for $user"
fi
