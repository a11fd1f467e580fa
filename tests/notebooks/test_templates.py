"""Every notebook template, run headless with papermill and smoke parameters against a real MLflow server.

The templates assert their own claims in their "Checks" section; these tests check the outcome again from
outside, through the MLflow API, as the next template or a user in the MLflow UI sees it. A template that
fails raises ``PapermillExecutionError`` naming the failing cell; the tests let it propagate.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import papermill
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from sklearn import datasets
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[2]
# Lifecycle order: the folders are numbered (01-onboarding, 02-data, ...).
TEMPLATES = sorted((REPO / "notebooks").glob("[0-9][0-9]-*/*.ipynb"))
SMOKE_BUDGET_S = 60  # per template on a 2-core machine, kernel start included
PROFILE = "test: 0 GPUs · 2 cores · 4 GB · 1 h · partition none"

# Parameters for a quick run. experiment_name is added per test; values differ from the defaults where
# that shows the parameter is used.
SMOKE: dict[str, dict] = {
    "01-onboarding": {"matmul_size": 256, "run_name": "smoke"},
    "02-data": {"data_dir": "werkbank-data", "seed": 7, "test_fraction": 0.25},
}


def template_id(path: Path) -> str:
    return path.parent.name


@pytest.fixture
def kernel_env(mlflow_server, monkeypatch):
    """The environment papermill's kernel inherits: what werkbank's spawner sets, outside a Slurm job."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("WERKBANK_PROFILE", PROFILE)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    # The kernel runs without a display; an inherited MPLBACKEND could point at a GUI backend.
    monkeypatch.delenv("MPLBACKEND", raising=False)


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


def runs_in(client: MlflowClient, experiment_name: str) -> list[Run]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"experiment {experiment_name!r} was not created"
    return client.search_runs([experiment.experiment_id])


def inputs_by_context(run: Run) -> dict:
    return {
        {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]: item.dataset
        for item in run.inputs.dataset_inputs
    }


def digest(frame: pd.DataFrame) -> str:
    return mlflow.data.from_pandas(frame).digest


# --------------------------------------------------------------------------- outcomes, per template


def check_onboarding(client: MlflowClient, experiment_name: str, workdir: Path, parameters: dict) -> None:
    runs = runs_in(client, experiment_name)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert run.info.run_name == parameters["run_name"]
    assert tags["werkbank.template"] == "01-onboarding"
    assert tags["werkbank.user"] == params["user"] == getpass.getuser()
    assert tags["werkbank.profile"] == params["werkbank_profile"] == PROFILE
    assert tags["werkbank.slurm_job_id"] == params["slurm_job_id"] == "none (not in a Slurm job)"
    assert params["walltime_left"] == "n/a (not in a Slurm job)"
    # The kernel papermill started is this environment's Python, not whatever `python` is on PATH.
    assert params["python_executable"] == sys.executable
    assert params["cpus"] == str(len(os.sched_getaffinity(0)))
    assert params["cwd"] == str(workdir)
    assert params["mlflow_tracking_uri"] == os.environ["MLFLOW_TRACKING_URI"]
    assert tags["werkbank.device"] == params["device"] in {"cpu", "cuda", "mps"}
    assert (params["device"] == "cpu") == (params["gpu_count"] == "0")
    assert metrics["cpus"] == len(os.sched_getaffinity(0))
    assert metrics["memory_gb"] > 0 and metrics["matmul_gflops"] > 0
    # The artifact went through the server's artifact proxy and holds the same facts.
    local = client.download_artifacts(run.info.run_id, "environment.json", str(workdir))
    assert json.loads(Path(local).read_text()) == params


SPLIT_FILES = {"training": "train.csv", "testing": "test.csv"}


