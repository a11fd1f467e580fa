"""Notebook → Slurm batch job, from inside a werkbank session (``werkbank submit|jobs|cancel``).

A notebook that works interactively is run unattended with papermill in an ``sbatch`` job that asks
for one of the same profiles the spawn page offers. The session's ``WERKBANK_POLICY`` (set by the
spawner: this user's profiles and limits, in the site file's format) is checked here, so a bad choice
is refused with the spawn page's message before anything reaches ``sbatch``. It is a convenience,
not the security boundary: the user has a shell and can call ``sbatch`` directly, so on a real
cluster Slurm's own limits (associations, QOS) are what bounds batch jobs.

Nothing the user types reaches a shell: parameters travel in a JSON spec file that the job reads
(:mod:`werkbank_lab.runjob`), ``sbatch`` is called with an argument vector, and the script holds only
validated resource values and two quoted paths.

A job does not get the session's hub token (broad, and dead once the session stops): where the
session talks to the hub's MLflow with a token, the job gets one of its own from the hub, scoped to
MLflow and expiring after the job's walltime plus a day of queueing (:func:`job_environment`).
Under the hub's internal_ssl the session asks for it over TLS with its server's certificate
(:mod:`werkbank_lab.tls`), and the job checks the MLflow service with its own copy of the CA bundle:
the server's certificate folder goes when the server stops, and the job may run on for days.

Book-keeping lives in ``~/.werkbank/jobs/``: ``<job id>.json`` (what was submitted) and
``<job id>.status.json`` (written by the job when papermill ends), so ``werkbank jobs`` can say
how a job ended after Slurm has forgotten it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from werkbank_core import slurm
from werkbank_core.policy import (
    MAX_CPUS,
    MAX_NODES,
    JobRequest,
    Policy,
    PolicyError,
    parse_count,
    policy_from_dict,
)
from werkbank_core.script import directive_lines, parse_job_id, resource_options
from werkbank_lab.tls import hub_ssl_context

#: Slurm job name of every notebook job (``werkbank jobs`` lists these).
JOB_NAME = "werkbank-batch"
#: Folder of the spec and status files, per user.
JOBS_DIR = Path("~/.werkbank/jobs")
#: papermill parameter types whose command-line strings we convert; others must be given as JSON.
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
#: The kernel of a notebook that names none (notebooks written by scripts and other tools): the
#: session's own Python, whose packages the user has been working with.
SESSION_KERNEL = "python3"


class SubmitError(ValueError):
    """A submission refused before ``sbatch``; the message says what to change."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (refusals and ``werkbank jobs`` print a line each), cut at ``limit``."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Submission:
    """A validated notebook job, ready for ``sbatch``."""

    notebook: Path  # the notebook, or the training script for a distributed job
    parameters: dict
    request: JobRequest  # resources per node
    kernel: str = ""  # the notebook's kernel (a notebook job)
    language: str = ""  # its language, for papermill's parameter translator
    nodes: int = 1
    procs_per_node: int = 0  # > 0: a torchrun job of the script with this many processes per node
    args: list[str] = field(default_factory=list)  # the training script's arguments
    python: str = sys.executable
    spec_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def distributed(self) -> bool:
        return self.procs_per_node > 0

    def log_for(self, job_id: str) -> Path:
        """Slurm's output file of the job."""
        return Path(self.log_pattern.replace("%j", job_id))

    @property
    def log_pattern(self) -> str:
        """Slurm's output file: next to the notebook, with the job id (``%j``) in its name."""
        return str(self.notebook.with_name(f"{self.notebook.stem}-%j.log"))

    def output_for(self, job_id: str) -> Path:
        """The executed notebook; for a training script, its log."""
        if self.distributed:
            return Path(self.log_pattern.replace("%j", job_id))
        return self.notebook.with_name(f"{self.notebook.stem}-{job_id}.ipynb")

    def describe(self) -> str:
        what = self.request.describe()
        if self.distributed:
            what += f" · {self.nodes} node(s) × {self.procs_per_node} process(es)"
        return what


# --- checks before anything is submitted -----------------------------------------------


