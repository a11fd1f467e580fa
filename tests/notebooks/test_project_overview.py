"""The project-overview dashboard (template 08) fails closed for a viewer whose permissions it cannot check.

A shared dashboard runs as its owner; for a viewer (``WERKBANK_DASHBOARD_VIEWER``) it shows only experiments
the hub's MLflow service says the viewer may read. The test MLflow server has no such service (no gateway),
so the question fails: the page must then show nothing of the runs, the champion or its data that it shows
its owner. The service's real answers are tested against the gateway in ``tests/integration``.
"""

from __future__ import annotations

import uuid

import pytest

from tests.notebooks.checks.t08_project_overview import executed_outputs, output_kinds
from tests.notebooks.lifecycle import execute, runs_in

VIEWER = "mallory"


# From MLflow's dataset code in the upstream templates' checks (schema inference, digest), not ours.
@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
@pytest.mark.filterwarnings("ignore:Starting with pandas version 4.0")
def test_a_viewer_whose_permissions_cannot_be_checked_sees_nothing(lifecycle, monkeypatch, tmp_path):
    # The owner's view first (the lifecycle's run, checked in checks/t08_project_overview.py): it shows the
    # training runs and the champion, so their absence below is the viewer's doing, not an empty project.
    owner = lifecycle.run("08-project-overview")
    client = owner.client
    champion = client.get_model_version_by_alias(owner.parameters["registered_model_name"], "champion")
    training_runs = runs_in(client, owner.upstream["03-training"].experiment_name)
    secrets = [f"({run.info.run_id[:8]})" for run in training_runs]
    digests = [item.dataset.digest for item in client.get_run(champion.run_id).inputs.dataset_inputs]
    owner_saw = executed_outputs(owner.workdir / f"executed-{owner.path.name}")
    shown_to_owner = [*secrets, *digests, "Trained in run", "Validation report"]
    assert [text for text in shown_to_owner if text not in owner_saw] == [], "the owner's view lacks them"

    monkeypatch.setenv("WERKBANK_DASHBOARD_VIEWER", VIEWER)
    experiment_name = f"test-overview-viewer-{uuid.uuid4().hex[:8]}"
    execute(owner.path, tmp_path, {**owner.parameters, "experiment_name": experiment_name})

    executed = tmp_path / f"executed-{owner.path.name}"
    assert output_kinds(executed) == {"text/html", "text/plain"}, "a printed line or a widget"
    shown = executed_outputs(executed)
    assert "<img " not in shown, "a figure"
    assert f"cannot check what {VIEWER} may read; showing nothing" in shown
    assert [text for text in shown_to_owner if text in shown] == []
    assert owner.upstream["03-training"].experiment_name not in shown
    # Each section after "Whose view" says so, and the page's own checks passed.
    assert shown.count("Nothing to show") >= 4, shown.count("Nothing to show")
    assert "All 7 checks passed" in shown and "Traceback" not in shown

    # The recorded view agrees: the viewer, and nothing shown.
    [view] = runs_in(client, experiment_name)
    assert view.data.tags["werkbank.viewer"] == VIEWER
    assert view.data.tags["werkbank.champion_version"] == "none"
    metrics = view.data.metrics
    assert metrics["experiments_named"] == 2
    for count in ("experiments_shown", "runs_read", "leaderboard_runs", "champion_shown", "lineage_rows"):
        assert metrics[count] == 0, count
