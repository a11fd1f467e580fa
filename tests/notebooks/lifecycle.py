"""Runs the notebook templates in lifecycle order, each at most once per test session.

Templates build on each other through MLflow (03 trains on the data 02 logged, 05 validates what 03 trained,
06 deploys the model 05 registered), so a template's test first runs the templates it needs. Each template
has a module in ``tests/notebooks/checks/`` named after its folder (``01-onboarding`` → ``t01_onboarding``)
that declares:

- ``NEEDS``: the templates whose MLflow output it reads (run first, in this session);
- ``smoke(upstream)``: its smoke parameters; ``upstream`` maps each needed template to its ``Execution``, so
  parameters can name the experiment (or registered model) the earlier run used;
- ``check(execution)``: asserts from outside, through the MLflow API, what the template claims;
- optionally ``VARIANTS``: the template run again with other parameters (``{"flower": Variant(...)}``), tested
  as ``<template>/<variant>`` (``16-data-pooling/flower``) and checked by the same ``check``
  (``execution.variant`` says which).
"""

from __future__ import annotations

import getpass
import importlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import mlflow
import pandas as pd
import papermill
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

import werkbank_lab

REPO = Path(__file__).resolve().parents[2]
# Lifecycle order: the folders are numbered (01-onboarding, 02-data, ...).
TEMPLATES = sorted((REPO / "notebooks").glob("[0-9][0-9]-*/*.ipynb"))
SMOKE_BUDGET_S = 60  # per template on a 2-core machine, kernel start included
PROFILE = "test: 0 GPUs · 2 cores · 4 GB · 1 h · partition none"


def template_id(path: Path) -> str:
    return path.parent.name


def checks_for(name: str) -> ModuleType:
    number, _, rest = name.partition("-")
    return importlib.import_module(f"tests.notebooks.checks.t{number}_{rest.replace('-', '_')}")


@dataclass(frozen=True)
class Variant:
    """A template's run with other parameters (on top of its smoke parameters), after the runs it needs."""

    parameters: dict
    needs: tuple[str, ...] = ()


def variants() -> list[str]:
    """Every template's variants, as ``<template>/<variant>``."""
    return [
        f"{template_id(path)}/{variant}"
        for path in TEMPLATES
        for variant in getattr(checks_for(template_id(path)), "VARIANTS", {})
    ]


@dataclass
class Execution:
    """One smoke run of a template: where it ran, with what, and for how long."""

    name: str
    path: Path
    workdir: Path
    parameters: dict
    client: MlflowClient
    seconds: float = 0.0
    upstream: dict[str, Execution] = field(default_factory=dict)

    @property
    def experiment_name(self) -> str:
        return self.parameters["experiment_name"]

    @property
    def variant(self) -> str:
        """The variant's name ("" for the template's smoke run)."""
        return self.name.partition("/")[2]


def execute(path: Path, workdir: Path, parameters: dict) -> float:
    """Run ``path`` with papermill in ``workdir``; return the wall time in seconds."""
    start = time.monotonic()
    papermill.execute_notebook(
        str(path),
        str(workdir / f"executed-{path.name}"),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(workdir),
        progress_bar=False,
    )
    return time.monotonic() - start