def session_policy(environ: dict[str, str] | None = None) -> Policy:
    """The profiles and limits of the session's user, from ``WERKBANK_POLICY``."""
    text = (environ if environ is not None else os.environ).get("WERKBANK_POLICY", "")
    if not text:
        raise SubmitError(
            "WERKBANK_POLICY is not set: `werkbank submit` runs inside a werkbank Jupyter session "
            "on the cluster, which knows your profiles"
        )
    try:
        return policy_from_dict(json.loads(text))
    except (ValueError, PolicyError) as e:
        raise SubmitError(f"WERKBANK_POLICY cannot be read ({e}); start a new session") from None


def read_notebook(path: Path):
    """The notebook at ``path`` as papermill reads it (nbformat 4, every cell with its tags), or
    :class:`SubmitError` saying why not in one line."""
    from papermill.iorw import load_notebook_node  # imported here: half a second, only submit needs it

    try:
        return load_notebook_node(str(path))
    except Exception as e:  # nbformat raises JSON, validation and version errors of many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SubmitError(f"{path.name}: not a notebook Jupyter can read ({first[:200]})") from None


def available_kernels() -> dict[str, str]:
    """The kernels this session's environment has (a job runs in the same environment): name →
    language."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().get_all_specs()
    return {name: spec["spec"].get("language", "") for name, spec in sorted(specs.items())}


def choose_kernel(nb, name: str, kernel: str | None, available: Iterable[str]) -> str:
    """The kernel the job runs ``nb`` with: ``kernel`` if given, else the one the notebook names,
    else the session's (:data:`SESSION_KERNEL`). Refused if this environment does not have it."""
    chosen = kernel or (nb.metadata.get("kernelspec") or {}).get("name") or SESSION_KERNEL
    available = list(available)
    if chosen not in available:
        where = "you asked for" if kernel else f"{name} names"
        raise SubmitError(
            f"{where} the kernel {chosen!r}, which this session does not have "
            f"(it has: {', '.join(available) or 'none'}); choose one with --kernel"
        )
    return chosen


def notebook_parameters(nb, kernel: str, language: str) -> dict[str, dict]:
    """The notebook's ``parameters`` cell as papermill reads it: name → {inferred_type_name,
    default, ...}; {} without such a cell. ``kernel`` and ``language`` pick papermill's
    translator."""
    from papermill.translators import papermill_translators
    from papermill.utils import find_first_tagged_cell_index

    index = find_first_tagged_cell_index(nb, "parameters")
    if index < 0:
        return {}
    translator = papermill_translators.find_translator(kernel, language)
    return {p.name: p._asdict() for p in translator.inspect(nb.cells[index])}


def resolve_type(value: str) -> object:
    """What papermill's own command line makes of ``-p NAME VALUE`` for a parameter of no
    declared type: True, False, None, an int, a float where the text parses as one, else the text."""
    if value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def convert(name: str, value: object, type_name: str) -> object:
    """A parameter value from the command line (a string) as the type the notebook declares,
    or as papermill's command line reads it where the notebook declares none."""
    if not isinstance(value, str):
        return value  # from the Python API: taken as given (papermill writes it as a literal)
    kind = (type_name or "").lower()
    if kind in {"none", ""}:  # `max_depth = 3`: untyped, as most notebooks write parameters
        return resolve_type(value)
    # `epochs: "Optional[int]" = None` (the templates' sized parameters): None, or the inner type.
    optional = re.fullmatch(r"optional\[\s*(\w+)\s*\]", kind)
    if optional:
        if value.strip() == "None":
            return None
        kind = optional.group(1)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return _BOOL_WORDS[value.strip().lower()]
    except (ValueError, KeyError):
        raise SubmitError(f"parameter {name!r} expects {kind}, got {value!r}") from None
    if kind == "str":
        return value
    try:  # list, dict, ...: JSON on the command line
        return json.loads(value)
    except ValueError:
        raise SubmitError(f"parameter {name!r} expects {kind}; give it as JSON, e.g. '[1, 2]'") from None


