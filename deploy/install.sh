#!/usr/bin/env bash
# Install what werkbank runs on, as root, on Debian/Ubuntu: system packages, the
# configurable-http-proxy from npm, and one Python environment under $WERKBANK_PREFIX
# (default /opt/werkbank/venv) shared by the hub and the users' sessions.
#
# The environment is built from Debian's /usr/bin/python3 and lives outside /root on
# purpose: Slurm jobs run as the users, who must be able to read and execute it.
# Safe to run again: each step is skipped when already done for the same requirements.
#
# Usage: deploy/install.sh [--dev]    (--dev adds the test and lint tools)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PREFIX=${WERKBANK_PREFIX:-/opt/werkbank}
VENV=$PREFIX/venv
CHP_VERSION=5.3.0
DEV=no
[ "${1:-}" = "--dev" ] && DEV=yes

say() { echo "install: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install: must run as root (apt packages, /opt, npm -g)" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive

# ------------------------------------------------------------------ system packages
missing=()
packages=(python3-venv python3-dev sudo nodejs npm git curl)
# The tests also run MLflow on PostgreSQL (tests/postgres.py starts a private cluster).
[ "$DEV" = yes ] && packages+=(postgresql)
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# npm may come with a Node.js that is not Debian's (e.g. NodeSource): then skip Debian's.
if command -v npm >/dev/null 2>&1; then
    missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ------------------------------------------------------------------ proxy
if ! command -v configurable-http-proxy >/dev/null 2>&1 \
    || [ "$(configurable-http-proxy --version 2>/dev/null)" != "$CHP_VERSION" ]; then
    say "npm install -g configurable-http-proxy@$CHP_VERSION"
    npm install -g --no-fund --no-audit "configurable-http-proxy@$CHP_VERSION" >/dev/null
fi

# ------------------------------------------------------------------ python environment
umask 022
mkdir -p "$PREFIX"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV from /usr/bin/python3"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi
reqs=("$REPO/requirements.txt")
[ "$DEV" = yes ] && reqs+=("$REPO/requirements-dev.txt")
stamp=$VENV/.werkbank-requirements.sha256
want=$(cat "${reqs[@]}" "$REPO/spawner/pyproject.toml" "$REPO/extensions/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "pip install -r ${reqs[*]##*/} (a few minutes the first time)"
    # The site's pip config may add local indexes that do not exist everywhere; their
    # warnings drown the real output, so filter them.
    args=()
    for r in "${reqs[@]}"; do args+=(-r "$r"); done
    "$VENV/bin/pip" install -q "${args[@]}" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c "import jupyterhub, batchspawner, mlflow, torch" \
        || { echo "install: the Python environment is incomplete" >&2; exit 1; }
    echo "$want" >"$stamp"
fi
# The project's packages are installed editable from *this* checkout; a checkout elsewhere
# (or a deleted CI clone) must not stay the one that is imported. A changed package definition
# (entry points, data files such as the server extension's config) also needs a reinstall.
for pkg in spawner:werkbank_spawner extensions:werkbank_lab; do
    dir=${pkg%%:*} module=${pkg##*:}
    where=$("$VENV/bin/python" -c "import $module, os; print(os.path.dirname(os.path.dirname($module.__file__)))" 2>/dev/null || true)
    pkg_stamp=$VENV/.werkbank-$dir.sha256
    defs=("$REPO/$dir/pyproject.toml")
    if [ -f "$REPO/$dir/setup.py" ]; then defs+=("$REPO/$dir/setup.py"); fi
    pkg_want=$( (echo "$REPO/$dir"; cat "${defs[@]}") | sha256sum | cut -d' ' -f1)
    if [ "$where" != "$REPO/$dir" ] || [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ]; then
        say "pip install -e $REPO/$dir"
        "$VENV/bin/pip" install -q --no-deps -e "$REPO/$dir" 2>&1 \
            | grep -v -e '^WARNING: Location' -e 'Warning' -e '^ *!!' -e '^ *\*\*\*' -e '^ *$' || true
        "$VENV/bin/python" -c "import $module" \
            || { echo "install: $module does not import" >&2; exit 1; }
        echo "$pkg_want" >"$pkg_stamp"
    fi
done
say "ok ($VENV, configurable-http-proxy $(configurable-http-proxy --version))"
