"""12-hyperparameter-search: Optuna over 03's network on 02's validation split, the best tested once.

Checked from outside: the study's journal (an artifact of the search run) and the MLflow runs agree — one
finished child run per trial, the pruned ones marked and shorter; the search beat template 03's
configuration on validation; only the search run has a test metric, and its Wilson interval is recomputed
here. The fan-out to Slurm jobs is tested on the cluster (tests/integration/test_submit.py).
"""

import tempfile

import optuna
from scipy import stats

from tests.notebooks.lifecycle import Execution, parent_and_children

NEEDS: tuple[str, ...] = ("02-data",)
TEMPLATE = "12-hyperparameter-search"


def smoke(upstream: dict[str, Execution]) -> dict:
    data = upstream.get("02-data")
    return {
        "size": "smoke",
        "data_experiment": data.experiment_name if data else "never-created",
        "study_dir": "studies",  # relative: inside the test's working directory
    }


def study_of(client, parent) -> optuna.Study:
    """The study as the search run's artifact holds it (the journal file, read with Optuna)."""
    folder = tempfile.mkdtemp(prefix="t12-")
    name = parent.data.tags.get("werkbank.study") or f"search-{parent.info.run_id}"
    journal = client.download_artifacts(parent.info.run_id, f"study/{name}.journal", folder)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    return optuna.load_study(study_name=name, storage=storage)


def check(execution: Execution) -> None:
    client = execution.client
    parent, by_name = parent_and_children(client, execution.experiment_name, TEMPLATE)
    children = list(by_name.values())

    study = study_of(client, parent)
    params = parent.data.params
    assert len(study.trials) == int(params["trials"]) == 8, len(study.trials)  # the smoke size's
    trial_runs = {
        int(run.data.tags["werkbank.trial"]): run for run in children if "werkbank.trial" in run.data.tags
    }
    [baseline] = [run for run in children if run.data.tags.get("werkbank.trial_state") == "BASELINE"]
    assert sorted(trial_runs) == list(range(len(study.trials)))
    epochs = int(params["epochs"])
    for trial in study.trials:
        run = trial_runs[trial.number]
        assert run.data.tags["werkbank.trial_state"] == trial.state.name
        assert run.data.params["learning_rate"] == str(trial.params["learning_rate"])
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        # The run's curve is the one the pruner saw, epoch by epoch.
        assert {m.step: m.value for m in history} == dict(trial.intermediate_values), trial.number
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert len(history) < epochs, trial.number
        else:
            assert len(history) == epochs and history[-1].value == trial.value, trial.number
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and parent.data.metrics["trials_pruned"] == len(pruned)

    metrics = parent.data.metrics
    assert metrics["best_val_accuracy"] == study.best_value
    assert study.best_value >= metrics["default_val_accuracy"] - float(params["default_margin"])
    assert baseline.data.params["learning_rate"] == params["default.learning_rate"]
    assert (
        client.get_metric_history(baseline.info.run_id, "val_accuracy")[-1].value
        == metrics["default_val_accuracy"]
    )
    for name, value in study.best_params.items():
        assert params[f"best.{name}"] == str(value), name

    # The test: once, in the search run only, with its interval.
    assert metrics["test_evaluations"] == 1
    assert not [run.info.run_name for run in children if "test_accuracy" in run.data.metrics]
    n_test = int(metrics["test_images"])
    correct = round(metrics["test_accuracy"] * n_test)
    low, high = stats.binomtest(correct, n_test).proportion_ci(0.95, method="wilson")
    assert (
        abs(metrics["test_accuracy_low"] - low) < 1e-12 and abs(metrics["test_accuracy_high"] - high) < 1e-12
    )
    assert metrics["test_accuracy"] > 0.8, metrics["test_accuracy"]
    assert parent.data.tags["werkbank.sha256.testing"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"parallel_coordinates.png", "trials.json", "study"} <= artifacts, artifacts
