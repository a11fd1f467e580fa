"""werkbank_lab.highway_scenarios: traffic.py's scenarios in highway-env. The same columns and labels as
the kinematic simulator; determinism (env.reset with a seed, any order, alone or in a batch, in worker
processes); each scenario type's event happens (a cut-in cuts in, a hard-braking lead brakes and stands,
the ego changes lanes); other traffic is highway-env's; the recipe's parameters make the same bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from werkbank_lab import highway_scenarios as hs
from werkbank_lab import traffic


def batch(seed: int = 3, level: float = 1.0, n: int = 2, duration: float = 5.0) -> list[traffic.Scenario]:
    noise = traffic.NoiseModel.radar(level)
    return [
        s for kind in traffic.KINDS for s in traffic.draw(kind, n, seed=seed, noise=noise, duration=duration)
    ]


def one_run(traces: pd.DataFrame, run_id: str) -> pd.DataFrame:
    return traces[traces["run_id"] == run_id].reset_index(drop=True)


def file_bytes(traces: pd.DataFrame) -> bytes:
    return traffic.parquet_bytes(traces.reset_index(drop=True))


@pytest.fixture(scope="module")
def mixed() -> tuple[list[traffic.Scenario], pd.DataFrame]:
    scenarios = batch()
    return scenarios, hs.simulate(scenarios)


# --- the environment and determinism ---------------------------------------------------------------


def test_env_reset_with_the_same_seed_gives_the_same_world_and_another_seed_another():
    scenario = traffic.Scenario("cut_in", seed=1, index=4)
    first, again = hs.make_env(scenario), hs.make_env(scenario)
    assert np.array_equal(first.ground_truth(), again.ground_truth())
    for _ in range(30):  # and it stays the same while it runs
        truth, _, _, _, _ = first.step(0.5)
        assert np.array_equal(truth, again.step(0.5)[0])
    other = hs.make_env(dataclasses.replace(scenario, index=5))
    # The scenario's two vehicles stand where its script says; the other traffic comes from the seed.
    assert np.array_equal(other.ground_truth()[:2, :3], hs.make_env(scenario).ground_truth()[:2, :3])
    assert not np.array_equal(other.ground_truth()[2:, :2], hs.make_env(scenario).ground_truth()[2:, :2])
    assert hs.run_seed(scenario) != hs.run_seed(dataclasses.replace(scenario, index=5))


def test_the_same_scenarios_give_the_same_bytes_in_any_order_alone_and_in_a_batch(mixed):
    scenarios, traces = mixed
    assert file_bytes(hs.simulate(scenarios)) == file_bytes(traces)
    backwards = hs.simulate(scenarios[::-1])
    for s in scenarios:
        assert file_bytes(one_run(backwards, s.run_id)) == file_bytes(one_run(traces, s.run_id)), s.run_id
    alone = scenarios[5]
    assert file_bytes(hs.simulate([alone])) == file_bytes(one_run(traces, alone.run_id))


def test_worker_processes_give_the_same_bytes(mixed, monkeypatch):
    scenarios, traces = mixed
    monkeypatch.setattr(hs, "STEPS_PER_WORKER", 1)  # this small batch would otherwise stay in one process
    assert file_bytes(hs.simulate(scenarios, workers=2)) == file_bytes(traces)


def test_the_columns_and_types_are_traffic_simulates(mixed):
    scenarios, traces = mixed
    kinematic = traffic.simulate(scenarios)
    assert list(traces.columns) == list(kinematic.columns)
    assert traces.dtypes.to_dict() == kinematic.dtypes.to_dict()
    assert traces["run_id"].unique().tolist() == [s.run_id for s in scenarios]
    for s in scenarios:  # every run lives its whole duration (no collisions here), steps in order
        run = one_run(traces, s.run_id)
        assert run["step"].tolist() == list(range(s.steps)), s.run_id
        np.testing.assert_allclose(run["t"], np.arange(s.steps) * s.dt)
    assert set(traces["phase"]) <= set(traffic.PHASES)


# --- each type's event -----------------------------------------------------------------------------


def test_a_cut_in_cuts_in_at_the_planned_gap_and_the_ego_brakes():
    params = {"cut_in_gap": 12.0, "rel_speed": -4.0, "cut_in_time": 1.0, "cut_in_duration": 2.0}
    scenario = traffic.Scenario("cut_in", params, duration=8.0)
    run = hs.simulate([scenario], background=0)
    cutting = run[run["lead_id"] == 1]
    # Before it moves over, the vehicle in the next lane is not the ego's lead; during its lane change
    # it becomes the lead, when its side comes within 0.3 m of the ego's, just before it crosses the
    # marking (planned at 2.0 s), at about the planned gap.
    assert (run.loc[run["t"] < 1.0, "lead_id"] == traffic.NO_LEAD).all()
    first = cutting.iloc[0]
    assert first["phase"] == "cut_in" and 1.5 < first["t"] <= 2.0, first[["t", "phase"]].to_dict()
    assert abs(first["gap"] - 12.0) < 2.0, first["gap"]
    assert cutting["t"].max() == 8.0  # it stays in the ego's lane
    assert run["ego_accel"].min() < -2.0  # a slower vehicle 12 m ahead: the ego brakes
    assert not run["collision"].any()


def test_a_hard_braking_lead_brakes_at_its_deceleration_and_stands_and_idm_stops_behind_it():
    params = {"ego_speed": 20.0, "set_speed": 20.0, "brake_time": 1.0, "brake_decel": 6.0, "time_gap": 1.5}
    run = hs.simulate([traffic.Scenario("hard_braking", params, duration=10.0)], background=0)
    braking = run[run["phase"] == "lead_braking"]
    assert braking["t"].min() == pytest.approx(1.0)
    np.testing.assert_allclose(braking["lead_accel"], -6.0)
    stopped = run[run["phase"] == "lead_stopped"]
    assert len(stopped) > 20 and (stopped["lead_speed"] == 0).all()
    assert run["ego_speed"].iloc[-1] < 0.5 and run["gap"].min() > 0 and not run["collision"].any()
    # The always-accelerate agent hits it: the run ends at the step of contact.
    crash = hs.simulate([traffic.Scenario("hard_braking", params, duration=10.0)], traffic.Constant(2.0))
    assert crash["collision"].tolist() == [False] * (len(crash) - 1) + [True]
    assert crash["t"].iloc[-1] < 10.0


def test_the_ego_changes_lanes_and_gets_a_new_lead():
    params = {"lane_change_time": 1.0, "lane_change_duration": 4.0, "lead_gap": 30.0, "target_gap": 40.0}
    run = hs.simulate([traffic.Scenario("lane_change", params, duration=10.0)], background=0)
    assert run["ego_y"].iloc[0] == 0.0 and run["ego_y"].iloc[-1] == pytest.approx(
        traffic.LANE_WIDTH, abs=0.05
    )
    # The path is the kinematic simulator's, tracked by highway-env's controller: half way at 3 s.
    middle = run.loc[run["t"].round(6) == 3.0, "ego_y"].item()
    assert middle == pytest.approx(traffic.LANE_WIDTH / 2, abs=0.3)
    moving = run[run["phase"] == "lane_change"]
    assert moving["t"].min() == pytest.approx(1.1) and moving["t"].max() == pytest.approx(4.9)
    assert run["lead_id"].iloc[0] == 1 and run["lead_id"].iloc[-1] == 2


def test_other_traffic_is_highway_envs_and_moves_on_its_own():
    scenario = traffic.Scenario("car_following", index=2)
    env = hs.make_env(scenario, background=4)
    others = env.road.vehicles[2:]
    assert len(others) == 4
    from highway_env.vehicle.behavior import IDMVehicle

    assert all(isinstance(v, IDMVehicle) for v in others)
    start = env.ground_truth()
    for _ in range(50):
        env.step(0.0)
    moved = env.ground_truth()[2:, 0] - start[2:, 0]
    assert (moved > 50).all(), moved  # 5 s at highway speed
    assert len(hs.make_env(scenario, background=0).road.vehicles) == 2


# --- labels --------------------------------------------------------------------------------------


def test_labels_follow_from_the_ground_truth_and_a_perfect_sensor_sees_the_truth():
    close = traffic.grid("cut_in", {"cut_in_gap": [6.0, 10.0], "rel_speed": [-6.0]}, duration=8.0)
    close += traffic.grid("hard_braking", {"brake_decel": [8.0]}, start=2, duration=8.0)

    def with_noise(level: float) -> list[traffic.Scenario]:
        return [dataclasses.replace(s, noise=traffic.NoiseModel.radar(level)) for s in close]

    traces = hs.simulate(with_noise(1.0))
    closing = traces["lead_present"] & (traces["rel_speed"] < 0)
    np.testing.assert_allclose(traces["ttc"], np.where(closing, traces["gap"] / -traces["rel_speed"], np.inf))
    moving = traces["lead_present"] & (traces["ego_speed"] > 0)
    np.testing.assert_allclose(traces["thw"], np.where(moving, traces["gap"] / traces["ego_speed"], np.inf))
    assert (traces["critical"] == ((traces["ttc"] < 3.0) | (traces["thw"] < 0.8))).all()
    assert 0.05 < traces["critical"].mean() < 0.95  # these runs have critical steps, and others
    perfect = hs.simulate(with_noise(0.0))
    assert (perfect["critical_perceived"] == perfect["critical"]).all()
    assert (perfect["meas_gap"].fillna(-1) == perfect["gap"].fillna(-1)).all()
    noisy = hs.simulate(with_noise(20.0))
    assert traffic.label_agreement(noisy).loc["all", "kappa"] < 0.9


def test_the_sensor_is_the_kinematic_simulators_same_dropouts_and_noise_draws():
    scenarios = traffic.draw("car_following", 3, seed=4, duration=6.0, noise=traffic.NoiseModel.radar(5.0))
    highway, kinematic = hs.simulate(scenarios, background=0), traffic.simulate(scenarios)
    assert (highway["meas_valid"] == kinematic["meas_valid"]).all() and not highway["meas_valid"].all()
    fresh = highway["meas_valid"] & highway["lead_present"]  # a measurement of this step, not a held one
    for column, truth in (("meas_gap", "gap"), ("meas_rel_speed", "rel_speed")):
        noise_here = (highway[column] - highway[truth])[fresh]
        noise_there = (kinematic[column] - kinematic[truth])[fresh]
        np.testing.assert_allclose(noise_here, noise_there, atol=1e-9)
        assert (highway[truth] != kinematic[truth]).any()  # another world, the same sensor


# --- recipes and arguments -----------------------------------------------------------------------


def test_a_highway_recipe_is_made_again_from_its_parameters_to_the_same_bytes():
    recipe = hs.Recipe(runs_per_kind=5, seed=2, duration=3.0, simulator="highway", background=2)
    params = recipe.params()
    assert params["simulator"] == "highway" and params["background"] == "2"
    assert hs.Recipe.from_params(params) == recipe
    data = recipe.build()
    assert data.sha256() == hs.Recipe.from_params(params).build().sha256()
    kinematic = dataclasses.replace(recipe, simulator="kinematic")
    assert kinematic.build().sha256() != data.sha256() and kinematic.key() != recipe.key()
    # A kinematic recipe makes traffic.Recipe's data; parameters logged without "simulator" are kinematic.
    plain = traffic.Recipe(runs_per_kind=5, seed=2, duration=3.0)
    assert kinematic.build().sha256() == plain.build().sha256()
    assert hs.Recipe.from_params(plain.params()).simulator == "kinematic"
    assert set(data.traces["kind"]) == set(traffic.KINDS)


def test_what_is_refused():
    with pytest.raises(ValueError, match="unknown simulator"):
        hs.Recipe(simulator="carla")
    scenarios = batch(n=1)
    with pytest.raises(ValueError, match="unique"):
        hs.simulate(scenarios + scenarios[:1])
    with pytest.raises(ValueError, match="same dt"):
        hs.simulate([scenarios[0], dataclasses.replace(scenarios[1], dt=0.2)])

    class Remembers:
        def reset(self, runs):
            pass

        def __call__(self, obs):
            return np.zeros_like(obs.ego_speed)

    with pytest.raises(ValueError, match="one process"):
        hs.simulate(scenarios, Remembers(), workers=2)
