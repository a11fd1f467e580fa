"""werkbank_lab.traffic: the IDM against hand-computed values, determinism (seeds, order, batches),
collisions (an "always accelerate" agent behind a braking lead collides, IDM does not), the sensor model
(noise off: measured is true; more noise: less agreement) and the labels against the ground truth."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest

from werkbank_lab import traffic


def observation(**values) -> traffic.Observation:
    """One run's observation; the lead's fields default to "no lead"."""
    fields = {
        "ego_speed": 20.0,
        "ego_accel": 0.0,
        "set_speed": 30.0,
        "lead_present": False,
        "gap": math.nan,
        "rel_speed": math.nan,
        "lead_accel": math.nan,
        "age": 0.0,
    } | values
    return traffic.Observation(0, 0.0, 0.1, **{k: np.array([v]) for k, v in fields.items()})


# --- the IDM ----------------------------------------------------------------------------------


def test_idm_on_a_free_road_is_its_free_term():
    # 1.5 * (1 - (20/30)^4) = 1.5 * (1 - 16/81) = 1.5 * 65/81
    assert traffic.IDM()(observation())[0] == pytest.approx(1.5 * 65 / 81, rel=1e-12)
    # At the set speed it neither accelerates nor brakes.
    assert traffic.IDM()(observation(ego_speed=30.0))[0] == pytest.approx(0.0, abs=1e-12)


def test_idm_closing_in_on_a_lead_by_hand():
    # v = 20, v0 = 30, s = 30 m, closing at 5 m/s, a = 1.5, b = 2, T = 1.5, s0 = 2:
    # s* = 2 + 20 * 1.5 + 20 * 5 / (2 * sqrt(3)) = 32 + 28.867513459481287 = 60.867513459481287
    # a  = 1.5 * (1 - 16/81 - (60.867513459481287 / 30)^2) = 1.5 * (1 - 0.1975309 - 4.1165036) = -4.971053
    obs = observation(lead_present=True, gap=30.0, rel_speed=-5.0, lead_accel=0.0)
    s_star = 2 + 20 * 1.5 + 20 * 5 / (2 * math.sqrt(3))
    assert s_star == pytest.approx(60.867513459481287)
    assert traffic.IDM()(obs)[0] == pytest.approx(1.5 * (1 - 16 / 81 - (s_star / 30) ** 2), rel=1e-12)
    assert traffic.IDM()(obs)[0] == pytest.approx(-4.971053, abs=1e-6)


def test_idm_standing_behind_a_far_lead_and_in_equilibrium():
    # Standing, a lead 100 m ahead: s* = s0 = 2, a = 1.5 * (1 - 0 - (2/100)^2) = 1.4994.
    far = observation(ego_speed=0.0, lead_present=True, gap=100.0, rel_speed=0.0, lead_accel=0.0)
    assert traffic.IDM()(far)[0] == pytest.approx(1.4994, rel=1e-12)
    # Following at the same speed with the gap s* = s0 + v T = 2 + 20 * 1.5 = 32 m: only the free term
    # is missing from the interaction term's 1, so a = -1.5 * (20/30)^4.
    steady = observation(lead_present=True, gap=32.0, rel_speed=0.0, lead_accel=0.0)
    assert traffic.IDM()(steady)[0] == pytest.approx(-1.5 * 16 / 81, rel=1e-12)


def test_acc_brakes_less_than_idm_at_a_cut_in_that_is_not_slower():
    # A vehicle cut in 10 m ahead at the ego's speed: IDM brakes hard for the small gap, the ACC hardly.
    obs = observation(lead_present=True, gap=10.0, rel_speed=0.0, lead_accel=0.0)
    idm, acc = traffic.IDM()(obs)[0], traffic.ACC()(obs)[0]
    assert idm < -5 and acc > -2.5 and acc < 0, (idm, acc)
    # Closing in on a stationary lead, it brakes at least as hard as needed to stop in time (v²/2s).
    stopped = observation(lead_present=True, gap=40.0, rel_speed=-20.0, lead_accel=0.0)
    assert traffic.ACC()(stopped)[0] <= -(20.0**2) / (2 * 40.0)


# --- scenarios and determinism ---------------------------------------------------------------


def mixed(seed: int = 3, level: float = 1.0, n: int = 6) -> list[traffic.Scenario]:
    noise = traffic.NoiseModel.radar(level)
    return [s for kind in traffic.KINDS for s in traffic.draw(kind, n, seed=seed, noise=noise, duration=8.0)]


def test_the_same_seed_gives_identical_traces_and_another_seed_other_traces():
    first, again = traffic.simulate(mixed()), traffic.simulate(mixed())
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    other = traffic.simulate(mixed(seed=4))
    assert not np.array_equal(first["ego_speed"].to_numpy()[:50], other["ego_speed"].to_numpy()[:50])
    # The same parameters with another seed: the same truth at the start, other sensor noise.
    base = traffic.Scenario("car_following", noise=traffic.NoiseModel.radar(1.0), seed=1)
    one, two = traffic.simulate([base]), traffic.simulate([dataclasses.replace(base, seed=2)])
    assert one["gap"].iloc[0] == two["gap"].iloc[0]
    assert not np.array_equal(one["meas_gap"].to_numpy(), two["meas_gap"].to_numpy())


def test_runs_do_not_depend_on_their_order_or_batch():
    scenarios = mixed()
    together = traffic.simulate(scenarios)
    shuffled = [scenarios[i] for i in np.random.default_rng(0).permutation(len(scenarios))]
    reordered = traffic.simulate(shuffled)
    order = {s.run_id: i for i, s in enumerate(scenarios)}
    back = reordered.sort_values(["run_id", "step"], key=lambda c: c.map(order) if c.name == "run_id" else c)
    pd.testing.assert_frame_equal(together, back.reset_index(drop=True), check_exact=True)
    # A run alone (another batch size, other vehicle counts beside it) is the same run.
    alone = traffic.simulate([scenarios[7]])
    part = together[together["run_id"] == scenarios[7].run_id].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, part, check_exact=True)


def test_draws_are_per_index_and_stay_in_their_ranges():
    few, more = traffic.draw("hard_braking", 3, seed=9), traffic.draw("hard_braking", 10, seed=9)
    assert [s.params for s in few] == [s.params for s in more[:3]]
    spec = traffic.CATALOGUE["hard_braking"].params
    for s in more:
        assert all(spec[n].low <= v <= spec[n].high for n, v in s.params.items()), s.params
    fixed = traffic.draw("hard_braking", 3, seed=9, fixed={"brake_decel": 8.0})
    assert [s.params["brake_decel"] for s in fixed] == [8.0] * 3
    assert [s.params["gap" if "gap" in spec else "time_gap"] for s in fixed] == [
        s.params["time_gap"] for s in few
    ]


def test_scenario_parameters_are_checked_and_completed():
    with pytest.raises(KeyError, match="brake_decel"):
        traffic.Scenario("cut_in", {"brake_decel": 3.0})
    with pytest.raises(KeyError, match="unknown scenario type"):
        traffic.Scenario("overtaking")
    assert traffic.Scenario("cut_in").params == traffic.CATALOGUE["cut_in"].defaults()
    grid = traffic.grid("hard_braking", {"brake_decel": [2.0, 6.0], "time_gap": [1.0, 2.0, 3.0]})
    assert len(grid) == 6 and len({s.run_id for s in grid}) == 6
    with pytest.raises(ValueError, match="unique"):
        traffic.simulate([traffic.Scenario("cut_in"), traffic.Scenario("cut_in")])


# --- collisions and metrics -----------------------------------------------------------------


def test_always_accelerate_collides_with_a_braking_lead_and_idm_does_not():
    braking = traffic.Scenario(
        "hard_braking",
        {"ego_speed": 25.0, "set_speed": 25.0, "rel_speed": 0.0, "time_gap": 1.2, "brake_decel": 8.0},
    )
    idm = traffic.run_metrics(traffic.simulate([braking])).iloc[0]
    reckless = traffic.simulate([braking], traffic.Constant(2.0))
    agent = traffic.run_metrics(reckless).iloc[0]
    assert not idm["collision"] and idm["min_gap"] > 0 and idm["peak_decel"] > 4, idm
    assert agent["collision"] and agent["impact_speed"] > 5 and agent["peak_decel"] == 0, agent
    # The run ends with the step of the collision: its last row, and only that one, says so.
    assert reckless["collision"].tolist() == [False] * (len(reckless) - 1) + [True]
    assert reckless["gap"].iloc[-1] <= 0 < reckless["gap"].iloc[-2]


def test_the_ncap_style_matrix_separates_idm_from_the_reckless_agent():
    tests = traffic.ncap_style()
    assert len(tests) == 12 and len({s.run_id for s in tests}) == 12
    assert not traffic.run_metrics(traffic.simulate(tests))["collision"].any()
    assert traffic.run_metrics(traffic.simulate(tests, traffic.Constant(2.0)))["collision"].all()


def test_metrics_by_hand_on_a_small_trace():
    traces = pd.DataFrame(
        {
            "run_id": ["a"] * 4 + ["b"] * 2,
            "kind": ["cut_in"] * 6,
            "t": [0.0, 0.1, 0.2, 0.3, 0.0, 0.1],
            "gap": [20.0, 15.0, 12.0, 11.0, math.nan, 3.0],
            "rel_speed": [-5.0, -4.0, -2.0, 1.0, math.nan, -2.0],
            "ttc": [4.0, 3.75, 6.0, math.inf, math.inf, 1.5],
            "thw": [1.0, 0.8, 0.7, 0.7, math.inf, 0.2],
            "ego_accel": [0.0, -2.0, -5.0, -4.0, 1.0, 1.0],
            "collision": [False] * 5 + [True],
            "critical": [False, False, True, True, False, True],
        }
    )
    m = traffic.run_metrics(traces)
    assert list(m.index) == ["a", "b"]
    assert m.loc["a", "peak_decel"] == 5.0 and m.loc["b", "peak_decel"] == 0.0
    assert m.loc["a", "max_jerk"] == pytest.approx(30.0)  # from -2 to -5 in 0.1 s
    assert (m.loc["a", "min_ttc"], m.loc["a", "min_thw"], m.loc["a", "min_gap"]) == (3.75, 0.7, 11.0)
    assert not m.loc["a", "collision"] and m.loc["a", "impact_speed"] == 0.0
    assert m.loc["b", "collision"] and m.loc["b", "impact_speed"] == 2.0
    assert m.loc["a", "critical_share"] == 0.5


# --- sensors and labels ----------------------------------------------------------------------


def test_without_noise_the_ego_measures_the_truth():
    traces = traffic.simulate(mixed(level=0.0))
    assert traces["meas_valid"].all() and (traces["meas_age"] == 0).all()
    assert traces["meas_lead_present"].equals(traces["lead_present"])
    for measured, true in (
        ("meas_gap", "gap"),
        ("meas_rel_speed", "rel_speed"),
        ("meas_lead_accel", "lead_accel"),
    ):
        np.testing.assert_array_equal(traces[measured].to_numpy(), traces[true].to_numpy())
    assert traces["critical_perceived"].equals(traces["critical"])
    assert traffic.label_agreement(traces).loc["all", "kappa"] == 1.0


def test_noise_bias_and_dropouts_are_what_the_model_says():
    scenario = traffic.Scenario(
        "car_following",
        noise=traffic.NoiseModel(range_sd=0.5, range_bias=1.0, dropout_rate=0.05, dropout_steps=4),
        duration=400.0,
    )
    traces = traffic.simulate([scenario])
    valid = traces[traces["meas_valid"]]
    error = valid["meas_gap"] - valid["gap"]
    assert error.mean() == pytest.approx(1.0, abs=0.05) and error.std() == pytest.approx(0.5, rel=0.1)
    # Dropouts start at 5 % of the steps outside one and last 4 steps on average: about 1/6 of the steps.
    dropped = ~traces["meas_valid"].to_numpy()
    assert dropped.mean() == pytest.approx(0.05 * 4 / (1 + 0.05 * 4), rel=0.2)
    starts = np.flatnonzero(dropped[1:] & ~dropped[:-1])
    assert dropped.sum() / len(starts) == pytest.approx(4, rel=0.2)
    # In a dropout the tracker holds the last measurement, and its age grows.
    i = starts[0] + 1
    assert traces["meas_gap"].iloc[i] == traces["meas_gap"].iloc[i - 1]
    assert traces["meas_age"].iloc[i] == pytest.approx(0.1)


def test_labels_agree_with_the_ground_truth_columns():
    traces = traffic.simulate(mixed())
    closing = traces["rel_speed"] < 0
    ttc = np.where(closing, traces["gap"] / -traces["rel_speed"], np.inf)
    np.testing.assert_allclose(traces["ttc"], ttc, rtol=1e-12)
    moving = traces["lead_present"] & (traces["ego_speed"] > 0)
    thw = np.where(moving, traces["gap"].clip(lower=0) / traces["ego_speed"], np.inf)
    np.testing.assert_allclose(traces["thw"], thw, rtol=1e-12)
    labeller = traffic.Labeller()
    critical = (ttc < labeller.ttc_critical) | (thw < labeller.thw_critical)
    assert traces["critical"].tolist() == critical.tolist()
    assert traces["critical"].any() and not traces["critical"].all()
    # critical_ahead: a critical step within the next 2 s (20 steps) of the same run.
    for run, steps in traces.groupby("run_id"):
        flags = steps["critical"].to_numpy()
        expected = [flags[i + 1 : i + 21].any() for i in range(len(flags))]
        assert steps["critical_ahead"].tolist() == expected, run


def test_label_agreement_falls_as_noise_rises():
    kappa = {}
    for level in (0.0, 1.0, 10.0):
        traces = traffic.simulate(mixed(seed=5, level=level, n=25))
        kappa[level] = traffic.label_agreement(traces).loc["all", "kappa"]
    assert kappa[0.0] == 1.0 > kappa[1.0] > kappa[10.0], kappa
    assert kappa[1.0] > 0.8 > kappa[10.0], kappa


def test_the_phases_and_the_lead_follow_the_scripts():
    cut_in = traffic.simulate([traffic.Scenario("cut_in")])
    assert cut_in["lead_id"].iloc[0] == -1 and cut_in["lead_id"].iloc[-1] == 1
    assert cut_in["phase"].iloc[0] == "free" and "cut_in" in set(cut_in["phase"])
    change = traffic.simulate([traffic.Scenario("lane_change")])
    assert change["lead_id"].iloc[0] == 1 and change["lead_id"].iloc[-1] == 2
    assert change["ego_y"].iloc[-1] == pytest.approx(traffic.LANE_WIDTH)
    braking = traffic.simulate([traffic.Scenario("hard_braking")])
    assert list(dict.fromkeys(braking["phase"])) == ["following", "lead_braking", "lead_stopped"]


# --- data sets -------------------------------------------------------------------------------


def test_a_recipe_round_trips_through_its_parameters_and_gives_the_same_bytes():
    recipe = traffic.Recipe(runs_per_kind=5, seed=11, noise_levels=(0.0, 0.5, 2.0), duration=5.0, dt=0.1)
    params = recipe.params()
    assert all(isinstance(v, str) for v in params.values())
    assert traffic.Recipe.from_params(params) == recipe
    data = recipe.build()
    assert data.sha256() == traffic.Recipe.from_params(params).build().sha256()
    assert data.sha256() != dataclasses.replace(recipe, seed=12).build().sha256()
    # Every run in one part, every part with runs of every type.
    assert set(data.sha256()) == {"testing", "validation", "training", "scenarios"}
    assert recipe.key() != dataclasses.replace(recipe, noise_levels=(0.0,)).key()
    parts = {name: set(data.part(name)["run_id"]) for name, _ in recipe.parts}
    assert sum(map(len, parts.values())) == len(data.scenarios) == 20
    assert not (parts["training"] & parts["testing"]) and not (parts["validation"] & parts["testing"])
    for name, frame in data.scenarios.groupby("part"):
        assert set(frame["kind"]) == set(traffic.KINDS), name
    # The bytes read back are the frame (no index, no pandas metadata).
    back = pd.read_parquet(io.BytesIO(data.part_bytes()["testing"]))
    pd.testing.assert_frame_equal(back, data.part("testing"), check_dtype=False)


def test_parts_are_stratified_and_do_not_depend_on_the_order_of_runs():
    scenarios = mixed(n=10)
    fractions = {"testing": 0.2, "validation": 0.2, "training": 0.6}
    parts = traffic.assign_parts(scenarios, fractions, seed=1)
    assert parts == traffic.assign_parts(scenarios[::-1], fractions, seed=1)
    assert parts != traffic.assign_parts(scenarios, fractions, seed=2)
    for kind in traffic.KINDS:
        mine = [parts[s.run_id] for s in scenarios if s.kind == kind]
        assert (mine.count("testing"), mine.count("validation"), mine.count("training")) == (2, 2, 6)
    with pytest.raises(ValueError, match="add up to 1"):
        traffic.assign_parts(scenarios, {"training": 0.5}, seed=1)
    assert traffic.part_sizes(fractions, 3) == {"testing": 1, "validation": 0, "training": 2}
    with pytest.raises(ValueError, match="without runs"):
        traffic.Recipe(runs_per_kind=3)
