"""The notebook templates' helpers (``werkbank_lab.templates``): sizes, the device, tracked runs, and
finding and checking what an earlier template logged, against a real local MLflow store (SQLite)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils

import werkbank_lab
from werkbank_lab.templates import (
    SIZES,
    assert_run,
    choose_device,
    job_cpus,
    latest_run,
    load_split,
    run_tags,
    size_table,
    sized,
    tracked_run,
)

TABLE = {
    "epochs": {"smoke": 1, "workshop": 5, "full": 30},
    "augment": {"smoke": False, "workshop": True, "full": True},
    "subset": {"smoke": "tiny", "workshop": "half", "full": "all"},
}

USER = "ada"
EXPERIMENT = "ada/templates"

cpu_only = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="checks the CPU choice"
)


# --- sized and size_table ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_sized_gives_the_sizes_values(size):
    values = sized(size, TABLE)
    assert vars(values) == {name: by_size[size] for name, by_size in TABLE.items()}


@pytest.mark.parametrize(
    ("name", "value"),
    [("epochs", 2), ("epochs", 0), ("augment", False), ("subset", ""), ("subset", "custom")],
)
def test_a_set_value_wins_over_the_size_even_when_falsy(name, value):
    values = sized("full", TABLE, **{name: value})
    assert getattr(values, name) == value and type(getattr(values, name)) is type(value)
    others = {n: TABLE[n]["full"] for n in TABLE if n != name}
    assert {n: getattr(values, n) for n in others} == others


def test_only_none_means_the_sizes_value():
    values = sized("workshop", TABLE, epochs=None, augment=None, subset=None)
    assert vars(values) == {"epochs": 5, "augment": True, "subset": "half"}


def test_an_unknown_size_is_refused_naming_the_sizes():
    with pytest.raises(ValueError, match="'tiny'") as caught:
        sized("tiny", TABLE)
    assert all(repr(size) in str(caught.value) for size in SIZES)


def test_a_chosen_name_without_a_row_is_refused():
    with pytest.raises(KeyError, match="epoch'") as caught:
        sized("smoke", TABLE, epoch=3)  # a typo of "epochs"
    assert "'epochs'" in str(caught.value)  # the rows it has


def test_a_row_missing_a_size_is_refused():
    table = {**TABLE, "lr": {"smoke": 0.1, "workshop": 0.01}}
    with pytest.raises(KeyError, match=r"'lr'.*\['full'\]"):
        sized("smoke", table)


def test_size_table_is_markdown_with_the_chosen_size_in_bold():
    assert size_table(TABLE, "workshop").splitlines() == [
        "| parameter | smoke | **workshop** | full |",
        "|---|---|---|---|",
        "| `epochs` | 1 | 5 | 30 |",
        "| `augment` | False | True | True |",
        "| `subset` | tiny | half | all |",
    ]
    assert "**" not in size_table(TABLE)


# --- the device --------------------------------------------------------------------------------------


@pytest.fixture
def torch_threads():
    """choose_device sets torch's thread count for the whole process: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@cpu_only
def test_auto_on_a_cpu_is_float32_without_compile(torch_threads):
    device = choose_device()
    assert device.device == torch.device("cpu") and not device.on_gpu
    assert (device.amp, device.compile, device.precision) == (False, False, "float32")
    assert not device.grad_scaler().is_enabled()
    assert f"{torch.get_num_threads()} threads" in device.describe()


@cpu_only
def test_amp_on_runs_a_matmul_in_bfloat16_on_the_cpu(torch_threads):
    device = choose_device(use_amp="on", use_compile="off")
    assert (device.amp, device.amp_dtype, device.compile) == (True, torch.bfloat16, False)
    assert device.precision == "bfloat16 (mixed)"
    assert not device.grad_scaler().is_enabled()  # bfloat16 needs no loss scaling
    a, b = torch.randn(8, 4), torch.randn(4, 3)
    with device.autocast():
        inside = a @ b
    assert (a.dtype, inside.dtype, (a @ b).dtype) == (torch.float32, torch.bfloat16, torch.float32)


@cpu_only
def test_amp_off_stays_float32(torch_threads):
    device = choose_device(use_amp="off", use_compile="on")
    assert (device.amp, device.compile, device.precision) == (False, True, "float32")
    with device.autocast():
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32


@pytest.mark.parametrize(
    "arguments",
    [{"use_amp": "yes"}, {"use_amp": True}, {"use_compile": "On"}, {"cpu_threads": -1}],
)
def test_invalid_device_choices_are_refused(arguments, torch_threads):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        choose_device(**arguments)