def check_data(client: MlflowClient, experiment_name: str, workdir: Path, parameters: dict) -> None:
    runs = {run.data.tags.get("werkbank.dataset"): run for run in runs_in(client, experiment_name)}
    assert set(runs) == {"wine", "digits"}, sorted(map(str, runs))
    seed, test_fraction = parameters["seed"], parameters["test_fraction"]
    data_root = (workdir / parameters["data_dir"]).resolve()
    for name, loader in (("wine", datasets.load_wine), ("digits", datasets.load_digits)):
        run = runs[name]
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["werkbank.template"] == "02-data"
        assert tags["werkbank.user"] == getpass.getuser()
        assert run.data.params["seed"] == str(seed)
        assert float(run.data.params["test_fraction"]) == test_fraction

        # The split is train_test_split of the bundled data, with the given seed, stratified.
        full = loader(as_frame=True).frame
        train, test = train_test_split(
            full, test_size=test_fraction, random_state=seed, stratify=full["target"]
        )
        expected = {"training": train.reset_index(drop=True), "testing": test.reset_index(drop=True)}
        assert len(expected["testing"]) == math.ceil(test_fraction * len(full))

        inputs = inputs_by_context(run)
        assert set(inputs) == {"training", "testing"}, sorted(inputs)
        # The run's folder is under data_dir, and its files hold exactly the logged data.
        folder = Path(run.data.params["folder"])
        assert folder.is_relative_to(data_root), folder
        for context, dataset in inputs.items():
            assert dataset.digest == tags[f"werkbank.digest.{context}"] == digest(expected[context])
            assert digest(pd.read_csv(folder / SPLIT_FILES[context])) == dataset.digest
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "data")}
        assert artifacts == {f"data/{file_name}" for file_name in SPLIT_FILES.values()}

    # Nothing was written in the working directory outside data_dir but papermill's own output.
    written = {p for p in workdir.rglob("*") if p.is_file() and not p.name.startswith("executed-")}
    assert written and all(p.resolve().is_relative_to(data_root) for p in written), sorted(written)


OUTCOMES: dict[str, Callable[[MlflowClient, str, Path, dict], None]] = {
    "01-onboarding": check_onboarding,
    "02-data": check_data,
}


# --------------------------------------------------------------------------- tests


def test_every_template_has_smoke_parameters_and_an_outcome_check():
    names = [template_id(path) for path in TEMPLATES]
    assert names[:2] == ["01-onboarding", "02-data"], names
    assert set(names) == set(SMOKE) == set(OUTCOMES)


# Both from MLflow's dataset code (schema inference, digest), not ours.
@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
@pytest.mark.filterwarnings("ignore:Starting with pandas version 4.0")
@pytest.mark.parametrize("path", TEMPLATES, ids=template_id)
def test_template_runs_and_logs_to_mlflow(path, mlflow_server, kernel_env, tmp_path):
    name = template_id(path)
    experiment_name = f"test-{name}-{uuid.uuid4().hex[:8]}"
    parameters = {**SMOKE[name], "experiment_name": experiment_name}

    seconds = execute(path, tmp_path, parameters)
    print(f"{name}: smoke run {seconds:.1f} s")  # shown with -s or -rP

    OUTCOMES[name](MlflowClient(mlflow_server.url), experiment_name, tmp_path, parameters)
    assert seconds <= SMOKE_BUDGET_S, f"{name}: smoke run took {seconds:.0f} s (budget {SMOKE_BUDGET_S} s)"


@pytest.mark.parametrize("path", TEMPLATES, ids=template_id)
def test_template_stops_with_a_clear_message_without_mlflow(path, kernel_env, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    name = template_id(path)
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(path, tmp_path, {**SMOKE[name], "experiment_name": "never-created"})
    assert failure.value.ename == "RuntimeError"
    assert "MLFLOW_TRACKING_URI is not set" in failure.value.evalue
    # It stopped before MLflow could fall back to a local store (./mlruns, ./mlflow.db) in the working folder.
    assert [p.name for p in tmp_path.iterdir()] == [f"executed-{path.name}"]
