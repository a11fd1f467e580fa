"""14-synthetic-data: a Gaussian copula, a VAE and a copy generator fitted to 02's wine training split.

Checked from outside, from what MLflow holds: a parent run and a child run per generator, all tagged with
the SHA-256 of 02's three files; the fidelity and privacy measurements (KS, median DCR, membership-inference
AUC with scikit-learn's ROC AUC) and the utility (a random forest trained again on each generator's logged
rows, scored on 02's test file) recomputed here; the declared claims hold for the copula and the VAE and
the copy generator is caught; the scorecard holds the child runs' numbers. Then the same notebook on
simulated driving traces (``data_source="traces"``): its data is what the logged recipe simulates again.
"""

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from tests.notebooks.lifecycle import Execution, execute, parent_and_children, runs_in

NEEDS: tuple[str, ...] = ("02-data",)
TEMPLATE = "14-synthetic-data"
GENERATORS = {"copula", "vae", "copy"}
GOOD = ("copula", "vae")  # held to the claims; "copy" must be caught
SPLITS = {"training": "train.csv", "validation": "validation.csv", "testing": "test.csv"}


def smoke(upstream: dict[str, Execution]) -> dict:
    data = upstream.get("02-data")
    return {"size": "smoke", "data_experiment": data.experiment_name if data else "never-created"}


def generator_runs(client, experiment_name: str):
    """The parent run and one child run per generator."""
    parent, children = parent_and_children(client, experiment_name, TEMPLATE)
    assert set(children) == GENERATORS, sorted(children)
    return parent, children


def download(client, run_id: str, path: str, folder: Path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, path, tempfile.mkdtemp(dir=folder)))


def check(execution: Execution) -> None:
    client = execution.client
    parent, children = generator_runs(client, execution.experiment_name)
    params = parent.data.params
    assert (params["size"], params["data_source"]) == ("smoke", "table"), params

    # The data: 02's wine run, the same bytes in every run (the SHA-256 tags 02 logged).
    [data_run] = [
        run
        for run in runs_in(client, execution.upstream["02-data"].experiment_name)
        if run.data.tags.get("werkbank.dataset") == "wine"
    ]
    assert params["data_run_id"] == data_run.info.run_id
    for run in (parent, *children.values()):
        for context in SPLITS:
            key = f"werkbank.sha256.{context}"
            assert run.data.tags[key] == data_run.data.tags[key], (run.info.run_name, key)

    with tempfile.TemporaryDirectory() as scratch:  # outside the working directory
        folder = Path(scratch)
        real = {c: download(client, data_run.info.run_id, f"data/{f}", folder) for c, f in SPLITS.items()}
        synthetic = {
            name: download(client, run.info.run_id, "synthetic.csv", folder) for name, run in children.items()
        }
        scorecard = download(client, parent.info.run_id, "scorecard.csv", folder).set_index("generator")
    features = params["features"].split(",")
    assert features == [c for c in real["training"].columns if c != "target"], features

    for name, rows in synthetic.items():
        assert list(rows.columns) == [*features, "target"], (name, list(rows.columns))
        assert len(rows) == int(params["synthetic_rows"]) == len(real["training"]), (name, len(rows))
        assert set(rows["target"]) <= set(real["training"]["target"]), name
        assert_measurements_follow_from_rows(children[name], rows, real, features, params)
    assert_claims(parent, children)
    for name, run in children.items():
        for key in ("ks_mean", "corr_diff_mean", "utility_ratio", "dcr_ratio_median", "mia_auc"):
            assert scorecard.loc[name, key] == pytest.approx(run.data.metrics[key], rel=1e-9), (name, key)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"scorecard.csv", "scorecard.md", "dcr.png", "vae_losses.png"} <= artifacts, artifacts

    check_traces(execution)