class Lifecycle:
    """The session's template runs, each done once; a failed one fails every template that needs it."""

    def __init__(self, tracking_uri: str, root: Path):
        self.tracking_uri = tracking_uri
        self.root = root
        self.session = uuid.uuid4().hex[:8]
        self.done: dict[str, Execution] = {}
        self.failed: dict[str, str] = {}

    def run(self, name: str) -> Execution:
        if name in self.failed:
            pytest.fail(f"{name} failed earlier in this session: {self.failed[name]}")
        if name in self.done:
            return self.done[name]
        template, _, variant = name.partition("/")
        checks = checks_for(template)
        extra = checks.VARIANTS[variant] if variant else Variant({}, checks.NEEDS)
        upstream = {need: self.run(need) for need in extra.needs}
        path = next(p for p in TEMPLATES if template_id(p) == template)
        workdir = self.root / name.replace("/", "-")
        workdir.mkdir(parents=True)
        experiment_name = f"test-{name.replace('/', '-')}-{self.session}"
        parameters = {**checks.smoke(upstream), **extra.parameters, "experiment_name": experiment_name}
        execution = Execution(
            name, path, workdir, parameters, MlflowClient(self.tracking_uri), upstream=upstream
        )
        try:
            execution.seconds = execute(path, workdir, parameters)
            print(f"{name}: smoke run {execution.seconds:.1f} s")  # shown with -s or -rP
            checks.check(execution)
            check_every_run_records_what_it_used(execution)
        except BaseException as e:
            self.failed[name] = f"{type(e).__name__}: {str(e)[:300]}"
            raise
        self.done[name] = execution
        return execution


# --------------------------------------------------------------------------- helpers for the checks


def runs_in(client: MlflowClient, experiment_name: str) -> list[Run]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"experiment {experiment_name!r} was not created"
    return client.search_runs([experiment.experiment_id])


def the_run(execution: Execution) -> Run:
    """The template's only run in its experiment: finished, tagged with the template and the user."""
    [run] = runs_in(execution.client, execution.experiment_name)
    assert run.info.status == "FINISHED", run.info.status
    assert run.data.tags["werkbank.template"] == execution.name
    assert run.data.tags["werkbank.user"] == getpass.getuser()
    return run


def parent_and_children(client: MlflowClient, experiment: str, template: str) -> tuple[Run, dict[str, Run]]:
    """A template's one parent run and its child runs by name (templates with a run per candidate, trial,
    generator...): every run finished, tagged with the template and the user, each child under the parent."""
    runs = runs_in(client, experiment)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1, [run.info.run_name for run in parents]
    [parent] = parents
    children = {run.info.run_name: run for run in runs if run is not parent}
    assert len(children) == len(runs) - 1, "two child runs with one name"
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        assert run.data.tags["werkbank.template"] == template
        assert run.data.tags["werkbank.user"] == getpass.getuser()
    for child in children.values():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id, child.info.run_name
    return parent, children


def check_every_run_records_what_it_used(execution: Execution) -> None:
    """Every run of the template (templates.tracked_run) carries werkbank's version and what it used: the
    allocation's CPU- and GPU-hours over the run's own time, and for energy either a figure or why not."""
    cpus = len(os.sched_getaffinity(0))
    for run in runs_in(execution.client, execution.experiment_name):
        tags, metrics = run.data.tags, run.data.metrics
        where = f"{execution.name}, run {run.info.run_name!r}"
        assert tags.get("werkbank.version") == werkbank_lab.__version__, where
        # Outside Slurm (as here) the allocation is this process's CPUs; no GPU on the test machine.
        assert tags["werkbank.resources.allocation"].startswith(
            f"not in a Slurm job: this process's {cpus} CPUs"
        )
        hours = metrics["resources.wall_hours"]
        assert 0 < hours <= (run.info.end_time - run.info.start_time) / 3.6e6, (where, hours)
        assert metrics["resources.cpu_hours"] == pytest.approx(cpus * hours), where
        assert metrics["resources.gpu_hours"] == 0.0, where
        for kind in ("gpu", "cpu"):
            note = tags[f"werkbank.resources.{kind}_energy"]
            assert note.startswith("measured") == (f"resources.{kind}_energy_kwh" in metrics), (where, note)
            assert note.startswith(("measured", "not measurable: ")), (where, note)


def inputs_by_context(run: Run) -> dict:
    return {
        {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]: item.dataset
        for item in run.inputs.dataset_inputs
    }


def digest(frame: pd.DataFrame) -> str:
    return mlflow.data.from_pandas(frame).digest
