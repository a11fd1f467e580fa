"""05-validation: a gate on the held-out data; a passing candidate becomes the registered champion.

After the smoke run (which passes its loose gate), the template runs again with a gate no model passes
(``min_accuracy=1.0``): it must stop with ``GateFailed`` naming the check, register nothing and leave the
champion alone.
"""

import json
import tempfile
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import papermill
import pytest
import torch

from tests.notebooks.lifecycle import Execution, execute, runs_in, the_run

NEEDS: tuple[str, ...] = ("03-training",)

# A registered model of this test session's own (the lifecycle names experiments, not registered models).
REGISTERED_MODEL = f"test-digits-cnn-{uuid.uuid4().hex[:8]}"
PIXELS = [f"pixel_{row}_{column}" for row in range(8) for column in range(8)]


def smoke(upstream: dict[str, Execution]) -> dict:
    training = upstream.get("03-training")
    return {
        "training_experiment": training.experiment_name if training else "never-created",
        "registered_model_name": REGISTERED_MODEL,
        # A gate a few seconds of training pass; 06 deploys what passed. calibration_bins differs from the
        # default to show the parameter is used.
        "min_accuracy": 0.5,
        "min_class_recall": 0.2,
        "min_slice_accuracy": 0.5,
        "max_calibration_error": 0.5,
        "calibration_bins": 8,
    }


def held_out_split(client, data_run_id: str) -> tuple[torch.Tensor, np.ndarray]:
    """The data run's test split as the model's input (N, 1, 8, 8) and the labels."""
    with tempfile.TemporaryDirectory() as scratch:
        frame = pd.read_csv(client.download_artifacts(data_run_id, "data/test.csv", scratch))
    images = torch.from_numpy(frame[PIXELS].to_numpy(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return images, frame["target"].to_numpy()


def check(execution: Execution) -> None:
    client, parameters = execution.client, execution.parameters
    name = parameters["registered_model_name"]
    run = the_run(execution)
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["werkbank.gate"], tags["werkbank.gate.failed_checks"]) == ("passed", "none")

    # The candidate is the newest finished training run of 03, and its logged model is what was registered.
    training_runs = [
        r
        for r in runs_in(client, execution.upstream["03-training"].experiment_name)
        if r.info.status == "FINISHED" and r.outputs and r.outputs.model_outputs
    ]
    training = max(training_runs, key=lambda r: r.info.start_time)
    assert tags["werkbank.candidate_run_id"] == training.info.run_id
    [logged_model] = [
        model
        for output in training.outputs.model_outputs
        if (model := client.get_logged_model(output.model_id)).name == "model"
    ]
    assert logged_model.source_run_id == training.info.run_id

    # One version, the champion, from the training run's model, tagged with this validation run.
    champion = client.get_model_version_by_alias(name, "champion")
    versions = client.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == [champion.version], [v.version for v in versions]
    assert champion.run_id == training.info.run_id
    assert champion.source == logged_model.model_uri == f"models:/{logged_model.model_id}"
    assert champion.tags["werkbank.validation_run_id"] == run.info.run_id
    assert champion.tags["werkbank.candidate_run_id"] == training.info.run_id
    assert tags["werkbank.model_version"] == champion.version

    # The gate's metrics clear the thresholds, on the run and on the version alike.
    gate = {
        "min_accuracy": "accuracy",
        "min_class_recall": "worst_class_recall",
        "min_slice_accuracy": "worst_slice_accuracy",
        "max_calibration_error": "calibration_error",
    }
    for threshold, metric in gate.items():
        value = metrics[metric]
        assert float(champion.tags[metric]) == value, metric
        assert (
            value <= parameters[threshold] if threshold.startswith("max_") else value >= parameters[threshold]
        )
    with tempfile.TemporaryDirectory() as scratch:
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "gate.json", scratch)).read_text())
    assert {row["check"]: row["pass"] for row in table} == dict.fromkeys(gate, True), table
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "figures")}
    assert artifacts == {"figures/confusion_matrix.png", "figures/reliability_diagram.png"}

    # The numbers are the registered model's on the data run's test split, measured here independently.
    images, labels = held_out_split(client, training.data.tags["werkbank.data_run_id"])
    model = mlflow.pytorch.load_model(f"models:/{name}@champion")
    with torch.no_grad():
        predicted = model(images).argmax(dim=1).numpy()
    assert metrics["accuracy"] == pytest.approx((predicted == labels).mean(), abs=1e-12)
    worst_recall = min((predicted[labels == digit] == digit).mean() for digit in range(10))
    assert metrics["worst_class_recall"] == pytest.approx(worst_recall, abs=1e-12)

    # An impossible gate: the notebook stops with GateFailed naming the check; the registry stays as it was.
    assert metrics["accuracy"] < 1, "the smoke model is perfect, so min_accuracy=1.0 cannot fail it"
    failing = {**parameters, "min_accuracy": 1.0, "run_name": "impossible-gate"}
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(execution.path, execution.workdir, failing)
    assert failure.value.ename == "GateFailed", failure.value.ename
    assert "min_accuracy" in failure.value.evalue and "Nothing was registered" in failure.value.evalue
    [failed] = [r for r in runs_in(client, execution.experiment_name) if r.info.run_name == "impossible-gate"]
    assert failed.info.status == "FINISHED"  # the validation ran; its answer was no
    assert failed.data.tags["werkbank.gate"] == "failed"
    assert failed.data.tags["werkbank.gate.failed_checks"] == "min_accuracy"
    assert "werkbank.model_version" not in failed.data.tags
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == [champion.version]
    assert client.get_model_version_by_alias(name, "champion").version == champion.version
