"""17-monitoring-drift: the champion's monitor, calibrated without drift, shown each declared shift.

Checked from outside: every batch row is there; the alerts follow from the logged p-values and alpha (four
tests, Bonferroni); the false-alarm and detection rates are recomputed from the rows; and for a sample of
batches without drift the pixel test is recomputed with SciPy from 02's test split and the logged rows.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from tests.notebooks.checks.t05_validation import held_out_split
from tests.notebooks.lifecycle import Execution, the_run

NEEDS: tuple[str, ...] = ("05-validation",)
SHIFTS = ("contrast", "noise", "rotation", "prior")


def smoke(upstream: dict[str, Execution]) -> dict:
    validation = upstream.get("05-validation")
    return {
        "size": "smoke",
        "registered_model_name": (
            validation.parameters["registered_model_name"] if validation else "never-registered"
        ),
    }


def check(execution: Execution) -> None:
    client = execution.client
    run = the_run(execution)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["size"] == "smoke" and params["reference_split"] == "validation"
    with tempfile.TemporaryDirectory() as scratch:
        table = pd.read_csv(client.download_artifacts(run.info.run_id, "monitoring/batches.csv", scratch))
        rows = json.loads(
            Path(client.download_artifacts(run.info.run_id, "monitoring/rows.json", scratch)).read_text()
        )
    alpha, null_batches = float(params["alpha"]), int(params["null_batches"])
    shifted_batches = int(params["shifted_batches"])
    assert (table["kind"] == "none").sum() == null_batches
    for kind in SHIFTS:
        assert (table["kind"] == kind).sum() == shifted_batches, kind

    # Alerts: any of the four p-values below alpha / 4.
    p_values = table[["p_pixels", "p_classes", "p_confidence", "p_embedding"]]
    assert (table["alert"] == (p_values.min(axis=1) < alpha / 4)).all()
    null = table[table["kind"] == "none"]
    assert metrics["false_alarms"] == null["alert"].sum()
    p = scipy.stats.binomtest(int(null["alert"].sum()), null_batches, alpha, alternative="greater").pvalue
    assert abs(metrics["false_alarm_p_value"] - p) < 1e-12 and p >= 0.01
    for kind in SHIFTS:
        rate = table.loc[table["kind"] == kind, "alert"].mean()
        assert metrics[f"detection_rate.{kind}"] == rate >= float(params["min_detection_rate"]), kind
    assert tags["werkbank.monitoring.alert"] == ",".join(SHIFTS)
    assert tags["werkbank.monitoring.recommendation"].split(":")[0] in ("retrain", "investigate")

    # The pixel test of the first batches without drift, recomputed from the test split and the logged rows.
    data_run_id = client.get_run(
        client.get_model_version_by_alias(execution.parameters["registered_model_name"], "champion").run_id
    ).data.tags["werkbank.data_run_id"]
    images, _ = held_out_split(client, data_run_id)
    pixels = images.reshape(len(images), -1).numpy()
    with tempfile.TemporaryDirectory() as scratch:
        frame = pd.read_csv(client.download_artifacts(data_run_id, "data/validation.csv", scratch))
    reference = frame[[c for c in frame.columns if c.startswith("pixel_")]].to_numpy(np.float32) / 16.0
    for number in range(3):
        batch = pixels[rows[f"none/{number}"]]
        p_each = [
            scipy.stats.ks_2samp(reference[:, k], batch[:, k]).pvalue
            if reference[:, k].std() + batch[:, k].std() > 0
            else 1.0
            for k in range(64)
        ]
        expected = min(1.0, 64 * min(p_each))
        assert abs(null.iloc[number]["p_pixels"] - expected) < 1e-9, (number, expected)
