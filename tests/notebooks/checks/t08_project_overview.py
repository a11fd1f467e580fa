"""08-project-overview: a dashboard of 03's and 05's runs, the champion 05 registered and its data.

The smoke run is the owner's view with ``log_view`` on: one run records what the page showed (counts as
metrics, the runs and the lineage in ``view.json``). The check recomputes all of it from the MLflow API: the
leaderboard from the runs 03 logged, the champion from the registry, the lineage from the champion's run.
"""

import json
import tempfile
from pathlib import Path

from tests.notebooks.lifecycle import Execution, inputs_by_context, runs_in, the_run

NEEDS: tuple[str, ...] = ("03-training", "05-validation")
SORT_BY = "val_accuracy"
TOP_N = 2  # 03's smoke check leaves two training runs: the ranking between them is checked


def smoke(upstream: dict[str, Execution]) -> dict:
    training, validation = upstream.get("03-training"), upstream.get("05-validation")
    experiments = [execution.experiment_name for execution in (training, validation) if execution]
    return {
        "size": "smoke",
        "experiment_names": ",".join(experiments) or "never-created",
        "metrics": "val_accuracy,val_loss,final_val_accuracy",
        "sort_by": SORT_BY,
        "descending": True,
        "top_n": TOP_N,
        "curve_runs": 2,
        "registered_model_name": (
            validation.parameters["registered_model_name"] if validation else "never-registered"
        ),
        "log_view": True,
    }


def executed_outputs(path: Path) -> str:
    """What a dashboard viewer reads: the executed notebook's outputs (HTML where there is HTML), joined."""
    executed = json.loads(path.read_text())
    return " ".join(
        "".join(output.get("data", {}).get("text/html", output.get("text", "")))
        for cell in executed["cells"]
        for output in cell.get("outputs", [])
    )


def output_kinds(path: Path) -> set[str]:
    """The kinds of output the executed notebook holds: MIME types of displayed data, ``stream:<name>``."""
    executed = json.loads(path.read_text())
    outputs = [output for cell in executed["cells"] for output in cell.get("outputs", [])]
    kinds = {f"stream:{o['name']}" for o in outputs if o["output_type"] == "stream"}
    return kinds | {kind for o in outputs for kind in o.get("data", {})}


def view_record(client, run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        return json.loads(Path(client.download_artifacts(run_id, "view.json", scratch)).read_text())


def check(execution: Execution) -> None:
    client, parameters = execution.client, execution.parameters
    training, validation = execution.upstream["03-training"], execution.upstream["05-validation"]
    run = the_run(execution)
    tags, metrics = run.data.tags, run.data.metrics
    view = view_record(client, run.info.run_id)
    assert tags["werkbank.viewer"] == "owner" and view["viewer"] == ""

    # Both experiments shown, every run in them read.
    experiments = [client.get_experiment_by_name(e.experiment_name) for e in (training, validation)]
    assert view["experiment_ids"] == [e.experiment_id for e in experiments]
    assert metrics["experiments_named"] == metrics["experiments_shown"] == 2
    runs = [r for e in (training, validation) for r in runs_in(client, e.experiment_name)]
    assert metrics["runs_read"] == len(runs)

    # The leaderboard: 03's runs (05's log no val_accuracy), best first, cut at top_n.
    ranked = sorted(
        (r for r in runs if SORT_BY in r.data.metrics), key=lambda r: r.data.metrics[SORT_BY], reverse=True
    )
    assert len(ranked) == len(runs_in(client, training.experiment_name)) == 2
    assert metrics["runs_ranked"] == len(ranked)
    assert metrics["leaderboard_runs"] == min(parameters["top_n"], len(ranked))
    assert view["leaderboard"] == [r.info.run_id for r in ranked[: parameters["top_n"]]]
    assert metrics["curves"] == min(parameters["curve_runs"], metrics["leaderboard_runs"])

    # The champion is the version 05 registered, with its validation report.
    name = parameters["registered_model_name"]
    champion = client.get_model_version_by_alias(name, "champion")
    [passed] = [
        r for r in runs_in(client, validation.experiment_name) if r.data.tags["werkbank.gate"] == "passed"
    ]
    assert tags["werkbank.champion_version"] == view["champion_version"] == champion.version
    assert champion.version == passed.data.tags["werkbank.model_version"]
    assert view["champion_run_id"] == champion.run_id == passed.data.tags["werkbank.candidate_run_id"]
    assert metrics["champion_shown"] == metrics["report_shown"] == 1.0

    # The lineage: the champion's training run's inputs, with the digests 02's data run recorded.
    inputs = inputs_by_context(client.get_run(champion.run_id))
    data_run = client.get_run(client.get_run(champion.run_id).data.tags["werkbank.data_run_id"])
    assert metrics["lineage_rows"] == len(view["lineage"]) == len(inputs) == 2
    assert {row["context"]: row["digest"] for row in view["lineage"]} == {
        context: data_run.data.tags[f"werkbank.digest.{context}"] for context in inputs
    }
    assert {row["context"]: row["name"] for row in view["lineage"]} == {c: d.name for c, d in inputs.items()}

    # What the page shows: the leaderboard's runs and the champion in HTML, with three figures (the curves
    # and 05's two), each with a text alternative, and nothing else: no printed or logged line, no progress
    # bar (a widget), no traceback.
    executed = execution.workdir / f"executed-{execution.path.name}"
    assert output_kinds(executed) == {"text/html", "text/plain"}, output_kinds(executed)
    shown = executed_outputs(executed)
    assert shown.count("<img ") == shown.count('alt="') == 3, shown.count("<img ")
    for run_id in [*view["leaderboard"], champion.run_id, passed.info.run_id]:
        assert f"({run_id[:8]})" in shown, run_id
    assert "showing all 2 of the 2 experiments named" in shown and "All 7 checks passed" in shown
    assert "Traceback" not in shown and "INFO mlflow" not in shown