def check_notebook(path: str | os.PathLike, suffix: str = ".ipynb") -> Path:
    notebook = Path(path).expanduser().resolve()
    kind = {".ipynb": "notebook", ".py": "Python script"}[suffix]
    if notebook.suffix != suffix:
        raise SubmitError(f"{path}: not a {kind} ({suffix})")
    if not notebook.is_file():
        raise SubmitError(f"{path}: no such {kind}")
    # Slurm reads '%' in --output as a pattern, and a newline would break the log's name.
    if "%" in str(notebook) or "\n" in str(notebook):
        raise SubmitError(f"{path}: rename it without '%' or line breaks, then submit")
    if not os.access(notebook.parent, os.W_OK):
        raise SubmitError(
            f"{notebook.parent}: not writable, and the executed notebook goes next to the input"
        )
    return notebook


def prepare(
    notebook: str | os.PathLike,
    parameters: dict[str, object] | None = None,
    *,
    raw: dict[str, object] | None = None,
    kernel: str | None = None,
    profile: str | None = None,
    policy: Policy | None = None,
    groups: tuple[str, ...] = (),
    **resources: object,
) -> Submission:
    """Check everything about a notebook job; raise :class:`SubmitError` with the reason.

    ``parameters`` are command-line values (``-p``), converted as papermill's command line does
    (to the declared type, else int/float/bool/None where the text parses); ``raw`` values
    (``-r``, and ``-f``'s YAML) are taken as they are. ``kernel`` overrides the notebook's.
    ``resources`` are the spawn form's custom fields (gpus, cpus, memory, walltime, partition,
    account) where the site allows them; ``None`` means "the profile's value".
    """
    path = check_notebook(notebook)
    policy = policy or session_policy()
    options = {"profile": profile, **{k: v for k, v in resources.items() if v is not None}}
    try:
        request = policy.validate(options, groups)
    except PolicyError as e:
        raise SubmitError(str(e)) from None
    nb = read_notebook(path)
    kernels = available_kernels()
    chosen = choose_kernel(nb, path.name, kernel, kernels)
    language = kernels[chosen] or "python"
    declared = notebook_parameters(nb, chosen, language)
    values = {}
    for name, value in [*(parameters or {}).items(), *(raw or {}).items()]:
        if name not in declared:
            known = ", ".join(declared) or "none (the notebook has no cell tagged 'parameters')"
            raise SubmitError(f"{path.name} has no parameter {name!r}; its parameters: {known}")
        is_raw = raw is not None and name in raw
        values[name] = value if is_raw else convert(name, value, declared[name].get("inferred_type_name", ""))
    return Submission(path, values, request, kernel=chosen, language=language)


def prepare_distributed(
    script: str | os.PathLike,
    args: list[str] | None = None,
    *,
    nodes: int | str = 1,
    procs_per_node: int | str | None = None,
    profile: str | None = None,
    policy: Policy | None = None,
    groups: tuple[str, ...] = (),
    **resources: object,
) -> Submission:
    """Check a PyTorch training script job: ``torchrun`` on ``nodes`` nodes under ``srun``.

    The profile's (or ``gpus=``) GPUs, cores and memory are per node. ``procs_per_node`` defaults
    to the GPUs per node (one process each), or 1 on CPU nodes.
    """
    path = check_notebook(script, suffix=".py")
    policy = policy or session_policy()
    options = {"profile": profile, **{k: v for k, v in resources.items() if v is not None}}
    try:
        request = policy.validate(options, groups)
        limit = policy.limits_for(groups).nodes
        nodes = parse_count(nodes, "nodes", minimum=1, maximum=MAX_NODES)
        if nodes > limit:
            raise PolicyError("nodes", f"{nodes} nodes requested, your limit is {limit}")
        if procs_per_node in (None, ""):
            procs = max(request.gpus, 1)
        else:
            procs = parse_count(procs_per_node, "procs-per-node", minimum=1, maximum=MAX_CPUS)
    except PolicyError as e:
        raise SubmitError(str(e)) from None
    if request.gpus and procs > request.gpus:
        raise SubmitError(f"procs-per-node: {procs} processes but {request.gpus} GPUs per node; use one each")
    return Submission(path, {}, request, nodes=nodes, procs_per_node=procs, args=[str(a) for a in args or []])


# --- the job ----------------------------------------------------------------------------


