"""The batch script and the ``sbatch`` argument vector, rendered from validated values only.

Stock batchspawner formats ``user_options`` straight into a Jinja template after setting
``cmd``, so a posted ``{"cmd": ...}`` or a value with a newline and ``#SBATCH`` lands in the
script. Here the only inputs are a :class:`~werkbank_core.policy.JobRequest` (ints and
allow-listed names), the account details from the password database, and admin settings;
every line is checked once more before it is emitted (defence in depth).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from .policy import SAFE_NAME, JobRequest, format_walltime

# What may appear in an #SBATCH value: sbatch parses these lines itself (no shell), so
# refuse anything that could end the line or start a comment/quote.
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.:/%=,+@-]{1,255}\Z")
USERNAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")


#: Ports a server listens on unless the site says otherwise: below Linux's ephemeral range
#: (32768-60999, where outgoing connections take theirs) and above the usual services'.
PORT_RANGE = (20000, 29999)
#: How the job learns the site's range ("first-last").
PORT_RANGE_ENV = "WERKBANK_PORT_RANGE"

# Runs in the job before Jupyter: pick a free port in the site's range, report it to the hub
# (the route werkbank_spawner.api serves), and print the service URL with that port for Jupyter
# to bind. Only the standard library, so it starts in tens of milliseconds where
# batchspawner-singleuser spends about a second importing requests and jupyterhub first. The API
# token stays in the environment; it never appears on a command line. With the hub's internal_ssl
# (JUPYTERHUB_SSL_* set, werkbank_spawner.server_certs) it and END_REPORT trust only the hub's
# internal CA, check the hub's name and show the server's certificate, which the hub API asks for.
PORT_REPORT = """\
import json, os, random, socket, ssl, urllib.parse, urllib.request
context = None
if os.environ.get("JUPYTERHUB_SSL_CERTFILE"):  # internal_ssl: the hub API is https
    context = ssl.create_default_context(cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
    context.load_cert_chain(os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
low, high = map(int, os.environ["WERKBANK_PORT_RANGE"].split("-"))
for port in random.sample(range(low, high + 1), min(200, high - low + 1)):
    with socket.socket() as s:
        try:
            s.bind(("", port))
            break
        except OSError:
            continue
else:
    raise SystemExit(f"werkbank: no free port in {low}-{high} on this node")
request = urllib.request.Request(
    os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/batchspawner",
    data=json.dumps({"port": port}).encode(),
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"],
             "Content-Type": "application/json"},
    method="POST",
)
urllib.request.urlopen(request, timeout=60, context=context).read()
url = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
print(url._replace(netloc=f"{url.hostname}:{port}").geturl())
"""

#: Python run by the job script when Jupyter ends (``how``: "signal" when Slurm told the job to end,
#: "exit" when Jupyter exited on its own, with its ``status``): it tells the hub at once, with the
#: server's own token, so that the hub stops routing to the server without waiting for its next look
#: at the queue (``werkbank_spawner.api.ServerEndedHandler``). Best effort: the queue stays the net.
END_REPORT = """\
import json, os, ssl, sys, urllib.request
context = None
if os.environ.get("JUPYTERHUB_SSL_CERTFILE"):  # internal_ssl: the hub API is https
    context = ssl.create_default_context(cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
    context.load_cert_chain(os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
how, status = sys.argv[1], int(sys.argv[2])
request = urllib.request.Request(
    os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/werkbank/server-ended",
    data=json.dumps({"job_id": os.environ["SLURM_JOB_ID"], "how": how, "status": status}).encode(),
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"],
             "Content-Type": "application/json"},
    method="POST",
)
try:
    urllib.request.urlopen(request, timeout=5, context=context).read()
except urllib.request.HTTPError as e:
    if e.code != 403:  # 403: the hub stopped the server itself and revoked its token already
        print(f"werkbank: could not tell the hub that the server ended ({e})", file=sys.stderr)
except Exception as e:
    print(f"werkbank: could not tell the hub that the server ended ({e})", file=sys.stderr)
"""


class ScriptError(ValueError):
    """A value that must never reach a batch script (a bug or an attack; never user-facing)."""


@dataclass(frozen=True)
class JobContext:
    """Where and as whom the job runs: from the password database and admin config."""

    username: str
    homedir: str
    log_dir: str
    job_name: str = "werkbank-jupyter"


def resource_options(request: JobRequest) -> list[tuple[str, str]]:
    """The ``sbatch`` options that ask for ``request``'s resources (no names of files)."""
    options = [
        ("partition", request.partition),
        ("cpus-per-task", str(request.cpus)),
        ("mem", f"{request.memory_mb}M"),
        ("time", format_walltime(request.walltime_min)),
    ]
    if request.account:
        options.append(("account", request.account))
    if request.gpus:
        options.append(("gres", f"gpu:{request.gpus}"))
    if request.reservation:
        options.append(("reservation", request.reservation))
    for name in (request.partition, request.account or "x", request.reservation or "x"):
        if not SAFE_NAME.match(name):
            raise ScriptError(f"unsafe name {name!r}")
    return options


def directive_lines(options: list[tuple[str, str]]) -> list[str]:
    """``#SBATCH --key=value`` lines, each value re-checked against a strict character set."""
    lines = []
    for key, value in options:
        if not _SBATCH_VALUE.match(value):
            raise ScriptError(f"unsafe value for --{key}: {value!r}")
        lines.append(f"#SBATCH --{key}={value}")
    return lines


def sbatch_directives(request: JobRequest, ctx: JobContext) -> list[str]:
    """The ``#SBATCH`` lines of a Jupyter server job for ``request``."""
    return directive_lines(
        [
            ("job-name", ctx.job_name),
            *resource_options(request),
            ("output", f"{ctx.log_dir}/jupyter-%j.log"),
            ("chdir", ctx.homedir),
        ]
    )


def render_script(
    request: JobRequest,
    ctx: JobContext,
    command: list[str],
    *,
    path_prefix: str = "",
    prologue: str = "",
    git_safe_directory: str = "",
) -> str:
    """The whole batch script.

    ``command`` is an argument vector (admin's ``cmd`` + JupyterHub's args); it is joined with
    ``shlex.join`` so every element stays one word. ``prologue`` is trusted admin shell code.
    ``git_safe_directory``: a repository on the cluster owned by someone else (a course's
    material) that git in the session may read (:func:`git_safe_directory_lines`).
    """
    if not USERNAME.match(ctx.username):
        raise ScriptError(f"unsafe user name {ctx.username!r}")
    for path in (ctx.homedir, ctx.log_dir, path_prefix):
        if "\n" in path or "\r" in path:
            raise ScriptError(f"newline in path {path!r}")
    lines = ["#!/bin/bash", *sbatch_directives(request, ctx), ""]
    lines += [
        "# Rendered by werkbank-spawner from validated values; do not edit.",
        "set -euo pipefail",
    ]
    if path_prefix:
        lines.append(f'export PATH={shlex.quote(path_prefix)}:"$PATH"')
    if prologue.strip():
        lines += ["# --- site prologue ---", prologue.rstrip("\n"), "# --- end prologue ---"]
    if git_safe_directory:
        lines += git_safe_directory_lines(git_safe_directory)
    lines += [
        "# Pick a port, report it to the hub, bind Jupyter to it.",
        "JUPYTERHUB_SERVICE_URL=$(python3 - <<'WERKBANK_PORT_REPORT'",
        PORT_REPORT.rstrip("\n"),
        "WERKBANK_PORT_REPORT",
        ")",
        "export JUPYTERHUB_SERVICE_URL",
        *END_LINES_BEFORE,
        shlex.join(command) + " &",
        *END_LINES_AFTER,
    ]
    return "\n".join(lines) + "\n"


#: The shell function ``werkbank_end_report HOW STATUS``: END_REPORT's request, sent with curl
#: where the node has it (a few milliseconds of CPU; Python's start and imports take ~70 ms, which
#: 30 servers ending at once on one node spend together), else with END_REPORT. The token reaches
#: curl on its standard input (``-H @-``, from bash's builtin printf), never on a command line that
#: other users' ``ps`` shows; the body holds only the job id, a fixed word and a number.
END_REPORT_FUNCTION = [
    "werkbank_end_report() {",
    "    if ! command -v curl >/dev/null 2>&1; then",
    "        python3 -I -S - \"$@\" <<'WERKBANK_END_REPORT' || true",
    *END_REPORT.rstrip("\n").splitlines(),
    "WERKBANK_END_REPORT",
    "        return",
    "    fi",
    "    local tls=() code",
    '    if [ -n "${JUPYTERHUB_SSL_CERTFILE:-}" ]; then  # internal_ssl, as in END_REPORT',
    '        tls=(--cacert "$JUPYTERHUB_SSL_CLIENT_CA"',
    '            --cert "$JUPYTERHUB_SSL_CERTFILE" --key "$JUPYTERHUB_SSL_KEYFILE")',
    "    fi",
    "    code=$(printf 'Authorization: token %s\\n' \"$JUPYTERHUB_API_TOKEN\" |",
    "        curl -sS --max-time 5 -o /dev/null -w '%{http_code}' ${tls[@]+\"${tls[@]}\"} -H @- \\",
    "            -H 'Content-Type: application/json' \\",
    '            --data-binary "{\\"job_id\\": \\"$SLURM_JOB_ID\\", \\"how\\": \\"$1\\", \\"status\\": $2}" \\',  # noqa: E501
    '            "${JUPYTERHUB_API_URL%/}/werkbank/server-ended") || true',
    "    case $code in",
    "        2?? | 403) ;;  # 403: the hub stopped the server itself and revoked its token already",
    '        *) echo "werkbank: could not tell the hub that the server ended (HTTP ${code:-000})" >&2 ;;',
    "    esac",
    "}",
]

#: Jupyter runs as the script's child, not in its place (exec), so that the script outlives it and
#: tells the hub when the server ends: at Slurm's SIGTERM (scancel, walltime, preemption; Slurm
#: signals Jupyter too, and the trap passes it on in case it did not), or when Jupyter exits. What
#: no script survives (a node failing, SIGKILL) the hub's polling of the queue still notices.
#:
#: At a signal the ending server yields the CPU: Jupyter's shutdown (~0.14 CPU s) gets nice 19
#: within the job before the report goes out, and the job's whole session (its autogroup, where the
#: kernel has them: each Slurm job is a session of its own) after it. 30 servers ending at once on
#: a node otherwise take the CPU from everything else there, the hub of the test cluster included.
END_LINES_BEFORE = [
    "# Jupyter runs as this script's child, so that the script can tell the hub when it ends.",
    *END_REPORT_FUNCTION,
    'werkbank_jupyter="" werkbank_signalled=""',
    'trap \'werkbank_signalled=1; renice -n 19 -p "$werkbank_jupyter" >/dev/null 2>&1; '
    "werkbank_end_report signal 0; { echo 19 >/proc/self/autogroup; } 2>/dev/null; "
    'kill -TERM "$werkbank_jupyter" 2>/dev/null\' TERM INT HUP',
    "set +e",
]
END_LINES_AFTER = [
    "werkbank_jupyter=$!",
    "while :; do",
    '    wait "$werkbank_jupyter"; werkbank_status=$?',
    "    # A signal ends `wait` early (status above 128) while Jupyter still shuts down: wait again.",
    '    kill -0 "$werkbank_jupyter" 2>/dev/null || break',
    "done",
    '[ -n "$werkbank_signalled" ] || werkbank_end_report exit "$werkbank_status"',
    'exit "$werkbank_status"',
]


_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@-]{1,4000}\Z")


def git_safe_directory_lines(repository: str) -> list[str]:
    """Shell lines that let git read ``repository`` although another account owns it.

    git refuses such a repository ("dubious ownership") unless the user's own (global) or the
    system configuration names it in ``safe.directory``; it ignores ``-c`` and
    ``GIT_CONFIG_COUNT`` for the local clone's reading side. So the session gets a global
    configuration of its own that includes the user's ``~/.gitconfig`` and adds the one
    repository, and the user's files stay untouched.
    """
    if not _SAFE_PATH.match(repository) or "/../" in f"{repository}/":
        raise ScriptError(f"unsafe repository path {repository!r}")
    config = '"$HOME/.werkbank/gitconfig"'
    return [
        "# The course material's repository belongs to its trainer: let git read it.",
        'mkdir -p "$HOME/.werkbank"',
        f"printf '[include]\\n\\tpath = ~/.gitconfig\\n[safe]\\n\\tdirectory = %s\\n' "
        f"{shlex.quote(repository)} > {config}",
        f"export GIT_CONFIG_GLOBAL={config}",
    ]


def sbatch_argv(sudo: list[str], sbatch: list[str], username: str, env_names: list[str]) -> list[str]:
    """The argument vector that submits a script read from stdin, as ``username``.

    ``sudo`` is a template list such as ``["sudo", "-n", "-u", "{username}"]``; the
    environment variables named in ``env_names`` (values are passed through the process
    environment, never on the command line where ``ps`` shows them) survive sudo's reset.
    """
    if not USERNAME.match(username):
        raise ScriptError(f"unsafe user name {username!r}")
    argv = [part.replace("{username}", username) for part in sudo]
    if argv and env_names and os.path.basename(argv[0]) == "sudo":
        argv.insert(1, "--preserve-env=" + ",".join(env_names))
    # --no-requeue: a session is not a batch computation to redo. Slurm would requeue it when its
    # node fails (found on the multi-node test cluster): PENDING again, somewhere else, while the hub
    # still routes to the dead node. Without requeueing the job ends NODE_FAIL, which poll() reports.
    return argv + list(sbatch) + ["--parsable", "--no-requeue"]


def parse_job_id(output: str) -> str:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``; return the numeric id."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("sbatch printed no job id")
    job_id = lines[-1].split(";", 1)[0].strip()
    if not job_id.isascii() or not job_id.isdigit():
        raise ValueError(f"sbatch printed no job id: {output.strip()[:200]!r}")
    return job_id
