"""werkbank_lab.widgets: the training panel fed by the metric logger, and the session panel."""

from __future__ import annotations

import os
import time

import pytest

from werkbank_lab import widgets
from werkbank_lab.tracking import MetricLogger


def test_the_training_panel_shows_progress_eta_and_curves():
    panel = widgets.TrainingPanel(total_steps=100, keys=["loss"], min_interval=0)
    for step in range(1, 51):
        panel("loss", 1 / step, step)
        panel("accuracy", step / 100, step)
    assert panel.bar.value == 50 and panel.bar.max == 100
    assert "step 50 / 100" in panel.status.value and "ETA" in panel.status.value
    assert "accuracy 0.5" in panel.status.value  # listed, not plotted
    assert panel.chart.value.count("<polyline") == 1 and ">loss<" in panel.chart.value
    assert 0 <= panel.eta_seconds() < 60


def test_the_training_panel_redraws_at_most_every_min_interval(report_figure):
    panel = widgets.TrainingPanel(total_steps=10_000, min_interval=3600)
    started = time.perf_counter()
    for step in range(10_000):
        panel("loss", 1.0, step)
    per_call = (time.perf_counter() - started) / 10_000
    assert panel.renders == 1  # the first value; the next would be due in an hour
    panel.finish()
    assert panel.renders == 2 and panel.bar.value == 9_999
    report_figure("TrainingPanel between redraws", f"{per_call * 1e6:.1f} µs per logged value")


def test_the_metric_logger_feeds_its_listeners(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment(f"widgets-{os.getpid()}-{time.time_ns()}")
    run_id = client.create_run(experiment_id).info.run_id
    panel = widgets.TrainingPanel(total_steps=20, min_interval=0)
    with MetricLogger(
        run_id, tracking_uri=mlflow_server.url, spool_dir=tmp_path, listeners=[panel]
    ) as logger:
        for step in range(20):
            logger.log("loss", 1 / (step + 1), step)
    # What the panel drew is what MLflow got.
    assert panel.series["loss"] == [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]


def test_svg_curves_escape_key_names_and_cope_with_flat_series():
    svg = widgets.svg_curves({"<script>": [(0, 1.0), (1, 1.0)]})
    assert "<script>" not in svg and "&lt;script&gt;" in svg


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1-02:03:04", 93784),
        ("02:03:04", 7384),
        ("03:04", 184),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("", None),
    ],
)
def test_slurm_times(text, seconds):
    assert widgets.parse_slurm_time(text) == seconds


def fake_command(tmp_path, name: str, output: str) -> None:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(0o755)


def test_the_session_panel_warns_before_the_walltime_ends(tmp_path, monkeypatch):
    fake_command(tmp_path, "squeue", "9:30")
    fake_command(tmp_path, "nvidia-smi", "0, NVIDIA H100, 87, 40000, 81559")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    panel = widgets.SessionPanel(
        warn_minutes=10,
        environ={"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "gpu07", "WERKBANK_PROFILE": "gpu1"},
    )
    assert "Your session ends in 9:30" in panel.warning.value
    assert "gpu07" in panel.table.value and "NVIDIA H100 · 87 % busy · 40000 / 81559 MiB" in panel.table.value


def test_the_session_panel_outside_slurm_on_a_cpu_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither squeue nor nvidia-smi
    panel = widgets.SessionPanel(environ={})
    assert panel.warning.value == ""
    assert "none (not in a Slurm job)" in panel.table.value and "none: CPU only" in panel.table.value
