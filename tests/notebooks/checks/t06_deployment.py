"""06-deployment: the champion exported (TorchScript, torch.export, ONNX), served over HTTP, batch-scored.

The exports are loaded here as a program without MLflow would load them and compared with the registered
model on the test split; the batch predictions are compared with the model's own predictions. The latency
budget's p95 and its interval are recomputed from every request's logged latency, the interval with SciPy's
``quantile_test`` instead of the notebook's order statistics. What the size chose (requests, batch size,
rows) is read from the run's parameters.
"""

import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import scipy.stats
import torch

import werkbank_lab
from tests.notebooks.checks.t02_data import artifact_sha256
from tests.notebooks.checks.t05_validation import PIXELS, held_out_split
from tests.notebooks.lifecycle import Execution, the_run

NEEDS: tuple[str, ...] = ("05-validation",)


def smoke(upstream: dict[str, Execution]) -> dict:
    validation = upstream.get("05-validation")
    return {
        "size": "smoke",
        "registered_model_name": (
            validation.parameters["registered_model_name"] if validation else "never-registered"
        ),
        "export_dir": "deployment",  # relative: inside the test's working directory
    }


def check_latency_budget(client, run) -> None:
    """The budget's verdict agrees with the logged latencies: their p95, its interval (SciPy's
    distribution-free confidence interval of a quantile), and the status the notebook derives from them."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    with tempfile.TemporaryDirectory() as scratch:
        latencies = pd.read_csv(client.download_artifacts(run.info.run_id, "tables/latencies.csv", scratch))
    single = latencies.loc[latencies["images per request"] == 1, "ms"].to_numpy()
    assert len(single) == int(params["serve_requests"]) == metrics["single_requests"], len(single)
    p95 = metrics["single_latency_p95_ms"]
    assert p95 == pytest.approx(np.percentile(single, 95)), p95
    level = float(params["confidence_level"])
    interval = scipy.stats.quantile_test(single, q=p95, p=0.95).confidence_interval(level)
    low, high = metrics["single_latency_p95_ci_low_ms"], metrics["single_latency_p95_ci_high_ms"]
    assert (low, high) == pytest.approx((interval.low, interval.high)), (low, high, interval)
    budget = float(params["max_p95_latency_ms"])
    decision = "pass" if p95 <= budget else "fail"
    assert tags["werkbank.latency_budget"] == (
        f"inconclusive ({decision})" if low <= budget <= high else decision
    ), (p95, low, high, budget)
    # The notebook ran to its end, so its check found the service within its (smoke) budget.
    assert decision == "pass", tags["werkbank.latency_budget"]


def check(execution: Execution) -> None:
    client, parameters, workdir = execution.client, execution.parameters, execution.workdir
    name = parameters["registered_model_name"]
    run = the_run(execution)
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert (params["size"], tags["werkbank.version"]) == ("smoke", werkbank_lab.__version__)

    # It deployed the champion, which is the version 05 registered.
    champion = client.get_model_version_by_alias(name, "champion")
    validation_run_id = champion.tags["werkbank.validation_run_id"]
    assert client.get_run(validation_run_id).info.experiment_id == (
        client.get_experiment_by_name(execution.upstream["05-validation"].experiment_name).experiment_id
    )
    assert tags["werkbank.model_version"] == champion.version
    assert tags["werkbank.model_uri"] == f"models:/{name}/{champion.version}"

    # The reference data is 02's test split, to the byte: the SHA-256 the run records is the data run's tag
    # and the hash of the file stored with the data run.
    data_run = client.get_run(client.get_run(champion.run_id).data.tags["werkbank.data_run_id"])
    sha256 = artifact_sha256(client, data_run.info.run_id, "data/test.csv")
    assert tags["werkbank.sha256.testing"] == data_run.data.tags["werkbank.sha256.testing"] == sha256

    # The exported files, loaded without MLflow, compute what the registered model computes.
    images, _ = held_out_split(client, data_run.info.run_id)
    model = mlflow.pytorch.load_model(f"models:/{name}/{champion.version}")
    with torch.no_grad():
        expected = model(images).numpy()
    tolerance = float(params["tolerance"])
    with tempfile.TemporaryDirectory() as scratch:
        exports = Path(client.download_artifacts(run.info.run_id, "exports", scratch))
        assert {p.name for p in exports.iterdir()} == {"model.torchscript.pt", "model.pt2", "model.onnx"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated")
            outputs = {
                "TorchScript": torch.jit.load(exports / "model.torchscript.pt")(images).numpy(),
                "torch.export": torch.export.load(exports / "model.pt2").module()(images).numpy(),
            }
        session = onnxruntime.InferenceSession(exports / "model.onnx", providers=["CPUExecutionProvider"])
        outputs["ONNX"] = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    for export, logits in outputs.items():
        assert logits.shape == expected.shape, (export, logits.shape)
        assert np.abs(logits - expected).max() <= tolerance, export
        assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all(), export

    # The service answers what the model computes. What the run records of its measurement is
    # what the notebook measured and showed (its logged table, row by row), and batching paid
    # off as the notebook teaches: more images per second than single-image requests.
    assert metrics["served_max_abs_diff"] <= tolerance
    with tempfile.TemporaryDirectory() as scratch:
        table = pd.read_csv(
            client.download_artifacts(run.info.run_id, "tables/serving.csv", scratch), index_col=0
        )
    single, batch = table.to_dict("index").values()
    sizes = (1, int(params["request_batch_size"]))
    assert (single["images per request"], batch["images per request"]) == sizes, table
    for prefix, row in (("single", single), ("batch", batch)):
        for key in ("p50", "p95", "p99"):
            assert metrics[f"{prefix}_latency_{key}_ms"] == pytest.approx(row[f"{key} ms"]), (prefix, key)
        assert metrics[f"{prefix}_requests_per_second"] == pytest.approx(row["requests/s"]), prefix
        assert metrics[f"{prefix}_rows_per_second"] == pytest.approx(row["images/s"]), prefix
    assert batch["images/s"] > single["images/s"], table
    check_latency_budget(client, run)

    # Batch inference: one prediction per input row, in order, the model's, next to the inputs in export_dir.
    folder = Path(params["folder"])
    assert folder.is_relative_to((workdir / parameters["export_dir"]).resolve()), folder
    inputs = pd.read_parquet(folder / "batch" / "inputs.parquet")
    predictions = pd.read_parquet(folder / "batch" / "predictions.parquet")
    assert len(inputs) == len(predictions) == int(params["batch_rows"])
    assert (predictions["id"] == inputs["id"]).all()
    pixels = torch.from_numpy(inputs[PIXELS].to_numpy(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        assert (predictions["prediction"].to_numpy() == model(pixels).argmax(dim=1).numpy()).all()
    with tempfile.TemporaryDirectory() as scratch:
        logged = client.download_artifacts(run.info.run_id, "batch/predictions.parquet", scratch)
        pd.testing.assert_frame_equal(pd.read_parquet(logged), predictions)

    # Nothing was written in the working directory outside export_dir but papermill's own output.
    export_root = (workdir / parameters["export_dir"]).resolve()
    written = {p for p in workdir.rglob("*") if p.is_file() and not p.name.startswith("executed-")}
    assert written and all(p.resolve().is_relative_to(export_root) for p in written), sorted(written)
