"""What every notebook template repeats, in one place, so that each template shows what it teaches.

- :func:`sized`: the template's parameters for the size a trainer picks (``smoke`` for CI, ``workshop``
  for a CPU or shared GPU in ~10 minutes, ``full`` for a GPU node), each set parameter winning;
- :func:`choose_device`: ``cuda`` / ``mps`` / ``cpu``, mixed precision and ``torch.compile`` on a GPU
  only (template 03 explains the choice; the others call this);
- :func:`tracked_run`: an MLflow run with the session's tags (user, Slurm job, node, GPU, git commit),
  the template and the werkbank version, that records what it used (``werkbank_lab.resources``);
- :func:`latest_run` and :func:`load_split`: find what an earlier template logged, and read a data
  split whose bytes are checked against the SHA-256 template 02 logged;
- :func:`assert_run`: a finished run's tags, parameters and metrics, asserted in a template's checks.

Notebooks import it; the server extension does not (torch and pandas are imported where used).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from werkbank_lab import __version__, tracking

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from mlflow.entities import Run

#: The sizes every template offers, smallest first.
SIZES = ("smoke", "workshop", "full")


def sized(size: str, table: Mapping[str, Mapping[str, Any]], **chosen: Any) -> SimpleNamespace:
    """The values of ``size`` in ``table`` (``{"epochs": {"smoke": 3, "workshop": 10, "full": 30}, ...}``),
    except where a value in ``chosen`` is not ``None``: a parameter the user set wins over its size.

    Raises ``ValueError`` for an unknown size, and ``KeyError`` if ``chosen`` names a parameter the table
    has no row for (a typo would otherwise be ignored silently).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(map(repr, SIZES))}, not {size!r}")
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        raise KeyError(f"no row for {unknown} in the size table (rows: {sorted(table)})")
    values = {}
    for name, by_size in table.items():
        missing = [s for s in SIZES if s not in by_size]
        if missing:
            raise KeyError(f"the size table's row {name!r} has no value for {missing}")
        value = chosen.get(name)
        values[name] = by_size[size] if value is None else value
    return SimpleNamespace(**values)


def size_table(table: Mapping[str, Mapping[str, Any]], chosen: str = "") -> str:
    """``table`` as Markdown (one row per parameter, one column per size; ``chosen`` in bold), for a
    template to show what each size means."""
    header = " | ".join(f"**{s}**" if s == chosen else s for s in SIZES)
    lines = [f"| parameter | {header} |", "|---|" + "---|" * len(SIZES)]
    for name, by_size in table.items():
        lines.append(f"| `{name}` | " + " | ".join(str(by_size[s]) for s in SIZES) + " |")
    return "\n".join(lines)


# --- device ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Where a template computes, and how: what :func:`choose_device` decided."""

    device: torch.device
    amp: bool  # mixed precision (torch.autocast) on
    amp_dtype: torch.dtype  # bfloat16, or float16 on GPUs without bfloat16 (then with loss scaling)
    compile: bool  # torch.compile the model

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return f"{str(self.amp_dtype).removeprefix('torch.')} (mixed)" if self.amp else "float32"

    def autocast(self):
        """``with device.autocast(): ...`` runs the forward pass in mixed precision when it is on."""
        import torch

        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def grad_scaler(self):
        """A ``GradScaler`` that scales the loss for float16 only (bfloat16 has float32's range)."""
        import torch

        return torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)

    def describe(self) -> str:
        import torch

        where = torch.cuda.get_device_name(0) if self.on_gpu else f"{torch.get_num_threads()} threads"
        return (
            f"device: {self.device} ({where})   precision: {self.precision}   torch.compile: {self.compile}"
        )


def job_cpus(environ: Mapping[str, str] | None = None) -> int:
    """The CPU cores this job was given, never the node's count: the cores this process may run on
    (Slurm pins a job to its cores with its task/affinity or task/cgroup plugin), and at most Slurm's
    ``SLURM_CPUS_ON_NODE``, which counts them where the cluster does not pin (then a job sees every core
    of the node, and as many threads would crowd out the other jobs)."""
    environ = os.environ if environ is None else environ
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    allocated = environ.get("SLURM_CPUS_ON_NODE", "")
    return min(visible, int(allocated)) if allocated.isdigit() and int(allocated) > 0 else visible


def choose_device(use_amp: str = "auto", use_compile: str = "auto", cpu_threads: int = 0) -> Device:
    """``cuda`` on a GPU node, ``mps`` on Apple silicon, the CPU elsewhere (with ``cpu_threads`` torch
    threads; 0: one per core of the job). ``use_amp`` and ``use_compile`` are "auto" (on a GPU only),
    "on" or "off". Template 03 writes the same choice out and explains it."""
    import torch

    for name, value in (("use_amp", use_amp), ("use_compile", use_compile)):
        if value not in ("auto", "on", "off"):
            raise ValueError(f"{name} must be 'auto', 'on' or 'off', not {value!r}")
    if cpu_threads < 0:
        raise ValueError(f"cpu_threads must be 0 (one per core) or more, not {cpu_threads}")
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads or job_cpus())
    on_gpu = device.type == "cuda"
    # Mixed precision is not set up for Apple GPUs in the templates.
    amp = (on_gpu if use_amp == "auto" else use_amp == "on") and device.type != "mps"
    amp_dtype = torch.float16 if on_gpu and not torch.cuda.is_bf16_supported() else torch.bfloat16
    compile_model = on_gpu if use_compile == "auto" else use_compile == "on"
    return Device(device, amp, amp_dtype, compile_model)


# --- tracked runs ----------------------------------------------------------------------------


