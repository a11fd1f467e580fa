"""05-validation: a gate on the held-out data; a passing candidate becomes the registered champion.

The smoke run validates a fresh registered model, so it has no champion to compare with: it must say so and
log no comparison. Its intervals are recomputed here with SciPy from predictions made here. Then the template
runs again with a gate no model passes (``min_accuracy=1.0``): it must stop with ``GateFailed`` naming the
check, register nothing and leave the champion alone; that run compares the candidate with the champion the
smoke run registered, the same model, so the paired comparison must find no disagreement (p = 1).
``test_validation_comparison.py`` compares two different models.
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
import scipy.stats
import torch

from tests.notebooks.checks.t02_data import artifact_sha256
from tests.notebooks.lifecycle import Execution, execute, runs_in, the_run

NEEDS: tuple[str, ...] = ("03-training",)

# A registered model of this test session's own (the lifecycle names experiments, not registered models).
REGISTERED_MODEL = f"test-digits-cnn-{uuid.uuid4().hex[:8]}"
PIXELS = [f"pixel_{row}_{column}" for row in range(8) for column in range(8)]


def smoke(upstream: dict[str, Execution]) -> dict:
    training = upstream.get("03-training")
    return {
        "size": "smoke",
        "training_experiment": training.experiment_name if training else "never-created",
        "registered_model_name": REGISTERED_MODEL,
        # calibration_bins differs from the default to show the parameter is used.
        "calibration_bins": 8,
    }


def held_out_split(client, data_run_id: str) -> tuple[torch.Tensor, np.ndarray]:
    """The data run's test split as the model's input (N, 1, 8, 8) and the labels."""
    with tempfile.TemporaryDirectory() as scratch:
        frame = pd.read_csv(client.download_artifacts(data_run_id, "data/test.csv", scratch))
    images = torch.from_numpy(frame[PIXELS].to_numpy(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return images, frame["target"].to_numpy()


def predictions_of(model_uri: str, images: torch.Tensor) -> np.ndarray:
    """The digits the model at ``model_uri`` predicts for ``images``, loaded as 05 and 06 load it."""
    model = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        return model(images).argmax(dim=1).numpy()


def gate_rows(client, run) -> dict[str, dict]:
    """The rows of the run's gate.json by check; the last one is the comparison with the champion."""
    with tempfile.TemporaryDirectory() as scratch:
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "gate.json", scratch)).read_text())
    return {row["check"]: row for row in table}


def wilson(right: np.ndarray, level: float) -> tuple[float, float]:
    """SciPy's Wilson score interval of the share of ``right``: not the notebook's few lines."""
    interval = scipy.stats.binomtest(int(right.sum()), len(right)).proportion_ci(level, method="wilson")
    return interval.low, interval.high