def assert_measurements_follow_from_rows(run, rows: pd.DataFrame, real: dict, features, params) -> None:
    """The generator's logged fidelity, privacy and utility, measured again on its logged rows."""
    metrics = run.data.metrics
    name = run.info.run_name
    train, holdout, test = real["training"], real["validation"], real["testing"]
    ks = np.mean([stats.ks_2samp(rows[c], train[c]).statistic for c in features])
    assert metrics["ks_mean"] == pytest.approx(ks, abs=1e-12), (name, metrics["ks_mean"], ks)

    scaler = StandardScaler().fit(train[features])
    train_scaled = scaler.transform(train[features])
    dcr = np.median(cdist(scaler.transform(rows[features]), train_scaled).min(axis=1))
    holdout_dcr = np.median(cdist(scaler.transform(holdout[features]), train_scaled).min(axis=1))
    assert metrics["dcr_median"] == pytest.approx(dcr, rel=1e-9), (name, metrics["dcr_median"], dcr)
    assert metrics["dcr_ratio_median"] == pytest.approx(dcr / holdout_dcr, rel=1e-9), name

    # The attacker: training rows (members) against holdout rows, scored by -distance to the nearest
    # synthetic row in the synthetic rows' scaling; scikit-learn's ROC AUC, not the notebook's ranks.
    attacker = StandardScaler().fit(rows[features])
    synthetic_scaled = attacker.transform(rows[features])
    scores = [
        -cdist(attacker.transform(part[features]), synthetic_scaled).min(axis=1) for part in (train, holdout)
    ]
    auc = roc_auc_score(np.r_[np.ones(len(train)), np.zeros(len(holdout))], np.concatenate(scores))
    assert metrics["mia_auc"] == pytest.approx(auc, abs=1e-12), (name, metrics["mia_auc"], auc)
    assert metrics["mia_auc_ci_low"] <= metrics["mia_auc"] <= metrics["mia_auc_ci_high"], name

    # Utility: the same forest trained on the logged rows and on 02's training file, scored on 02's test file.
    def forest(frame: pd.DataFrame) -> RandomForestClassifier:
        return RandomForestClassifier(
            n_estimators=int(params["classifier_trees"]),
            class_weight="balanced",
            random_state=int(params["seed"]),
            n_jobs=1,
        ).fit(frame[features], frame["target"])

    tstr = balanced_accuracy_score(test["target"], forest(rows).predict(test[features]))
    trtr = balanced_accuracy_score(test["target"], forest(train).predict(test[features]))
    assert metrics["tstr_balanced_accuracy"] == pytest.approx(tstr, abs=1e-12), (name, tstr)
    assert metrics["trtr_balanced_accuracy"] == pytest.approx(trtr, abs=1e-12), (name, trtr)
    assert metrics["utility_ratio"] == pytest.approx(tstr / trtr, rel=1e-9), name
    assert metrics["utility_ratio_ci_low"] <= metrics["utility_ratio_ci_high"], name


def assert_claims(parent, children) -> None:
    """The declared thresholds (the parent's parameters) hold for the copula and the VAE, and the copy
    generator fails the no-copying criterion and the membership-inference bound."""
    params = parent.data.params
    for name in GOOD:
        metrics = children[name].data.metrics
        assert metrics["utility_ratio"] >= float(params["min_utility_ratio"]), (
            name,
            metrics["utility_ratio"],
        )
        assert metrics["dcr_ratio_median"] >= float(params["min_dcr_ratio"]), (
            name,
            metrics["dcr_ratio_median"],
        )
        assert metrics["mia_auc"] <= float(params["max_mia_auc"]), (name, metrics["mia_auc"])
        assert metrics["ks_mean"] <= float(params["max_mean_ks"]), (name, metrics["ks_mean"])
        assert metrics["corr_diff_mean"] <= float(params["max_mean_corr_diff"]), (
            name,
            metrics["corr_diff_mean"],
        )
        assert children[name].data.tags["werkbank.verdict.no_copying"] == "True", name
    copied = children["copy"].data
    assert copied.metrics["dcr_ratio_median"] < float(params["min_dcr_ratio"]), copied.metrics[
        "dcr_ratio_median"
    ]
    assert copied.metrics["mia_auc"] > float(params["max_mia_auc"]), copied.metrics["mia_auc"]
    assert copied.tags["werkbank.verdict.no_copying"] == "False"


def check_traces(execution: Execution) -> None:
    """The same notebook on simulated traces: its three parts are what the logged recipe simulates again
    here (the SHA-256 of each part's Parquet bytes), and the same claims hold."""
    from werkbank_lab import traffic

    experiment_name = f"{execution.experiment_name}-traces"
    parameters = {"size": "smoke", "data_source": "traces", "experiment_name": experiment_name}
    workdir = execution.workdir / "traces"
    workdir.mkdir()
    seconds = execute(execution.path, workdir, parameters)
    print(f"{TEMPLATE} on traces: smoke run {seconds:.1f} s")
    parent, children = generator_runs(execution.client, experiment_name)
    params = parent.data.params
    assert params["data_source"] == "traces" and "data_run_id" not in params, params
    recipe = traffic.Recipe.from_params(
        {key.removeprefix("recipe."): value for key, value in params.items() if key.startswith("recipe.")}
    )
    simulated = recipe.build()
    sha256 = simulated.sha256()
    for run in (parent, *children.values()):
        for context in SPLITS:
            assert run.data.tags[f"werkbank.sha256.{context}"] == sha256[context], (
                run.info.run_name,
                context,
            )
    # Split by run: no scenario run in two parts.
    parts = simulated.scenarios.groupby("part")["run_id"].apply(set)
    assert not (parts["training"] & parts["validation"]) and not (parts["training"] & parts["testing"])
    assert not (parts["validation"] & parts["testing"])
    assert params["features"] == "gap,ego_speed,rel_speed,ego_accel,lead_accel", params["features"]
    assert_claims(parent, children)
    assert math.isfinite(children["vae"].data.metrics["vae_val_loss"])