def render_batch_script(sub: Submission, spec_path: Path) -> str:
    """The job script: validated ``#SBATCH`` lines and one quoted command."""
    options = [("job-name", JOB_NAME), *resource_options(sub.request)]
    command = [sub.python, "-m", "werkbank_lab.runjob", str(spec_path)]
    if sub.distributed:
        # One runjob per node (it starts torchrun there); a failed node ends the whole job.
        options += [("nodes", str(sub.nodes)), ("ntasks-per-node", "1")]
        command = ["srun", "--kill-on-bad-exit=1", *command]
    lines = [
        "#!/bin/bash",
        *directive_lines(options),
        "",
        "# Rendered by `werkbank submit`; parameters are in the spec file, not in this script.",
        "set -euo pipefail",
        "exec " + shlex.join(command),
    ]
    return "\n".join(lines) + "\n"


def jobs_dir() -> Path:
    folder = JOBS_DIR.expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


#: The session's hub credentials, which a job never gets (sbatch passes on its environment).
SESSION_TOKENS = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "MLFLOW_TRACKING_TOKEN")
#: The server's certificate and key (internal_ssl): the job is no server and never needs them.
SERVER_CERTIFICATE = ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE")
#: How long a job may wait in the queue before its token's walltime starts counting.
QUEUE_ALLOWANCE_S = 24 * 3600


