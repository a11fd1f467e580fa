"""15-scenario-validation: a parent run with the catalogue, criteria, heatmap, regression set and report,
and a child run per agent (the rule-based baseline, the learned policy, always-accelerate).

Checked from outside, in the test's own process: the catalogue is rebuilt from the logged YAML and driven
again by the rule-based agents with the logged seed, noise and duration, and their metrics are the logged
ones; the verdicts follow from those metrics and the logged criteria (judged here, written independently);
the baseline passes every catalogue scenario, always-accelerate fails and its search found a failure; the
logged regression set, run again here, reproduces every failure of a rule-based agent."""

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.notebooks.lifecycle import Execution, parent_and_children
from werkbank_lab import traffic

NEEDS: tuple[str, ...] = ()
TEMPLATE = "15-scenario-validation"
METRICS = ("collision", "impact_speed", "min_gap", "min_ttc", "min_thw", "peak_decel", "max_jerk")


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke"}


def check(execution: Execution) -> None:
    client = execution.client
    parent, children = parent_and_children(client, execution.experiment_name, TEMPLATE)
    params = parent.data.params
    baseline = f"baseline-{params['baseline']}"
    assert set(children) == {baseline, "learned-mlp", "always-accelerate"}, sorted(children)
    assert params["size"] == "smoke"
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"catalogue.yaml", "regression_set.yaml", "report.md", "coverage.png", "search.png"} <= artifacts

    folder = execution.workdir / "check-downloads"
    folder.mkdir()
    policies = {
        baseline: {"acc": traffic.ACC, "idm": traffic.IDM}[params["baseline"]](),
        "always-accelerate": traffic.Constant(float(params["bad_accel"])),
    }
    noise = traffic.NoiseModel.radar(float(params["noise_level"]))
    entries = yaml.safe_load(text_of(client, parent.info.run_id, "catalogue.yaml", folder))
    catalogue = [
        traffic.Scenario(
            e["type"], e.get("params") or {}, index=i, seed=int(params["seed"]), noise=noise,
            duration=float(params["duration"]), name=str(e["name"]),
        )
        for i, e in enumerate(entries)
    ]  # fmt: skip
    assert len(catalogue) == int(params["catalogue_scenarios"])

    # The rule-based agents' catalogue results are what the simulator gives here, and the verdicts follow.
    for name, policy in policies.items():
        logged = table_of(client, children[name].info.run_id, "catalogue_results.csv", folder / name)
        assert list(logged.index) == [s.run_id for s in catalogue], name
        again = traffic.run_metrics(traffic.simulate(catalogue, policy))
        assert_same_metrics(logged, again, f"{name} on the catalogue")
        assert (logged["passed"] == passes(again, params)).all(), name
    assert passes(traffic.run_metrics(traffic.simulate(catalogue, policies[baseline])), params).all(), (
        f"{baseline} fails a declared criterion on the catalogue"
    )
    assert not passes(
        traffic.run_metrics(traffic.simulate(catalogue, policies["always-accelerate"])), params
    ).all(), "always-accelerate passes every catalogue scenario"

    # Every agent's summary metrics are its logged tables'.
    for name, child in children.items():
        table = table_of(client, child.info.run_id, "catalogue_results.csv", folder / f"{name}-summary")
        trials = table_of(client, child.info.run_id, "search_trials.csv", folder / f"{name}-summary")
        metrics = child.data.metrics
        assert metrics["catalogue_failed"] == (~table["passed"]).sum(), name
        assert metrics["search_trials"] == len(trials) == int(params["search_trials"]), name
        assert metrics["search_failures"] == (~trials["passed"]).sum(), name
        assert math.isclose(metrics["search_min_margin"], trials["margin"].min(), rel_tol=1e-9), name
    assert children["always-accelerate"].data.metrics["search_failures"] > 0, "no failure found for it"

    # The regression set reproduces, here: each failure of a rule-based agent, run again, fails again with
    # the same metrics.
    regression = yaml.safe_load(text_of(client, parent.info.run_id, "regression_set.yaml", folder))
    assert any(e["source"] == "search" and "always-accelerate" in e["failed_by"] for e in regression)
    checked = 0
    for name, policy in policies.items():
        kept = [e for e in regression if name in e["failed_by"]]
        if not kept:
            continue
        scenarios = [
            traffic.Scenario(
                e["type"], e["params"], index=e["index"], seed=e["seed"],
                noise=traffic.NoiseModel.radar(e["noise_level"]), duration=e["duration"], name=e["name"],
            )
            for e in kept
        ]  # fmt: skip
        again = traffic.run_metrics(traffic.simulate(scenarios, policy))
        recorded = pd.DataFrame([e["failed_by"][name] for e in kept], index=[e["name"] for e in kept])
        assert_same_metrics(recorded, again, f"{name} on the regression set")
        assert not passes(again, params).any(), f"{name}: a kept failure passes when run again"
        checked += len(kept)
    assert checked > 0


def text_of(client, run_id: str, path: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(folder))).read_text()


def table_of(client, run_id: str, path: str, folder: Path) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text_of(client, run_id, path, folder)), index_col=0)


def passes(metrics: pd.DataFrame, params: dict) -> pd.Series:
    """The declared criteria, applied here (not the notebook's code): every one must hold."""
    time_gap_ok = (metrics["kind"] == "cut_in") | (
        metrics["min_thw"] >= float(params["criterion.min_time_gap"])
    )
    return (
        ~metrics["collision"].astype(bool)
        & (metrics["min_ttc"] >= float(params["criterion.min_ttc"]))
        & time_gap_ok
        & (metrics["peak_decel"] <= float(params["criterion.max_decel"]))
        & (metrics["max_jerk"] <= float(params["criterion.max_jerk"]))
    )


def assert_same_metrics(logged: pd.DataFrame, again: pd.DataFrame, where: str) -> None:
    for column in METRICS:
        got, expected = logged[column].to_numpy(float), again.loc[logged.index, column].to_numpy(float)
        assert np.allclose(got, expected, rtol=1e-12, atol=0, equal_nan=True), (where, column, got, expected)