def check_comparison(client, run, labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> None:
    """The paired comparison ``run`` logged agrees with the candidate's and the champion's predictions, made
    by the caller: the 2×2 counts, McNemar's exact p-value, the verdict tag and gate.json's comparison row."""
    metrics = run.data.metrics
    right, champion_right = candidate == labels, champion == labels
    counts = {
        "champion_both_right": int((right & champion_right).sum()),
        "champion_discordant_candidate_only": int((right & ~champion_right).sum()),
        "champion_discordant_champion_only": int((~right & champion_right).sum()),
        "champion_both_wrong": int((~right & ~champion_right).sum()),
    }
    assert {name: metrics[name] for name in counts} == counts, metrics
    assert sum(metrics[name] for name in counts) == len(labels)  # agreements and disagreements: every image
    b, c = counts["champion_discordant_candidate_only"], counts["champion_discordant_champion_only"]
    p = metrics["mcnemar_p_value"]
    assert 0 <= p <= 1, p
    assert p == pytest.approx(scipy.stats.binomtest(b, b + c).pvalue if b + c else 1.0, abs=1e-12), (b, c)
    if (candidate == champion).all():
        assert (b, c, p) == (0, 0, 1.0), (b, c, p)
    worse = p < float(run.data.params["significance"]) and c > b
    assert run.data.tags["werkbank.comparison"] == (
        "significantly worse" if worse else "not significantly worse"
    )
    row = gate_rows(client, run)["comparison"]
    assert (row["candidate_only"], row["champion_only"], row["value"], row["pass"]) == (b, c, p, not worse), (
        row
    )
    assert row["champion_version"] == run.data.tags["werkbank.previous_champion_version"]


def check(execution: Execution) -> None:
    client = execution.client
    name = execution.parameters["registered_model_name"]
    run = the_run(execution)
    thresholds = {key: float(value) for key, value in run.data.params.items() if key[:4] in ("min_", "max_")}
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["werkbank.gate"], tags["werkbank.gate.failed_checks"]) == ("passed", "none")
    # A new registered model: no champion before this run, so nothing to compare.
    assert tags["werkbank.previous_champion_version"] == "none"
    assert tags["werkbank.comparison"] == "no champion yet: nothing to compare"
    assert not [m for m in metrics if m.startswith("champion_") or m == "mcnemar_p_value"]

    # The candidate is the newest finished training run of 03, and its logged model is what was registered.
    training_runs = [
        r
        for r in runs_in(client, execution.upstream["03-training"].experiment_name)
        if r.info.status == "FINISHED" and r.outputs and r.outputs.model_outputs
    ]
    training = max(training_runs, key=lambda r: r.info.start_time)
    assert tags["werkbank.candidate_run_id"] == training.info.run_id
    # The test split validated is, byte for byte, the one 02 logged, and 03 trained and chose on the other two
    # parts of the same split (it never read the test split).
    data_run_id = tags["werkbank.data_run_id"]
    data_tags = client.get_run(data_run_id).data.tags
    assert (
        tags["werkbank.sha256.testing"]
        == data_tags["werkbank.sha256.testing"]
        == artifact_sha256(client, data_run_id, "data/test.csv")
    )
    for context in ("training", "validation"):
        assert training.data.tags[f"werkbank.sha256.{context}"] == data_tags[f"werkbank.sha256.{context}"]
    assert "werkbank.sha256.testing" not in training.data.tags
    assert run.data.params["earlier_candidates_on_test_split"] == "0"  # the first look at it
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
            value <= thresholds[threshold] if threshold.startswith("max_") else value >= thresholds[threshold]
        )
    rows = gate_rows(client, run)
    assert {check: row["pass"] for check, row in rows.items()} == {
        **dict.fromkeys(gate, True),
        "comparison": True,
    }
    assert rows["comparison"]["value"] is None and rows["comparison"]["status"] == tags["werkbank.comparison"]
    # Each gate row holds its value and interval as logged; "inconclusive" exactly when the threshold lies
    # inside the interval, while pass stays decided on the value.
    for threshold, metric in gate.items():
        row, limit = rows[threshold], thresholds[threshold]
        assert [row["value"], row["ci_low"], row["ci_high"]] == [
            metrics[metric],
            metrics[f"{metric}_ci_low"],
            metrics[f"{metric}_ci_high"],
        ], row
        inside = row["ci_low"] <= limit <= row["ci_high"]
        assert row["status"] == ("inconclusive (pass)" if inside else "pass"), row
    inconclusive = [threshold for threshold in gate if rows[threshold]["status"].startswith("inconclusive")]
    assert tags["werkbank.gate.inconclusive_checks"] == (", ".join(inconclusive) or "none")
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "figures")}
    assert artifacts == {"figures/confusion_matrix.png", "figures/reliability_diagram.png"}

    # The numbers are the registered model's on the data run's test split, measured here independently.
    images, labels = held_out_split(client, training.data.tags["werkbank.data_run_id"])
    predicted = predictions_of(f"models:/{name}@champion", images)
    right = predicted == labels
    assert metrics["accuracy"] == pytest.approx(right.mean(), abs=1e-12)
    recalls = [right[labels == digit].mean() for digit in range(10)]
    assert metrics["worst_class_recall"] == pytest.approx(min(recalls), abs=1e-12)
    # Their intervals: SciPy's Wilson interval on the same counts.
    level = float(run.data.params["confidence_level"])
    weakest = labels == int(np.argmin(recalls))
    for metric, outcomes in {"accuracy": right, "worst_class_recall": right[weakest]}.items():
        low, high = wilson(outcomes, level)
        assert metrics[f"{metric}_ci_low"] == pytest.approx(low, abs=1e-9), metric
        assert metrics[f"{metric}_ci_high"] == pytest.approx(high, abs=1e-9), metric
    # The logged predictions are these.
    with tempfile.TemporaryDirectory() as scratch:
        logged = pd.read_csv(client.download_artifacts(run.info.run_id, "tables/predictions.csv", scratch))
    assert (logged["predicted"].to_numpy() == predicted).all() and (
        logged["target"].to_numpy() == labels
    ).all()

    # An impossible gate: the notebook stops with GateFailed naming the check; the registry stays as it was.
    assert metrics["accuracy"] < 1, "the smoke model is perfect, so min_accuracy=1.0 cannot fail it"
    failing = {**execution.parameters, "min_accuracy": 1.0, "run_name": "impossible-gate"}
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
    # It compared the candidate with the champion the smoke run registered: the same model, no disagreement.
    assert failed.data.tags["werkbank.previous_champion_version"] == champion.version
    check_comparison(
        client, failed, labels, predicted, predictions_of(f"models:/{name}/{champion.version}", images)
    )