@cpu_only
def test_cpu_threads_sets_torchs_threads(torch_threads):
    choose_device(cpu_threads=1)
    assert torch.get_num_threads() == 1
    choose_device(cpu_threads=0)  # one per core of the job
    assert torch.get_num_threads() == job_cpus()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_job_cpus_counts_the_cores_the_process_is_pinned_to():
    cores = os.sched_getaffinity(0)
    assert job_cpus() == len(cores)
    os.sched_setaffinity(0, {min(cores)})  # as Slurm pins a job, whatever the node has
    try:
        assert job_cpus() == 1
        assert job_cpus({"SLURM_CPUS_ON_NODE": "8"}) == 1  # pinned to fewer than the figure says
    finally:
        os.sched_setaffinity(0, cores)


def test_job_cpus_counts_what_slurm_gave_where_the_cluster_does_not_pin():
    visible = len(os.sched_getaffinity(0))
    assert job_cpus({"SLURM_CPUS_ON_NODE": "1"}) == 1  # task/none: every core visible, one given
    assert job_cpus({}) == job_cpus({"SLURM_CPUS_ON_NODE": ""}) == visible
    assert job_cpus({"SLURM_CPUS_ON_NODE": "0"}) == job_cpus({"SLURM_CPUS_ON_NODE": "2(x3)"}) == visible


# --- tags --------------------------------------------------------------------------------------------


