#!/usr/bin/env bash
# Install what werkbank runs on, as root, on Debian/Ubuntu: system packages, the
# configurable-http-proxy from npm, and one Python environment under $WERKBANK_PREFIX
# (default /opt/werkbank/venv) shared by the hub and the users' sessions.
#
# The environment is built from Debian's /usr/bin/python3 and lives outside /root on
# purpose: Slurm jobs run as the users, who must be able to read and execute it.
# Safe to run again: each step is skipped when already done for the same requirements.
#
# The hub imports werkbank's packages as root, so by default they are installed into the
# root-owned environment (not editable): nothing the hub runs comes from a folder another
# account could write to. --dev installs them editable from this checkout instead.
#
# Usage: deploy/install.sh [--dev]    (--dev: editable packages, test and lint tools)
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
# `make demo NODES=2` builds the multi-node cluster in network namespaces: ip and ss (iproute2);
# nsenter and unshare come from util-linux, which every Debian has.
packages+=(iproute2)
# The tests also run MLflow and the hub on PostgreSQL (tests/postgres.py starts a private cluster),
# drive Debian's Chromium with Playwright (tests/browser; no browser is downloaded), and check the
# units in deploy/systemd with systemd-analyze, and build the multi-node test cluster in network
# namespaces (ip from iproute2; nsenter and unshare from util-linux).
[ "$DEV" = yes ] && packages+=(postgresql chromium systemd iproute2 util-linux)
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