def run_tags(template: str, **extra: str) -> dict[str, str]:
    """The tags of a template's run: the session's (user, Slurm job, node, profile, GPU, git commit),
    the template, and the werkbank version the template came with (templates are versioned with it)."""
    return {
        **tracking.session_tags(),
        "werkbank.template": template,
        "werkbank.user": tracking.user_name(),
        "werkbank.version": __version__,
        **extra,
    }


@contextmanager
def tracked_run(template: str, run_name: str, tags: Mapping[str, str] | None = None, **start) -> Iterator:
    """``mlflow.start_run`` with :func:`run_tags` (``tags`` added) for ``template``, recording what the run
    used: MLflow's system metrics (CPU, memory, GPU utilisation and power, sampled every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds, 10 by default) and, when it ends, the totals of
    ``werkbank_lab.resources`` (CPU- and GPU-hours of the allocation, peak GPU memory, energy where the
    hardware reports it, and why not where it does not). Further keyword arguments go to ``start_run``
    (``nested=True``, ...)."""
    import mlflow

    from werkbank_lab import resources

    system_metrics, system_metrics_note = resources.system_metrics_available()
    # MLflow's monitor announces its start and stop at INFO in every template's output; nothing to act on.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # MLflow prints two lines of links as each run ends: useful once for a template's run, noise a
    # hundred times over for a search's trials (and in a dashboard). Child runs end quietly.
    child = bool(start.get("nested") or start.get("parent_run_id"))
    with (
        _env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true" if child else None),
        mlflow.start_run(
            run_name=run_name,
            tags=run_tags(template, **(tags or {})),
            log_system_metrics=system_metrics,
            **start,
        ) as run,
    ):
        mlflow.set_tag("werkbank.resources.system_metrics", system_metrics_note)
        meter = resources.ResourceMeter().start()  # the run's own time, as MLflow records it
        try:
            yield run
        finally:  # also when the cell fails: what it used until then
            resources.log_resources(meter.stop())


@contextmanager
def _env(**values: str | None) -> Iterator[None]:
    """Environment variables set (a value) or left as they are (``None``) within the block."""
    before = {name: os.environ.get(name) for name, value in values.items() if value is not None}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def latest_run(
    experiment_name: str, template: str, tags: Mapping[str, str] | None = None, hint: str = ""
) -> Run:
    """Your newest finished run of ``template`` in ``experiment_name`` with ``tags``. Raises
    ``LookupError`` saying what is missing, followed by ``hint`` (what to run first)."""
    import mlflow

    wanted = {"werkbank.template": template, "werkbank.user": tracking.user_name(), **(tags or {})}
    conditions = [f"tags.`{key}` = {_quoted(value)}" for key, value in wanted.items()]
    found = mlflow.search_runs(
        experiment_names=[experiment_name],
        filter_string=" AND ".join(["attributes.status = 'FINISHED'", *conditions]),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        described = ", ".join(f"{key}={value}" for key, value in wanted.items())
        raise LookupError(
            f"No finished run ({described}) in the MLflow experiment {experiment_name!r}. {hint}".strip()
        )
    return found[0]


def _quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow filter. MLflow's parser strips the quotes and never
    un-escapes, so a value is quoted with the quote it does not contain; one with both is refused."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"an MLflow filter cannot match a value with both kinds of quotes: {value!r}")


def load_split(run: Run, context: str, artifact_path: str) -> tuple[pd.DataFrame, str]:
    """The data split ``artifact_path`` (e.g. ``data/train.csv``) of ``run`` (template 02's data run) as a
    frame, and the SHA-256 of its bytes, which must equal the run's tag ``werkbank.sha256.<context>``.

    The bytes hashed are the bytes parsed (downloaded once, into memory): nothing can change the file in
    between. Raises ``LookupError`` if the run has no such tag (an older template 02), ``ValueError`` if
    the bytes differ from what was logged.
    """
    import mlflow
    import pandas as pd

    run_id = run.info.run_id
    tag = f"werkbank.sha256.{context}"
    logged = run.data.tags.get(tag)
    if logged is None:
        raise LookupError(
            f"Run {run_id} has no tag {tag}: an older template 02 logged it, without hashing its "
            "files (or without this split). Run template 02 again and use its new run."
        )
    with tempfile.TemporaryDirectory() as scratch:  # the downloaded copy is deleted after reading
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=scratch
        )
        with open(local, "rb") as f:
            content = f.read()
    sha256 = hashlib.sha256(content).hexdigest()
    if sha256 != logged:
        raise ValueError(
            f"{artifact_path} of run {run_id}: the {context} data differs from what was logged (its SHA-256 "
            f"is {sha256}, the tag {tag} says {logged}). The file changed after it was logged."
        )
    return pd.read_csv(io.BytesIO(content)), sha256


def assert_run(
    run_id: str,
    *,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    status: str = "FINISHED",
) -> Run:
    """Assert that run ``run_id``, as the MLflow server has it, has ``status``, each of ``tags``, each of
    ``params`` (compared as text, as MLflow stores them) and each of ``metrics`` (to float precision);
    return it. The message names the first difference."""
    from mlflow import MlflowClient

    run = MlflowClient(tracking.tracking_uri()).get_run(run_id)
    assert run.info.status == status, f"run {run_id} is {run.info.status}, expected {status}"
    for key, value in (tags or {}).items():
        got = run.data.tags.get(key)
        assert got == value, f"run {run_id}: tag {key} is {got!r}, expected {value!r}"
    for key, value in (params or {}).items():
        got = run.data.params.get(key)
        assert got == str(value), f"run {run_id}: param {key} is {got!r}, expected {str(value)!r}"
    for key, value in (metrics or {}).items():
        got = run.data.metrics.get(key)
        assert got is not None and math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), (
            f"run {run_id}: metric {key} is {got!r}, expected {value!r}"
        )
    return run
