"""Every notebook template, run headless with papermill and smoke parameters against a real MLflow server.

The templates assert their own claims in their "Checks" section; these tests check the outcome again from
outside, through the MLflow API, as the next template or a user in the MLflow UI sees it (the checks live in
``checks/``, one module per template; ``lifecycle.py`` runs them in order). A template that fails raises
``PapermillExecutionError`` naming the failing cell; the tests let it propagate.
"""

from __future__ import annotations

import json
import uuid

import papermill
import pytest
from mlflow import MlflowClient

from tests.notebooks.lifecycle import (
    SMOKE_BUDGET_S,
    TEMPLATES,
    checks_for,
    execute,
    runs_in,
    template_id,
    variants,
)

# The templates' smoke runs, then their variants (16-data-pooling/flower: one template, other parameters).
RUNS = [template_id(path) for path in TEMPLATES] + variants()


def test_every_template_has_checks_and_its_needs_come_before_it():
    names = [template_id(path) for path in TEMPLATES]
    assert names[:3] == ["00-first-hour", "01-onboarding", "02-data"], names
    for position, name in enumerate(names):
        checks = checks_for(name)  # ImportError names the missing module
        assert callable(checks.smoke) and callable(checks.check)
        assert set(checks.NEEDS) <= set(names[:position]), f"{name} needs {checks.NEEDS}"
        for variant, run in getattr(checks, "VARIANTS", {}).items():
            assert set(run.needs) <= set(names[: position + 1]), f"{name}/{variant} needs {run.needs}"


# Both from MLflow's dataset code (schema inference, digest), not ours.
@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
@pytest.mark.filterwarnings("ignore:Starting with pandas version 4.0")
@pytest.mark.parametrize("name", RUNS)
def test_template_runs_and_logs_to_mlflow(name, lifecycle, report_figure):
    execution = lifecycle.run(name)
    # The smoke size's budget is a design target for a quiet 2-core machine, reported here and
    # not asserted: under CI's load the same run can take twice as long.
    over = "  OVER BUDGET" if execution.seconds > SMOKE_BUDGET_S else ""
    figure = f"{execution.seconds:.1f} s (budget {SMOKE_BUDGET_S} s){over}"
    report_figure(f"template {execution.name}, smoke run", figure)


@pytest.mark.parametrize("path", TEMPLATES, ids=template_id)
def test_template_stops_with_a_clear_message_without_mlflow(path, kernel_env, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    name = template_id(path)
    # Upstream executions are not needed: the template must stop before it looks for them.
    parameters = {**checks_for(name).smoke({}), "experiment_name": "never-created"}
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(path, tmp_path, parameters)
    assert failure.value.ename == "RuntimeError"
    assert "MLFLOW_TRACKING_URI is not set" in failure.value.evalue
    # It stopped before MLflow could fall back to a local store (./mlruns, ./mlflow.db) in the working folder.
    assert [p.name for p in tmp_path.iterdir()] == [f"executed-{path.name}"]


def test_first_hour_tells_clients_what_the_site_file_says_and_shows_failed_checks(
    kernel_env, mlflow_server, monkeypatch, tmp_path
):
    """The centre's details go from the site file through the spawner (WERKBANK_CENTRE) to the first-hour
    template, which shows them; a failed check is shown and recorded, and the template still finishes."""
    from werkbank_spawner.site import validate
    from werkbank_spawner.spawner import WerkbankLocalSpawner

    project, workdir = tmp_path / "project", tmp_path / "run"
    project.mkdir()
    workdir.mkdir()
    # A path may name variables; the session expands them.
    monkeypatch.setenv("FIRST_HOUR_PROJECT", str(project))
    centre = {
        "name": "Test Factory",
        "help": "ai-support@example.eu",
        "help_url": "https://support.example.eu/ai",
        "data_protection": "Only pseudonymised data, under agreement DPA-7.",
        "storage": {
            "project": {"path": "$FIRST_HOUR_PROJECT", "quota": "5 TB per project"},
            "scratch": {"path": str(tmp_path / "no-scratch-here")},
        },
    }
    site = validate(
        {
            "profiles": [{"name": "cpu", "partition": "cpu"}],
            "limits": {"default": {"partitions": ["cpu"]}},
            "centre": centre,
        }
    )
    for name, value in WerkbankLocalSpawner(centre=site.centre.model_dump(mode="json")).session_env().items():
        monkeypatch.setenv(name, value)
    path = next(p for p in TEMPLATES if template_id(p) == "00-first-hour")
    experiment_name = f"test-first-hour-centre-{uuid.uuid4().hex[:8]}"
    # More free space than any disk has: every free-space check fails.
    execute(path, workdir, {"experiment_name": experiment_name, "run_name": "centre", "min_free_gb": 1e9})

    [run] = runs_in(MlflowClient(mlflow_server.url), experiment_name)
    params, metrics = run.data.params, run.data.metrics
    assert (params["centre"], params["centre_source"]) == ("Test Factory", "the site file")
    assert params["storage.project.path"] == str(project)
    assert metrics["check.storage.project.writable"] == metrics["check.storage.home.writable"] == 1.0
    assert metrics["check.storage.project.free_space"] == metrics["check.storage.home.free_space"] == 0.0
    assert "storage.scratch.path" not in params and "check.storage.scratch.writable" not in metrics
    failed = run.data.tags["werkbank.checks_failed"].split(", ")
    assert {"storage.home.free_space", "storage.project.free_space", "in_slurm_job"} <= set(failed)
    # What the client reads: the centre's words, in the outputs (the dashboard hides the code).
    executed = json.loads((workdir / f"executed-{path.name}").read_text())
    shown = " ".join(
        "".join(output.get("data", {}).get("text/html", output.get("text", "")))
        for cell in executed["cells"]
        for output in cell.get("outputs", [])
    )
    expected = [
        "Welcome to Test Factory",
        "ai-support@example.eu",
        "https://support.example.eu/ai",
        "DPA-7",
        "5 TB per project",
        f"{tmp_path / 'no-scratch-here'} does not exist",
        "&nbsp;fail",
    ]
    assert [text for text in expected if text not in shown] == []
