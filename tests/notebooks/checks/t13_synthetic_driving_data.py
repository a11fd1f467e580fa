"""13-synthetic-driving-data: one run whose data set is made again here, in the test's own process, from the
parameters the run logged, to the same SHA-256 per file; the stored Parquet files are those bytes, their
labels are what their ground-truth columns give, the perceived labels agree with the truth at the declared
rate at every noise level, every scenario type is in every part, and no run is split across parts.

Two smoke runs: the template's (the kinematic simulator) and the variant ``highway``
(``13-synthetic-driving-data/highway``: the scenarios played in highway-env): the same checks, and for
highway-env that its data is not what the kinematic simulator makes of the same recipe."""

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.notebooks.lifecycle import Execution, Variant, digest, inputs_by_context, parent_and_children
from werkbank_lab import highway_scenarios

NEEDS: tuple[str, ...] = ()
TEMPLATE = "13-synthetic-driving-data"
PARTS = ("testing", "validation", "training")
# The smoke size's values (the template's SIZES and HIGHWAY_SIZES): runs per type and seconds per run.
SMOKE = {"kinematic": (25, 15.0), "highway": (5, 10.0)}
VARIANTS = {"highway": Variant({"simulator": "highway"})}  # the smoke size in highway-env


def smoke(upstream: dict[str, Execution]) -> dict:
    # A relative output folder: the files land in the test's working directory, checked below.
    return {"size": "smoke", "output_dir": "driving-data"}


def check(execution: Execution) -> None:
    client, workdir = execution.client, execution.workdir
    # One run (finished, tagged with the template, also for the variant, and the user), no child runs.
    run, children = parent_and_children(client, execution.experiment_name, TEMPLATE)
    assert not children, sorted(children)
    params, tags = run.data.params, run.data.tags
    assert params["size"] == "smoke"
    recipe = highway_scenarios.Recipe.from_params(params)
    assert recipe.simulator == execution.parameters.get("simulator", "kinematic"), params
    assert (recipe.runs_per_kind, recipe.duration) == SMOKE[recipe.simulator], params
    assert [name for name, _ in recipe.parts] == list(PARTS)

    # The same seed gives the same bytes: made again here from the logged parameters alone.
    remade = recipe.build()
    expected = remade.sha256()
    logged = {
        k.removeprefix("werkbank.sha256."): v for k, v in tags.items() if k.startswith("werkbank.sha256.")
    }
    assert logged == expected, (logged, expected)
    if recipe.simulator == "highway":  # highway-env made it: the kinematic simulator makes other data
        kinematic = dataclasses.replace(recipe, simulator="kinematic").build().sha256()
        assert all(kinematic[name] != expected[name] for name in PARTS), "the same data as the kinematic one"

    # The stored files are those bytes, and the files in the output folder too.
    files = {name: f"traces-{name}.parquet" for name in PARTS} | {"scenarios": "scenarios.parquet"}
    stored = {}
    folder = execution.workdir / "check-downloads"
    for name, file_name in files.items():
        local = Path(client.download_artifacts(run.info.run_id, f"data/{file_name}", str(folder)))
        content = local.read_bytes()
        assert hashlib.sha256(content).hexdigest() == logged[name], name
        stored[name] = pd.read_parquet(io.BytesIO(content))
    written = Path(params["folder"])
    assert written.is_relative_to((workdir / "driving-data").resolve()), written
    for name, file_name in files.items():
        assert hashlib.sha256((written / file_name).read_bytes()).hexdigest() == logged[name], name
    # Nothing written in the working directory outside the output folder but papermill's notebook.
    outside = [
        p
        for p in workdir.rglob("*")
        if p.is_file()
        and not p.name.startswith("executed-")
        and not p.is_relative_to(folder)
        and not p.resolve().is_relative_to(written)
    ]
    assert not outside, outside

    assert_labels_follow_from_the_ground_truth(stored, recipe)
    assert_perceived_labels_agree(stored, float(params["min_kappa"]))
    assert_parts_hold_whole_runs_of_every_type(stored, recipe)

    # One dataset input per part, with the digest of the stored frame (MLflow's, from a preview).
    inputs = inputs_by_context(run)
    assert set(inputs) == set(PARTS), sorted(inputs)
    for name, dataset in inputs.items():
        assert dataset.digest == digest(stored[name]) == tags[f"werkbank.digest.{name}"], name
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"data", "figures", "scenarios.json", "label_agreement.json", "label_sweep.json"} <= artifacts
    figures = {item.path for item in client.list_artifacts(run.info.run_id, "figures")}
    assert ("figures/highway_env_road.png" in figures) == (recipe.simulator == "highway"), figures
    # The scenario table the MLflow UI shows (mlflow.log_table's JSON: columns and rows) lists every run.
    shown = json.loads(
        Path(client.download_artifacts(run.info.run_id, "scenarios.json", str(folder))).read_text()
    )
    table = pd.DataFrame(shown["data"], columns=shown["columns"])
    assert table["run_id"].tolist() == stored["scenarios"]["run_id"].tolist()


