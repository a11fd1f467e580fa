"""03-training: a CNN trained on 02's digits split, checkpointed every epoch, logged with its data and model.

After the smoke run, the template runs a second time in the same working directory with one more epoch: it
must resume from the first run's checkpoint (``resumed_from_epoch``) instead of training from scratch.
"""

import getpass
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
from mlflow.models import get_model_info

import werkbank_lab
from tests.notebooks.checks.t02_data import SPLIT_FILES, artifact_sha256
from tests.notebooks.lifecycle import Execution, execute, inputs_by_context, runs_in

NEEDS: tuple[str, ...] = ("02-data",)
PIXELS = [f"pixel_{row}_{column}" for row in range(8) for column in range(8)]


def smoke(upstream: dict[str, Execution]) -> dict:
    data = upstream.get("02-data")
    return {
        "size": "smoke",
        "data_experiment": data.experiment_name if data else "never-created",
        "run_name": "smoke",
        "checkpoint_dir": "werkbank-checkpoints",  # relative: inside the test's working directory
    }


# What 03 reads of 02's split: not the test split, which 05 uses once.
TRAINING_FILES = {context: SPLIT_FILES[context] for context in ("training", "validation")}


def data_run_of(execution: Execution):
    [run] = [
        run
        for run in runs_in(execution.client, execution.upstream["02-data"].experiment_name)
        if run.data.tags.get("werkbank.dataset") == "digits"
    ]
    return run