# ------------------------------------------------------------------ MLflow's service account
# The hub runs the MLflow server and its proxy as this account, never as root
# (tracking.mlflow.service_user in the site file; the hub gives it MLflow's folder).
MLFLOW_ACCOUNT=${WERKBANK_MLFLOW_ACCOUNT:-werkbank-mlflow}
if ! getent passwd "$MLFLOW_ACCOUNT" >/dev/null; then
    say "useradd --system $MLFLOW_ACCOUNT"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$MLFLOW_ACCOUNT"
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
want=$(cat "${reqs[@]}" "$REPO/core/pyproject.toml" "$REPO/spawner/pyproject.toml" "$REPO/extensions/pyproject.toml" | sha256sum | cut -d' ' -f1)
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
# rfc3987-syntax (pulled in by jsonschema[format-nongpl] through jupyter-events and nbformat)
# builds ~35 Earley parsers when imported, and every Jupyter server imports it: 0.6 of the 1.65
# CPU seconds a session needs to start (measured in a job here). No Jupyter schema uses the
# "iri" formats it checks, and jsonschema skips them without it. Without it, 30 sessions
# starting at once in a workshop need 18 CPU seconds less (benchmarks/workshop_burst.py).
"$VENV/bin/pip" uninstall -y -q rfc3987-syntax 2>&1 | grep -v -e '^WARNING: Location' -e 'not installed' || true
# The project's packages: editable from this checkout with --dev, otherwise built from it
# into the environment. Reinstalled when the mode, the checkout or (for an install that is not
# editable) any file of the package changed; a checkout elsewhere (or a deleted CI clone) must
# not stay the one that is imported.
imported_from() {  # the folder $1 is imported from (outside the checkout, which is not on sys.path)
    (cd / && "$VENV/bin/python" -c "import $1, os; print(os.path.dirname($1.__file__))")
}
for pkg in core:werkbank_core spawner:werkbank_spawner extensions:werkbank_lab; do
    dir=${pkg%%:*} module=${pkg##*:}
    where=$(imported_from "$module" 2>/dev/null || true)
    pkg_stamp=$VENV/.werkbank-$dir.sha256
    if [ "$DEV" = yes ]; then
        # Editable: the package definition (entry points, data files such as the server
        # extension's config) is what a reinstall picks up; the code is read from the checkout.
        defs=("$REPO/$dir/pyproject.toml")
        if [ -f "$REPO/$dir/setup.py" ]; then defs+=("$REPO/$dir/setup.py"); fi
        pkg_want=$( (echo "editable $REPO/$dir"; cat "${defs[@]}") | sha256sum | cut -d' ' -f1)
        installed_from="$REPO/$dir/"
        args=(-e "$REPO/$dir")
    else
        pkg_want=$( (echo "built $REPO/$dir"; cd "$REPO/$dir" \
            && find . -type f -not -path '*/build/*' -not -path '*.egg-info/*' \
                -not -path '*/__pycache__/*' -not -path '*/node_modules/*' -print0 | sort -z | xargs -0 sha256sum) \
            | sha256sum | cut -d' ' -f1)
        installed_from="$VENV/"
        args=("$REPO/$dir")
    fi
    if [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ] || [ "${where#"$installed_from"}" = "$where" ]; then
        say "pip install ${args[*]}"
        "$VENV/bin/pip" install -q --no-deps --force-reinstall "${args[@]}" 2>&1 \
            | grep -v -e '^WARNING: Location' -e 'Warning' -e '^ *!!' -e '^ *\*\*\*' -e '^ *$' || true
        # A build leaves build/ and *.egg-info in the checkout; they are not the package.
        [ "$DEV" = yes ] || rm -rf "$REPO/$dir/build" "$REPO/$dir"/*.egg-info
        where=$(imported_from "$module") || { echo "install: $module does not import" >&2; exit 1; }
        if [ "${where#"$installed_from"}" = "$where" ]; then
            echo "install: $module is imported from $where, not from $installed_from" >&2
            exit 1
        fi
        echo "$pkg_want" >"$pkg_stamp"
    fi
done
# ------------------------------------------------------------------ models converted once
# SmolLM2 ships as GGUF; transformers de-quantizes it on every load (15-45 s). Converted once into the
# environment's share/werkbank/models, a template loads it in ~0.2 s (werkbank_lab.local_models).
if ! "$VENV/bin/python" -m werkbank_lab.local_models check 2>/dev/null; then
    say "converting the shipped language models (once, under a minute)"
    log=$(mktemp)
    HF_HUB_OFFLINE=1 "$VENV/bin/python" -m werkbank_lab.local_models convert >"$log" 2>&1 \
        || { cat "$log" >&2; echo "install: converting the shipped language models failed" >&2; exit 1; }
    rm -f "$log"
fi
# ------------------------------------------------------------------ JupyterLab extension
# @werkbank/lab (extensions/labextension: the session's time left and warnings, the template
# cards): TypeScript built with packages from the npm registry (package-lock.json), installed
# where JupyterLab finds prebuilt extensions of this environment. Rebuilt when its sources change.
LAB_SRC=$REPO/extensions/labextension
LAB_DEST=$VENV/share/jupyter/labextensions/@werkbank/lab
lab_want=$( (cd "$LAB_SRC" && cat package.json package-lock.json tsconfig.json src/*.ts style/*) | sha256sum | cut -d' ' -f1)
lab_stamp=$VENV/.werkbank-labextension.sha256
if [ "$(cat "$lab_stamp" 2>/dev/null)" != "$lab_want" ] || [ ! -f "$LAB_DEST/package.json" ]; then
    say "building the JupyterLab extension @werkbank/lab (npm ci, jupyter-builder)"
    if ! (cd "$LAB_SRC" && npm ci --no-audit --no-fund --loglevel=error && rm -rf lib tsconfig.tsbuildinfo \
        && PATH="$VENV/bin:$PATH" npm run build --silent) >/tmp/werkbank-labextension.log 2>&1; then
        tail -30 /tmp/werkbank-labextension.log >&2
        echo "install: the JupyterLab extension did not build (log: /tmp/werkbank-labextension.log)" >&2
        exit 1
    fi
    rm -rf "$LAB_DEST"
    mkdir -p "$(dirname "$LAB_DEST")"
    cp -r "$REPO/extensions/werkbank_lab/labextension" "$LAB_DEST"
    echo "$lab_want" >"$lab_stamp"
fi

# The lifecycle templates, where an installed (not editable) werkbank-lab finds them
# (werkbank_lab.catalogue.default_templates_dir): root-owned, like the packages.
if [ "$DEV" = no ]; then
    share=$VENV/share/werkbank
    mkdir -p "$share"
    rm -rf "$share/notebooks.new"
    cp -r "$REPO/notebooks" "$share/notebooks.new"
    find "$share/notebooks.new" -name '.ipynb_checkpoints' -prune -exec rm -rf {} +
    rm -rf "$share/notebooks"
    mv "$share/notebooks.new" "$share/notebooks"
fi
say "ok ($VENV, configurable-http-proxy $(configurable-http-proxy --version))"