def test_run_tags_name_the_template_user_and_version(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", USER)
    tags = run_tags("02-data")
    assert tags["werkbank.template"] == "02-data"
    assert tags["werkbank.user"] == USER
    assert tags["werkbank.version"] == werkbank_lab.__version__


def test_extra_tags_win(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", USER)
    tags = run_tags("02-data", **{"werkbank.template": "mine", "werkbank.user": "bob", "split": "a"})
    assert (tags["werkbank.template"], tags["werkbank.user"], tags["split"]) == ("mine", "bob", "a")


# --- runs in a real MLflow store ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables made (a second each), copied for every test."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    previous = mlflow_tracking_utils._tracking_uri
    try:
        MlflowClient(f"sqlite:///{path}").search_experiments()
    finally:
        mlflow.set_tracking_uri(previous)
    return path


@pytest.fixture
def experiment_id(empty_store, tmp_path, monkeypatch):
    """An experiment in a fresh SQLite MLflow store under ``tmp_path`` (artifacts there too), for the
    session user ``ada``; MLflow's global tracking URI is put back afterwards."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what werkbank_lab.tracking.tracking_uri() reads
    monkeypatch.setenv("JUPYTERHUB_USER", USER)
    previous = mlflow_tracking_utils._tracking_uri  # None unless set: get_tracking_uri() would invent one
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(previous)


def finished_run(experiment_id: str, template: str, **tags: str) -> str:
    """A finished run of ``template`` with ``tags``, started after every earlier one; its id."""
    time.sleep(0.005)  # start times are in milliseconds: make "newest" unambiguous
    with tracked_run(template, f"{template}-run", tags=tags, experiment_id=experiment_id) as run:
        pass
    return run.info.run_id


def failed_run(experiment_id: str, template: str) -> str:
    time.sleep(0.005)
    with pytest.raises(RuntimeError), tracked_run(template, "broken", experiment_id=experiment_id) as run:
        raise RuntimeError("the notebook failed")
    return run.info.run_id


def test_tracked_run_logs_the_templates_tags(experiment_id):
    run_id = finished_run(experiment_id, "02-data", split="a")
    tags = mlflow.get_run(run_id).data.tags
    assert tags["werkbank.template"] == "02-data" and tags["werkbank.user"] == USER
    assert tags["werkbank.version"] == werkbank_lab.__version__ and tags["split"] == "a"


def test_latest_run_is_the_users_newest_finished_run_of_the_template(experiment_id):
    finished_run(experiment_id, "02-data")
    newest = finished_run(experiment_id, "02-data")
    failed = failed_run(experiment_id, "02-data")
    finished_run(experiment_id, "03-train")
    finished_run(experiment_id, "02-data", **{"werkbank.user": "bob"})
    assert mlflow.get_run(failed).info.status == "FAILED"
    assert latest_run(EXPERIMENT, "02-data").info.run_id == newest


def test_latest_run_applies_extra_tags(experiment_id):
    wanted = finished_run(experiment_id, "02-data", split="a")
    finished_run(experiment_id, "02-data", split="b")
    assert latest_run(EXPERIMENT, "02-data", tags={"split": "a"}).info.run_id == wanted
    with pytest.raises(LookupError, match="split=c"):
        latest_run(EXPERIMENT, "02-data", tags={"split": "c"})


@pytest.mark.parametrize("value", ["o'brien", 'say "hi"', "back\\slash"])
def test_a_tag_value_with_quotes_matches_only_itself(experiment_id, value):
    wanted = finished_run(experiment_id, "02-data", owner=value)
    for near in ("o\\'brien", "o", "o''brien", 'say \\"hi\\"', "back\\\\slash", "backslash"):
        finished_run(experiment_id, "02-data", owner=near)  # newer lookalikes
    assert latest_run(EXPERIMENT, "02-data", tags={"owner": value}).info.run_id == wanted


def test_latest_run_says_what_is_missing_and_what_to_run(experiment_id):
    finished_run(experiment_id, "03-train")
    failed_run(experiment_id, "02-data")
    with pytest.raises(LookupError, match="Run 02-data first") as caught:
        latest_run(EXPERIMENT, "02-data", hint="Run 02-data first.")
    assert "werkbank.template=02-data" in str(caught.value) and EXPERIMENT in str(caught.value)


CSV = b"x,label\n1,cat\n2,dog\n3,cat\n"


def data_run(experiment_id: str, tmp_path, sha256: str | None) -> str:
    """A template 02 run that logged ``data/train.csv`` (``CSV``), tagged with ``sha256`` if given."""
    path = tmp_path / "train.csv"
    path.write_bytes(CSV)
    with tracked_run("02-data", "data", experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(path), artifact_path="data")
        if sha256 is not None:
            mlflow.set_tag("werkbank.sha256.train", sha256)
    return run.info.run_id


def test_load_split_returns_the_frame_and_its_checked_sha256(experiment_id, tmp_path):
    sha256 = hashlib.sha256(CSV).hexdigest()
    data_run(experiment_id, tmp_path, sha256)
    frame, got = load_split(latest_run(EXPERIMENT, "02-data"), "train", "data/train.csv")
    assert got == sha256
    assert list(frame.columns) == ["x", "label"] and frame["label"].tolist() == ["cat", "dog", "cat"]


def test_load_split_without_the_tag_is_a_lookup_error(experiment_id, tmp_path):
    run = mlflow.get_run(data_run(experiment_id, tmp_path, None))
    with pytest.raises(LookupError, match=r"werkbank\.sha256\.train"):
        load_split(run, "train", "data/train.csv")


def test_load_split_refuses_bytes_that_differ_from_the_tag(experiment_id, tmp_path):
    logged = hashlib.sha256(CSV + b"4,cat\n").hexdigest()
    run = mlflow.get_run(data_run(experiment_id, tmp_path, logged))
    with pytest.raises(ValueError, match=f"differs.*{hashlib.sha256(CSV).hexdigest()}.*{logged}"):
        load_split(run, "train", "data/train.csv")


def test_assert_run_passes_and_names_the_first_difference(experiment_id):
    with tracked_run("03-train", "train", experiment_id=experiment_id) as run:
        mlflow.log_params({"lr": 0.001, "epochs": 3})
        mlflow.log_metric("accuracy", 0.1 + 0.2)
    run_id = run.info.run_id
    passed = assert_run(
        run_id,
        tags={"werkbank.template": "03-train"},
        params={"lr": 0.001, "epochs": "3"},
        metrics={"accuracy": 0.3},
    )
    assert passed.info.run_id == run_id
    wrong = [
        ({"tags": {"werkbank.template": "02-data"}}, "tag werkbank.template"),
        ({"params": {"epochs": 4}}, "param epochs is '3', expected '4'"),
        ({"params": {"batch_size": 8}}, "param batch_size is None"),
        ({"metrics": {"accuracy": 0.31}}, "metric accuracy"),
        ({"metrics": {"loss": 0.0}}, "metric loss is None"),
        ({"status": "FAILED"}, "is FINISHED, expected FAILED"),
    ]
    for arguments, message in wrong:
        with pytest.raises(AssertionError, match=message):
            assert_run(run_id, **arguments)


def test_assert_run_refuses_a_failed_run(experiment_id):
    run_id = failed_run(experiment_id, "03-train")
    with pytest.raises(AssertionError, match="is FAILED, expected FINISHED"):
        assert_run(run_id)
    assert assert_run(run_id, status="FAILED").info.status == "FAILED"