def validation_split(client, data_run_id: str) -> tuple[torch.Tensor, np.ndarray]:
    """The data run's validation split as the model's input (N, 1, 8, 8) float32 and the labels."""
    with tempfile.TemporaryDirectory() as scratch:  # outside the working directory, which is checked
        frame = pd.read_csv(client.download_artifacts(data_run_id, "data/validation.csv", scratch))
    images = torch.from_numpy(frame[PIXELS].to_numpy(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return images, frame["target"].to_numpy()


def check_training_run(execution: Execution, run, data_run, *, resumed_from: int) -> None:
    """What every training run must be: finished, tagged, on 02's data, with a model that loads."""
    client = execution.client
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED", run.info.status
    assert tags["werkbank.template"] == "03-training"
    assert tags["werkbank.user"] == getpass.getuser()
    assert tags["werkbank.version"] == werkbank_lab.__version__
    assert tags["werkbank.data_run_id"] == params["data_run_id"] == data_run.info.run_id
    assert params["resumed_from_epoch"] == str(resumed_from) and params["size"] == "smoke"
    assert metrics["final_val_accuracy"] >= float(params["min_accuracy"]), metrics["final_val_accuracy"]
    # MLflow's system metrics (templates.tracked_run): its monitor logs a sample after each interval (half
    # a second in the tests), so a training of two intervals or more has them; a shorter one may not.
    assert tags["werkbank.resources.system_metrics"].startswith("MLflow logs CPU, memory")
    if metrics["train_seconds"] >= 1.0:
        assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
    # The test split is 05's: not read, not measured here.
    assert "werkbank.sha256.testing" not in tags and not any(key.startswith("test") for key in metrics)

    # The dataset inputs are 02's training and validation split: same digests as the data run's tags.
    inputs = inputs_by_context(run)
    assert set(inputs) == set(TRAINING_FILES), sorted(inputs)
    for context, dataset in inputs.items():
        assert dataset.digest == data_run.data.tags[f"werkbank.digest.{context}"], context
    # And the bytes, in full: the SHA-256 the run records for each split is the data run's tag and the hash
    # of the file stored with the data run.
    for context, file_name in TRAINING_FILES.items():
        sha256 = artifact_sha256(client, data_run.info.run_id, f"data/{file_name}")
        key = f"werkbank.sha256.{context}"
        assert tags[key] == data_run.data.tags[key] == sha256, key

    # One value per epoch trained in this run (the validation metrics sit at the epoch's last step).
    epochs = int(params["epochs"])
    logged_epochs = sorted(int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch"))
    assert logged_epochs == list(range(resumed_from + 1, epochs + 1)), logged_epochs
    steps_per_epoch = len(client.get_metric_history(run.info.run_id, "train_loss")) // (epochs - resumed_from)
    val_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
    assert val_steps == [epoch * steps_per_epoch for epoch in logged_epochs], val_steps

    # The logged model: a signature for (N, 1, 8, 8) float32, and it reproduces the logged accuracy on 02's
    # validation split, loaded as 05 and 06 load it.
    model_uri = f"runs:/{run.info.run_id}/model"
    signature = get_model_info(model_uri).signature
    assert signature is not None, "the model has no signature"
    [spec] = signature.inputs.inputs
    assert (spec.type, spec.shape) == (np.dtype("float32"), (-1, 1, 8, 8)), spec
    model = mlflow.pytorch.load_model(model_uri)
    assert not model.training
    images, labels = validation_split(client, data_run.info.run_id)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (len(labels), 10) and logits.dtype == torch.float32
    accuracy = (logits.argmax(dim=1).numpy() == labels).sum() / len(labels)
    assert accuracy == metrics["final_val_accuracy"], (accuracy, metrics["final_val_accuracy"])


def checkpoint_of(execution: Execution) -> dict:
    folder = (execution.workdir / execution.parameters["checkpoint_dir"]).resolve()
    [path] = folder.glob("*.pt")  # one configuration, one file; no *.partial left behind
    assert sorted(p.name for p in folder.iterdir()) == [path.name]
    return {"path": path, **torch.load(path, map_location="cpu", weights_only=True)}


def check_stops_on_changed_data(execution: Execution, data_run) -> None:
    """A data run whose training file no longer has the bytes its tags name: 03 stops before it trains.

    The copy of the data run lives in an experiment of its own (later templates search 02's experiment);
    its tags are the data run's, its training file has one image relabelled in the last row.
    """
    client = execution.client
    experiment_id = client.create_experiment(f"{execution.experiment_name}-changed-data")
    werkbank_tags = {k: v for k, v in data_run.data.tags.items() if k.startswith("werkbank.")}
    changed = client.create_run(experiment_id, tags=werkbank_tags, run_name="changed-data")
    with tempfile.TemporaryDirectory() as scratch:
        for file_name in SPLIT_FILES.values():
            local = Path(client.download_artifacts(data_run.info.run_id, f"data/{file_name}", scratch))
            if file_name == SPLIT_FILES["training"]:
                frame = pd.read_csv(local)
                frame.loc[frame.index[-1], "target"] = (frame["target"].iloc[-1] + 1) % 10
                frame.to_csv(local, index=False)
            client.log_artifact(changed.info.run_id, str(local), "data")
    client.set_terminated(changed.info.run_id)
    runs_before = {r.info.run_id for r in runs_in(client, execution.experiment_name)}

    workdir = execution.workdir.with_name(f"{execution.workdir.name}-changed-data")
    workdir.mkdir()
    parameters = {**execution.parameters, "data_run_id": changed.info.run_id, "run_name": "changed-data"}
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(execution.path, workdir, parameters)
    assert failure.value.ename == "ValueError", (failure.value.ename, failure.value.evalue)
    assert "the training data differs from what template 02 logged" in failure.value.evalue
    assert data_run.data.tags["werkbank.sha256.training"] in failure.value.evalue
    # It stopped before training: no new run, no checkpoint.
    assert {r.info.run_id for r in runs_in(client, execution.experiment_name)} == runs_before
    assert [p.name for p in workdir.iterdir()] == [f"executed-{execution.path.name}"]


def check(execution: Execution) -> None:
    client, parameters, workdir = execution.client, execution.parameters, execution.workdir
    data_run = data_run_of(execution)
    [first] = runs_in(client, execution.experiment_name)
    assert first.info.run_name == parameters["run_name"]
    check_training_run(execution, first, data_run, resumed_from=0)

    # The checkpoint: inside checkpoint_dir, after the last epoch, written by this run.
    checkpoint = checkpoint_of(execution)
    assert first.data.params["checkpoint"] == str(checkpoint["path"])
    epochs = int(first.data.params["epochs"])  # the smoke size's
    assert checkpoint["epoch"] == epochs
    assert checkpoint["run_id"] == first.info.run_id

    # Nothing was written in the working directory outside checkpoint_dir but papermill's own output.
    checkpoint_root = (workdir / parameters["checkpoint_dir"]).resolve()
    written = [p for p in workdir.rglob("*") if p.is_file() and not p.name.startswith("executed-")]
    assert written and all(p.resolve().is_relative_to(checkpoint_root) for p in written), sorted(written)

    # Run again with one more epoch, as after a walltime: it continues from the checkpoint.
    more = {**parameters, "epochs": epochs + 1, "run_name": "smoke-resumed"}
    start = time.monotonic()
    seconds = execute(execution.path, workdir, more)
    print(f"03-training: resumed run {seconds:.1f} s (check so far {time.monotonic() - start:.1f} s)")
    [resumed] = [r for r in runs_in(client, execution.experiment_name) if r.info.run_id != first.info.run_id]
    assert resumed.info.run_name == "smoke-resumed"
    check_training_run(execution, resumed, data_run, resumed_from=epochs)
    assert resumed.data.tags["werkbank.resumed_from_run_id"] == first.info.run_id
    assert client.get_run(first.info.run_id).info.status == "FINISHED"  # finished runs are not marked KILLED
    checkpoint = checkpoint_of(execution)
    assert (checkpoint["epoch"], checkpoint["run_id"]) == (more["epochs"], resumed.info.run_id)
    assert [h["epoch"] for h in checkpoint["history"]] == list(range(1, more["epochs"] + 1))

    # A training file whose bytes differ from what 02 logged stops the template before it trains.
    start = time.monotonic()
    check_stops_on_changed_data(execution, data_run)
    print(f"03-training: run on changed data stopped, {time.monotonic() - start:.1f} s")