def assert_labels_follow_from_the_ground_truth(stored: dict, recipe: highway_scenarios.Recipe) -> None:
    """TTC, time gap, critical and critical_ahead, computed here from the truth columns of each file."""
    for name in PARTS:
        frame = stored[name]
        closing = frame["lead_present"] & (frame["rel_speed"] < 0)
        ttc = np.where(closing, frame["gap"] / -frame["rel_speed"], np.inf)
        moving = frame["lead_present"] & (frame["ego_speed"] > 0)
        thw = np.where(moving, frame["gap"].clip(lower=0) / frame["ego_speed"], np.inf)
        np.testing.assert_allclose(frame["ttc"], ttc, rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(frame["thw"], thw, rtol=1e-12, err_msg=name)
        critical = (ttc < recipe.ttc_critical) | (thw < recipe.thw_critical)
        assert (frame["critical"].to_numpy() == critical).all(), name
        window = round(recipe.horizon / recipe.dt)
        for run_id, steps in frame.groupby("run_id", sort=False):
            flags = steps["critical"].to_numpy()
            ahead = [flags[i + 1 : i + 1 + window].any() for i in range(len(flags))]
            assert steps["critical_ahead"].tolist() == ahead, (name, run_id)
            assert steps["step"].tolist() == list(range(len(steps))), (name, run_id)


def assert_perceived_labels_agree(stored: dict, min_kappa: float) -> None:
    """Cohen's kappa of critical_perceived against critical, per noise level, at least min_kappa."""
    steps = pd.concat(stored[name] for name in PARTS).merge(stored["scenarios"][["run_id", "noise_level"]])
    for level, group in steps.groupby("noise_level"):
        truth, seen = group["critical"].to_numpy(bool), group["critical_perceived"].to_numpy(bool)
        observed = (truth == seen).mean()
        chance = truth.mean() * seen.mean() + (1 - truth.mean()) * (1 - seen.mean())
        kappa = (observed - chance) / (1 - chance) if chance < 1 else 1.0
        assert kappa >= min_kappa, (level, kappa)
        if level == 0:  # a perfect sensor: the perceived labels are the true ones
            assert (truth == seen).all()


def assert_parts_hold_whole_runs_of_every_type(stored: dict, recipe: highway_scenarios.Recipe) -> None:
    table = stored["scenarios"]
    assert table["kind"].value_counts().to_dict() == dict.fromkeys(recipe.kinds, recipe.runs_per_kind)
    runs = {name: set(stored[name]["run_id"]) for name in PARTS}
    for one, other in (("training", "validation"), ("training", "testing"), ("validation", "testing")):
        assert not runs[one] & runs[other], (one, other, sorted(runs[one] & runs[other])[:3])
    for name in PARTS:
        assert runs[name] == set(table.loc[table["part"] == name, "run_id"]), name
        assert set(stored[name]["kind"]) == set(recipe.kinds), name