def job_environment(sub: Submission, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``sbatch`` passes to the job: the session's, less its hub tokens and the
    server's certificate; plus ``MLFLOW_TRACKING_TOKEN``, a token of the job's own from the hub,
    where the session had one; and, where the session checks MLflow with a CA bundle
    (``MLFLOW_TRACKING_SERVER_CERT_PATH``), the job's own copy of it (:func:`job_ca_bundle`).
    Raises :class:`SubmitError` if the hub does not give a token or the bundle cannot be read."""
    environ = dict(os.environ if environ is None else environ)
    env = {k: v for k, v in environ.items() if k not in SESSION_TOKENS + SERVER_CERTIFICATE}
    if environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        ca = str(job_ca_bundle(sub, environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]))
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = ca
        if environ.get("JUPYTERHUB_SSL_CLIENT_CA") == environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]:
            env["JUPYTERHUB_SSL_CLIENT_CA"] = ca  # nothing in the job points into the server's folder
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        try:
            env["MLFLOW_TRACKING_TOKEN"] = request_job_token(
                environ, sub.request.walltime_min * 60 + QUEUE_ALLOWANCE_S, sub.notebook.name
            )
        except SubmitError:
            job_ca_path(sub).unlink(missing_ok=True)
            raise
    return env


def job_ca_path(sub: Submission) -> Path:
    return jobs_dir() / f"ca-{sub.spec_id}.crt"


def job_ca_bundle(sub: Submission, source: str) -> Path:
    """A copy of the CA bundle ``source`` for the job, ``<jobs dir>/ca-<spec id>.crt``.

    Under internal_ssl the session's bundle is in the server's certificate folder, which goes when
    the server stops (``werkbank_spawner.server_certs``), while a job may run for days after: the
    job checks the MLflow service with its own copy. Certificates only (public); the server's key
    stays where it is."""
    target = job_ca_path(sub)
    try:
        target.write_bytes(Path(source).read_bytes())
    except OSError as e:
        raise SubmitError(
            f"MLFLOW_TRACKING_SERVER_CERT_PATH ({source}) cannot be read for the job: {e.strerror}"
        ) from None
    return target


def request_job_token(environ: dict[str, str], expires_in: int, what: str) -> str:
    """A new hub token for a batch job (werkbank_spawner.api.JobTokenHandler), asked for with the
    session's own token; under internal_ssl over TLS with the hub's CA and the server's
    certificate (:func:`werkbank_lab.tls.hub_ssl_context`)."""
    api, token = environ.get("JUPYTERHUB_API_URL", ""), environ.get("JUPYTERHUB_API_TOKEN", "")
    if not api or not token:
        raise SubmitError("this session has no hub API token to ask for the job's MLflow token")
    note = re.sub(r"[^\w .:/@+-]", "_", what)[:120]
    request = urllib.request.Request(
        api.rstrip("/") + "/werkbank/job-tokens",
        data=json.dumps({"expires_in": expires_in, "note": note}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=hub_ssl_context(environ)) as response:
            return json.loads(response.read())["token"]
    except urllib.error.HTTPError as e:
        raise SubmitError(
            f"the hub gave no token for the job ({e.code}: {e.read()[:200].decode(errors='replace')})"
        ) from None
    except (OSError, ValueError, KeyError) as e:
        raise SubmitError(f"the hub gave no token for the job: {e}") from None


def submit(
    sub: Submission, sbatch: tuple[str, ...] = ("sbatch",), environ: dict[str, str] | None = None
) -> str:
    """Submit ``sub``; return the Slurm job id. ``environ``: the session's (default os.environ)."""
    folder = jobs_dir()
    spec_path = folder / f"spec-{sub.spec_id}.json"
    spec = {
        "notebook": str(sub.notebook),
        "parameters": sub.parameters,
        "request": asdict(sub.request),
        "nodes": sub.nodes,
        "procs_per_node": sub.procs_per_node,
        "args": sub.args,
        "kernel": sub.kernel,
        "language": sub.language,
        "submitted": time.time(),
        "output": str(sub.output_for("%j")),  # the job puts its id in place of %j (runjob)
    }
    env = job_environment(sub, environ)
    spec_path.write_text(json.dumps(spec, indent=1))
    argv = [
        *sbatch,
        "--parsable",
        f"--chdir={sub.notebook.parent}",
        f"--output={sub.log_pattern}",
    ]
    try:
        out = slurm.run_sync(argv, stdin=render_batch_script(sub, spec_path), env=env).check()
    except slurm.SlurmCommandError as e:
        spec_path.unlink(missing_ok=True)
        job_ca_path(sub).unlink(missing_ok=True)
        raise SubmitError(f"Slurm refused the job: {e}") from None
    job_id = parse_job_id(out)
    record = {
        **spec,
        "job_id": job_id,
        "output": str(sub.output_for(job_id)),
        "log": str(sub.log_for(job_id)),
        "spec": str(spec_path),
    }
    (folder / f"{job_id}.json").write_text(json.dumps(record, indent=1))
    return job_id


# --- after submission -------------------------------------------------------------------


@dataclass
class JobView:
    job_id: str
    state: str
    notebook: str
    output: str
    detail: str = ""
    log: str = ""


def list_jobs(squeue: tuple[str, ...] = ("squeue",)) -> list[JobView]:
    """The user's notebook jobs: Slurm's view while queued or running, the status file after."""
    user = os.environ.get("USER") or _whoami()
    argv = [*squeue, "--noheader", "--user", user, "--name", JOB_NAME, "--format", "%i|%T|%r|%N"]
    try:
        out = slurm.run_sync(argv).check()
    except slurm.SlurmCommandError as e:
        raise SubmitError(f"squeue failed: {e}") from None
    live = {}
    for job_id, state, reason, nodes in slurm.rows(out, 4):
        live[job_id] = (state, reason if state == "PENDING" else nodes)
    views = []
    folder = jobs_dir()
    for record_path in sorted(folder.glob("[0-9]*.json"), key=lambda p: int(p.name.split(".")[0])):
        if record_path.name.endswith(".status.json"):
            continue
        record = json.loads(record_path.read_text())
        job_id = record["job_id"]
        status_path = folder / f"{job_id}.status.json"
        # The status file is final: the job writes it as papermill ends, while squeue may still
        # show it RUNNING (or COMPLETING) for a moment.
        if status_path.exists():
            live.pop(job_id, None)
            status = json.loads(status_path.read_text())
            state, detail = status["state"], status.get("error", "")
        elif job_id in live:
            state, detail = live.pop(job_id)
        else:
            state, detail = "ENDED", "no status written (cancelled, or ended by Slurm at its walltime)"
        views.append(
            JobView(job_id, state, record["notebook"], record["output"], detail, record.get("log", ""))
        )
    # Jobs submitted elsewhere (e.g. another home on another cluster) but still queued.
    views += [JobView(j, s, "?", "?", d) for j, (s, d) in live.items()]
    return views


def cancel(job_id: str, scancel: tuple[str, ...] = ("scancel",)) -> None:
    if not (job_id.isascii() and job_id.isdigit()):
        raise SubmitError(f"{job_id!r} is not a job id (a number, as `werkbank jobs` shows)")
    try:
        slurm.run_sync([*scancel, job_id]).check()
    except slurm.SlurmCommandError as e:
        raise SubmitError(f"scancel {job_id}: {e}") from None


def _whoami() -> str:
    import getpass

    return getpass.getuser()
