"""The scenarios of :mod:`werkbank_lab.traffic`, run in highway-env: a multi-lane road, other traffic
driven by highway-env's own models, its vehicles' kinematics; the same traces, labels and Parquet.

:func:`simulate` takes the same :class:`~werkbank_lab.traffic.Scenario` list, policy, vehicle limits and
labeller as :func:`traffic.simulate` and returns the same columns (``traffic.simulate``'s docstring
lists them), so that everything downstream (:func:`traffic.run_metrics`, :func:`traffic.label_agreement`,
:func:`traffic.assign_parts`, :func:`traffic.parquet_bytes`) works on either. What changes is the world
the runs happen in (:func:`scenario_env`, a ``highway_env`` environment):

- **The road**: three lanes of :data:`traffic.LANE_WIDTH`, the ego in the middle one; the lane to its
  left is the kinematic simulator's lane 1 (``y = 3.5``), the one to its right is at ``y = -3.5``.
- **The scenario's vehicles** (the ego's lead, the vehicle that cuts in, the one in the target lane)
  keep their script's longitudinal plan (the speed oscillation, the hard braking at ``brake_time``)
  unless highway-env's IDM, aiming at the script's speed of the moment, asks for less because of a
  vehicle ahead of them. Their lane changes follow the script's smooth path (its start and duration),
  tracked by highway-env's lateral and heading controller on its kinematic bicycle model: the vehicles
  turn, and lag the path a little.
- **Other traffic**: ``background`` vehicles of highway-env's ``IDMVehicle`` (IDM and MOBIL: they keep
  their distance and change lanes when it pays), placed at random in the lane right of the ego and
  beyond the scenario's vehicles, from the run's own seeded generator. They may change into the ego's
  lane ahead of it, a cut-in no script planned (its ``phase`` is then ``following``; the labels come
  from the ground truth, whoever the lead is).
- **The ego** is driven by the policy exactly as in :func:`traffic.simulate` (the same sensor model,
  noise draws, tracker, vehicle limits and lag) and steered by highway-env's lateral controller.

The ground truth is recorded as the kinematic simulator records it: x of front bumpers (the ego's 0 at
the start), y positive to the left, speeds and accelerations along the road; the lead is the nearest
vehicle ahead whose side is within :data:`traffic.IN_PATH_MARGIN` of the ego's; a run ends at the step
where the ego's body touches another (highway-env's own crash response, which pushes vehicles apart, is
off for the ego). One simulation step per time step: highway-env's ``simulation_frequency`` and
``policy_frequency`` are both 1 / ``dt``.

**Determinism**: every run is its own environment, reset with ``env.reset(seed=...)`` from a seed drawn
from (seed, type, index) (:func:`run_seed`); its sensor noise is the kinematic simulator's. highway-env
draws only from that generator, so a run gives the same trace bit for bit alone, in any batch, in any
order and in any worker process (the unit tests check it). Bit for bit with the same versions of
highway-env, numpy and pyarrow on the same kind of CPU, as for the kinematic simulator.

**Cost**: pure Python per vehicle and step, about 2,500 run-steps per second on one core (the kinematic
simulator, vectorised over runs, several hundred thousand); ``workers`` spreads the runs over processes
(spawned, so a script that uses them needs the ``if __name__ == "__main__":`` guard).
:class:`Recipe` is :class:`traffic.Recipe` with the simulator and the background traffic among its
parameters.

Example::

    from werkbank_lab import highway_scenarios, traffic

    scenarios = traffic.draw("cut_in", 20, seed=1, noise=traffic.NoiseModel.radar(1.0))
    traces = highway_scenarios.simulate(scenarios, workers=2)  # the columns of traffic.simulate
    print(traffic.run_metrics(traces))
"""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace

import numpy as np
import pandas as pd

from werkbank_lab import traffic

#: The simulators a :class:`Recipe` can use.
SIMULATORS = ("kinematic", "highway")
BACKGROUND = 4  # other vehicles per run, by default
LANES = 3  # highway-env's lane ids: 0 left of the ego, 1 the ego's, 2 right of it
EGO_LANE = 1
START_X = 150.0  # m: where on the road the ego's front bumper starts (room behind it for traffic)
STEPS_PER_WORKER = 10_000  # run-steps (about 5 s of work): fewer go to fewer processes
LATERAL_TIME = 0.3  # s: how fast the lateral controller pulls towards the path (highway-env's default 0.6)
#: How :func:`render` draws the vehicles (RGB): other traffic in highway-env's blue.
COLOURS = MappingProxyType({"ego": (50, 200, 0), "scenario": (200, 0, 150)})
_PHASE = {name: i for i, name in enumerate(traffic.PHASES)}


def _lane_id(y: float) -> int:
    """highway-env's lane id of the kinematic simulator's ``y`` (positive to the left)."""
    return EGO_LANE - round(y / traffic.LANE_WIDTH)


def _lane_y(lane_id: int) -> float:
    """highway-env's y of a lane's centre line (its y grows to the right of the driving direction)."""
    return lane_id * traffic.LANE_WIDTH


def _clip(value: float, bound: float) -> float:
    return min(max(value, -bound), bound)


def _quintic(tau: float) -> tuple[float, float]:
    """The kinematic simulator's lane-change profile (0 to 1) at ``tau`` and its derivative."""
    tau = min(max(tau, 0.0), 1.0)
    return tau**3 * (10 - 15 * tau + 6 * tau**2), 30 * tau**2 * (1 - tau) ** 2


@functools.cache
def _classes() -> SimpleNamespace:
    """highway-env's classes, extended (imported on first use: the kinematic path never needs them)."""
    from gymnasium import spaces
    from highway_env import utils
    from highway_env.envs.common.observation import ObservationType
    from highway_env.envs.highway_env import HighwayEnv
    from highway_env.road.lane import LineType, StraightLane
    from highway_env.road.road import Road, RoadNetwork
    from highway_env.vehicle.behavior import IDMVehicle
    from highway_env.vehicle.controller import ControlledVehicle

    class AlongX(StraightLane):
        """A straight lane along the x axis: the same coordinates as ``StraightLane`` (its direction is
        exactly (1, 0)), without the vector algebra, which dominates highway-env's run time."""

        def local_coordinates(self, position: np.ndarray) -> tuple[float, float]:
            return float(position[0]) - self._x0, float(position[1]) - self._y0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if tuple(self.direction) != (1.0, 0.0):
                raise ValueError(f"an AlongX lane runs along x, not {tuple(self.direction)}")
            self._x0, self._y0 = float(self.start[0]), float(self.start[1])

    class Sized:
        """werkbank's vehicle size; a vehicle that would reverse stops instead (as in the kinematic
        simulator; highway-env's vehicles would back up)."""

        LENGTH = traffic.LENGTH
        WIDTH = traffic.WIDTH

        def step(self, dt: float) -> None:
            self.action["acceleration"] = max(float(self.action["acceleration"]), -self.speed / dt)
            super().step(dt)
            self.speed = max(self.speed, 0.0)

    class FollowsPath(Sized, ControlledVehicle):
        """Steers along a lateral path: its lane's centre line, or the script's lane change (highway-env's
        cascaded lateral-position and heading controller, the path's lateral speed fed forward)."""

        KP_LATERAL = 1 / LATERAL_TIME
        lane_change_time = math.inf
        lane_change_duration = 1.0
        lane_change_dy = 0.0  # highway-env's y: positive to the right
        y_start = 0.0
        clock = 0.0  # s since the run started: ScenarioEnv sets it (steps x dt, as the kinematic simulator)

        def progress(self) -> float:
            if self.lane_change_dy == 0:
                return -1.0
            return (self.clock - self.lane_change_time) / self.lane_change_duration

        def moving_over(self) -> bool:
            return 0 < self.progress() < 1

        def steer(self) -> float:
            share, rate = _quintic(self.progress())
            y_ref = self.y_start + self.lane_change_dy * share
            y_rate = self.lane_change_dy * rate / self.lane_change_duration if self.moving_over() else 0.0
            speed = utils.not_zero(self.speed)
            lateral_speed = self.KP_LATERAL * (y_ref - float(self.position[1])) + y_rate
            heading_ref = _clip(math.asin(_clip(lateral_speed / speed, 1.0)), math.pi / 4)
            heading_rate = self.KP_HEADING * utils.wrap_to_pi(heading_ref - self.heading)
            slip = math.asin(_clip(self.LENGTH / 2 / speed * heading_rate, 1.0))
            return _clip(math.atan(2 * math.tan(slip)), self.MAX_STEERING_ANGLE)

    class ScriptedVehicle(FollowsPath, IDMVehicle):
        """A scenario's other vehicle: its script's acceleration (the speed oscillation, then braking
        until it stands), unless highway-env's IDM, aiming at the script's speed of the moment, asks
        for less because of a vehicle ahead. No MOBIL: its lane changes are the script's."""

        start_speed = 0.0
        speed_amplitude = 0.0
        omega = 0.0
        brake_time = math.inf
        brake_decel = 0.0

        def braking(self) -> bool:
            return self.clock >= self.brake_time and self.brake_decel > 0

        def act(self, action=None) -> None:
            t = self.clock
            if t >= self.brake_time:
                accel = -self.brake_decel
            else:
                accel = self.speed_amplitude * self.omega * math.cos(self.omega * t)
                self.target_speed = self.start_speed + self.speed_amplitude * math.sin(self.omega * t)
            front, _ = self.road.neighbour_vehicles(self, self.lane_index)
            if front is not None:
                accel = min(accel, float(self.acceleration(self, front)))
            if self.speed <= 0 and accel < 0:
                accel = 0.0
            self.action = {"steering": self.steer(), "acceleration": accel}

    class PolicyVehicle(FollowsPath):
        """The ego: the acceleration its policy asked for (``commanded``, set each step), the lateral path
        of its script."""

        commanded = 0.0

        def act(self, action=None) -> None:
            self.action = {"steering": self.steer(), "acceleration": self.commanded}

    class TrafficVehicle(Sized, IDMVehicle):
        """Other traffic: highway-env's IDM and MOBIL at werkbank's vehicle size."""

    class GroundTruth(ObservationType):
        """A ``ScenarioEnv``'s observation: its ground truth, one row per vehicle."""

        def space(self) -> spaces.Space:
            rows = len(self.env.road.vehicles) if self.env.road else 0
            return spaces.Box(-np.inf, np.inf, (rows, 4), np.float64)

        def observe(self) -> np.ndarray:
            return self.env.ground_truth() if self.env.road else np.zeros((0, 4))

    class ScenarioEnv(HighwayEnv):
        """A highway-env environment that plays one :class:`traffic.Scenario` (configuration keys
        ``scenario`` and ``background`` besides highway-env's): ``reset(seed=...)`` builds the road and
        places the vehicles, ``step(acceleration)`` executes the ego's acceleration (m/s²) for one time
        step, and the observation is the ground truth (:meth:`ground_truth`)."""

        @classmethod
        def default_config(cls) -> dict:
            config = super().default_config()
            config |= {"lanes_count": LANES, "scenario": None, "background": BACKGROUND}
            config |= {"simulation_frequency": 10, "policy_frequency": 10}
            return config

        def define_spaces(self) -> None:
            """The action: the ego's acceleration (m/s², one number); the observation: the ground truth."""
            self.observation_type = GroundTruth(self)
            self.observation_space = self.observation_type.space()
            self.action_type = None
            self.action_space = spaces.Box(-np.inf, np.inf, (1,), np.float64)

        def _reset(self) -> None:
            scenario = self.config["scenario"]
            if scenario is None:  # the reset in highway-env's constructor: nothing to play yet
                self.road, self.actors = None, []
                return
            frequencies = self.config["simulation_frequency"], self.config["policy_frequency"]
            if not all(math.isclose(f, 1 / scenario.dt) for f in frequencies):
                raise ValueError(f"simulation and policy frequency must be 1 / dt, not {frequencies}")
            network, length = RoadNetwork(), START_X + 600 + 45 * scenario.duration
            for lane in range(LANES):
                left = LineType.CONTINUOUS_LINE if lane == 0 else LineType.STRIPED
                right = LineType.CONTINUOUS_LINE if lane == LANES - 1 else LineType.NONE
                y = _lane_y(lane)
                lines = (left, right)
                network.add_lane(
                    "a", "b", AlongX([0, y], [length, y], traffic.LANE_WIDTH, lines, speed_limit=45.0)
                )
            self.road = Road(network=network, np_random=self.np_random, record_history=False)
            scripts = scenario.scripts()
            self.actors = [self._actor(number, script, scenario) for number, script in enumerate(scripts)]
            self.road.vehicles.extend(self.actors)
            self.controlled_vehicles = self.actors[:1]
            self._place_background(scenario, scripts)
            self._decide()

        def _actor(self, number: int, script: traffic.Script, scenario: traffic.Scenario):
            lane = _lane_id(script.y)
            centre = [START_X + script.x - traffic.LENGTH / 2, _lane_y(lane)]
            cls = PolicyVehicle if number == 0 else ScriptedVehicle
            vehicle = cls(self.road, centre, 0.0, script.speed, target_lane_index=("a", "b", lane))
            vehicle.y_start = _lane_y(lane)
            if math.isfinite(script.lane_change_time) and script.lane_change_dy:
                vehicle.lane_change_time = script.lane_change_time
                vehicle.lane_change_duration = script.lane_change_duration
                vehicle.lane_change_dy = -script.lane_change_dy
            vehicle.color = COLOURS[
                "ego" if number == 0 else "scenario"
            ]  # highway-env's renderer draws these
            if number == 0:
                vehicle.collidable = False  # the run ends at contact: no crash response for the ego
            else:
                vehicle.start_speed, vehicle.speed_amplitude = script.speed, script.speed_amplitude
                finite = math.isfinite(script.speed_period)
                vehicle.omega = 2 * math.pi / script.speed_period if finite else 0.0
                vehicle.brake_time, vehicle.brake_decel = script.brake_time, script.brake_decel
            return vehicle

        def _place_background(self, scenario: traffic.Scenario, scripts: list[traffic.Script]) -> None:
            """Other vehicles, from the environment's seeded generator: half in the lane right of the ego
            (from 120 m behind it to 150 m ahead), half in any lane 50 to 300 m beyond the scenario's
            vehicles; at least 25 m (bumper to bumper) from every vehicle of their lane at the start
            (including the lanes the scenario's vehicles change to), at about the ego's speed."""
            rng = self.np_random
            ego_speed = scenario.params["ego_speed"]
            beyond = START_X + max(s.x for s in scripts) + 50
            taken = [(_lane_id(s.y), START_X + s.x) for s in scripts]
            taken += [(_lane_id(s.y + s.lane_change_dy), START_X + s.x) for s in scripts if s.lane_change_dy]
            for _ in range(self.config["background"]):
                for _attempt in range(20):
                    if rng.random() < 0.5:
                        lane, front = LANES - 1, START_X + rng.uniform(-120.0, 150.0)
                    else:
                        lane, front = int(rng.integers(LANES)), beyond + rng.uniform(0.0, 250.0)
                    if all(abs(front - x) > 25 + traffic.LENGTH for other, x in taken if other == lane):
                        break
                else:
                    continue  # no room found: one vehicle fewer
                taken.append((lane, front))
                speed = max(5.0, ego_speed * rng.uniform(0.8, 1.05))
                vehicle = TrafficVehicle(
                    self.road,
                    [front - traffic.LENGTH / 2, _lane_y(lane)],
                    0.0,
                    speed,
                    target_lane_index=("a", "b", lane),
                    target_speed=speed * rng.uniform(1.0, 1.15),
                )
                vehicle.randomize_behavior()
                self.road.vehicles.append(vehicle)

        def _decide(self) -> None:
            """The other vehicles choose their actions for the coming step: the ego's sensor reads the
            lead's acceleration before the ego's policy acts, as in the kinematic simulator."""
            for vehicle in self.road.vehicles[1:]:
                vehicle.act()

        def step(self, action):
            ego = self.actors[0]
            ego.commanded = float(np.asarray(action, float).reshape(-1)[0])
            ego.act()
            self.road.step(1 / self.config["simulation_frequency"])
            self.steps += 1
            self.time = self.steps * self.config["scenario"].dt
            for actor in self.actors:
                actor.clock = self.time
            executed = float(ego.action["acceleration"])  # after highway-env's and our limits
            self._decide()
            truncated = self.time >= self.config["scenario"].duration
            return self.observation_type.observe(), 0.0, False, truncated, {"acceleration": executed}

        def ground_truth(self) -> np.ndarray:
            """One row per vehicle (the scenario's, in its order, then the others): x of the front
            bumper (m, the ego's 0 at the start), y (m, positive to the left, the ego's lane at 0), speed
            along the road (m/s), acceleration along the road for the coming step (m/s²)."""
            rows = []
            for v in self.road.vehicles:
                along = math.cos(v.heading)
                x = float(v.position[0]) + traffic.LENGTH / 2 - START_X
                y = _lane_y(EGO_LANE) - float(v.position[1])
                rows.append((x, y, v.speed * along, float(v.action["acceleration"]) * along))
            return np.array(rows)

        def phase(self, has_lead: bool) -> int:
            """The run's phase (an index of :data:`traffic.PHASES`) from the scenario's vehicles, by the
            kinematic simulator's rules (a later line wins)."""
            ego, others = self.actors[0], self.actors[1:]
            if ego.moving_over():
                return _PHASE["lane_change"]
            if any(v.moving_over() for v in others):
                return _PHASE["cut_in"]
            braking = [v for v in others if v.braking()]
            if any(v.speed > 0 for v in braking):
                return _PHASE["lead_braking"]
            if braking:
                return _PHASE["lead_stopped"]
            return _PHASE["following" if has_lead else "free"]

        def _info(self, obs, action=None) -> dict:
            return {}

        def _reward(self, action) -> float:
            return 0.0

        def _is_terminated(self) -> bool:
            return False

    return SimpleNamespace(ScenarioEnv=ScenarioEnv, TrafficVehicle=TrafficVehicle)


def scenario_env(background: int = BACKGROUND):
    """A fresh ``ScenarioEnv`` (not yet reset): ``env.reset(seed=run_seed(s), options={"config":
    {"scenario": s}})`` plays scenario ``s``."""
    return _classes().ScenarioEnv(config={"background": background})


def run_seed(scenario: traffic.Scenario) -> int:
    """The seed of a run's environment, from (seed, type, index) (:meth:`traffic.Scenario.rng`, stream 2):
    the same wherever and in whatever order the run is made."""
    return int(scenario.rng(2).integers(2**63))


def make_env(scenario: traffic.Scenario, background: int = BACKGROUND):
    """A ``ScenarioEnv`` reset to play ``scenario`` with its run's seed."""
    env = scenario_env(background)
    frequency = 1 / scenario.dt
    config = {"scenario": scenario, "simulation_frequency": frequency, "policy_frequency": frequency}
    env.reset(seed=run_seed(scenario), options={"config": config})
    return env


def default_workers() -> int:
    """The CPUs this process may use (a Slurm job's allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def simulate(
    scenarios: Sequence[traffic.Scenario],
    policy: traffic.Policy | None = None,
    *,
    vehicle: traffic.Vehicle = traffic.Vehicle(),
    labeller: traffic.Labeller = traffic.Labeller(),
    background: int = BACKGROUND,
    workers: int = 1,
) -> pd.DataFrame:
    """:func:`traffic.simulate` in highway-env: the same arguments and columns, one row per run and
    step, runs in the given order; ``background`` other vehicles per run. The runs advance together,
    one step at a time, the policy called once per step for all of them. With ``workers`` > 1 the runs
    are dealt to that many processes (the same traces: each run's is its own); the policy must then be
    picklable and act on each run alone (:class:`traffic.IDM`, :class:`traffic.ACC` and
    :class:`traffic.Constant` do; a policy with a ``reset`` is refused)."""
    policy = traffic.IDM() if policy is None else policy
    traffic.check_batch(scenarios)
    ids = [s.run_id for s in scenarios]
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if workers > 1 and hasattr(policy, "reset"):
        raise ValueError("a policy with a reset (state across steps) runs in one process: workers=1")
    # Starting a worker process costs seconds (imports): a few thousand run-steps per worker at least.
    workers = min(workers, max(1, sum(s.steps for s in scenarios) // STEPS_PER_WORKER))
    if workers == 1:
        return _simulate(list(scenarios), policy, vehicle, labeller, background)
    # Dealt round-robin (the types are grouped in a recipe and cost differently); put back in order.
    shares = [list(scenarios[w::workers]) for w in range(workers)]
    context = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        same = [[value] * workers for value in (policy, vehicle, labeller, background)]
        parts = list(pool.map(_simulate, shares, *same))
    by_run = {run_id: frame for part in parts for run_id, frame in part.groupby("run_id", sort=False)}
    return pd.concat([by_run[run_id] for run_id in ids], ignore_index=True)


def _simulate(
    scenarios: list[traffic.Scenario],
    policy: traffic.Policy,
    vehicle: traffic.Vehicle,
    labeller: traffic.Labeller,
    background: int,
) -> pd.DataFrame:
    if hasattr(policy, "reset"):
        policy.reset(len(scenarios))
    runs, dt = len(scenarios), scenarios[0].dt
    envs = [make_env(s, background) for s in scenarios]
    n_steps = max(s.steps for s in scenarios)
    run_steps = np.array([s.steps for s in scenarios])
    set_speed = np.array([s.params["set_speed"] for s in scenarios])

    tracker = traffic.Tracker(scenarios, n_steps)  # the kinematic simulator's sensor and its draws
    ego_accel = np.zeros(runs)
    alive = np.ones(runs, bool)
    lag = min(1.0, dt / vehicle.response_time) if vehicle.response_time > 0 else 1.0
    truths = [env.ground_truth() for env in envs]
    # What each step records, as in traffic.simulate: only the steps a run lived are kept.
    record = {name: np.full((runs, n_steps), np.nan) for name in _FLOATS}
    record |= {name: np.zeros((runs, n_steps), bool) for name in _FLAGS}
    record["lead_id"] = np.zeros((runs, n_steps), np.int16)
    record["phase"] = np.zeros((runs, n_steps), np.int8)

    for k in range(n_steps):
        t = k * dt
        alive &= k < run_steps
        if not alive.any():
            break
        # The ground truth of each run: its lead (the kinematic simulator's rule) and contact.
        gap, rel, lead_v, lead_a = (np.full(runs, np.nan) for _ in range(4))
        ego_x, ego_y, ego_v = np.zeros(runs), np.zeros(runs), np.zeros(runs)
        lead_id = np.full(runs, traffic.NO_LEAD, np.int16)
        collided = np.zeros(runs, bool)
        for r in np.flatnonzero(alive):
            x, y, v, a = truths[r].T
            ego_x[r], ego_y[r], ego_v[r] = x[0], y[0], v[0]
            others = np.arange(len(x)) > 0
            ahead = others & (np.abs(y - y[0]) < traffic.WIDTH + traffic.IN_PATH_MARGIN) & (x > x[0])
            if ahead.any():
                gaps = np.where(ahead, x - traffic.LENGTH - x[0], np.inf)
                lead = int(np.argmin(gaps))
                lead_id[r], gap[r], lead_v[r], lead_a[r] = lead, gaps[lead], v[lead], a[lead]
                rel[r] = v[lead] - v[0]
            overlap = others & (np.abs(y - y[0]) < traffic.WIDTH) & (x - traffic.LENGTH < x[0])
            collided[r] = (overlap & (x > x[0] - traffic.LENGTH)).any()
        has_lead = lead_id != traffic.NO_LEAD

        # The sensor and the tracker, then the policy, as in traffic.simulate.
        valid = tracker.measure(k, dt, gap, rel, lead_a, has_lead)
        obs = tracker.observation(k, t, dt, ego_v, ego_accel, set_speed)
        ego_accel = traffic.actuate(policy, obs, alive, vehicle, lag, ego_accel, ego_v)

        # Each run's world moves one step (a run ends with its collision's step).
        phase = np.zeros(runs, np.int8)
        for r in np.flatnonzero(alive):
            phase[r] = envs[r].phase(bool(has_lead[r]))
            if not collided[r]:
                truths[r], _, _, _, info = envs[r].step(ego_accel[r])
                ego_accel[r] = info["acceleration"]  # what the vehicle executed, after its limits

        true = {"ego_x": ego_x, "ego_y": ego_y, "ego_speed": ego_v, "ego_accel": ego_accel, "gap": gap}
        true |= {"rel_speed": rel, "lead_speed": lead_v, "lead_accel": lead_a, "lead_present": has_lead}
        true |= {"lead_id": lead_id, "collision": collided, "phase": phase}
        for name, value in (true | tracker.measured(valid)).items():
            record[name][alive, k] = value[alive]
        alive &= ~collided
    for env in envs:
        env.close()

    columns = traffic.trace_columns(record, scenarios, set_speed)  # the steps each run lived, run by run
    order = [*_COLUMNS[:8], "set_speed", *_COLUMNS[8:]]
    return traffic.label(pd.DataFrame({name: columns[name] for name in order}), labeller)


_FLOATS = (
    "ego_x ego_y ego_speed ego_accel gap rel_speed lead_speed lead_accel meas_age meas_gap meas_rel_speed "
    "meas_lead_accel"
).split()
_FLAGS = ("lead_present", "meas_valid", "meas_lead_present", "collision")
# traffic.simulate's columns before the labels, less set_speed (inserted after ego_accel).
_COLUMNS = (
    "run_id kind step t ego_x ego_y ego_speed ego_accel lead_id lead_present gap rel_speed lead_speed "
    "lead_accel meas_valid meas_age meas_lead_present meas_gap meas_rel_speed meas_lead_accel phase collision"
).split()


# --- data sets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe(traffic.Recipe):
    """:class:`traffic.Recipe` with the choice of ``simulator`` (:data:`SIMULATORS`: ``"kinematic"``,
    traffic.py's own, or ``"highway"``, :func:`simulate`) and, for highway-env, the ``background``
    vehicles per run. Its :meth:`params` add ``simulator`` (and ``background`` for highway-env) to
    traffic.Recipe's; :meth:`from_params` reads both kinds (a recipe logged without ``simulator`` is
    kinematic). The same recipe gives the same bytes with either simulator, whatever ``workers``."""

    simulator: str = "kinematic"
    background: int = BACKGROUND

    def __post_init__(self):
        super().__post_init__()
        if self.simulator not in SIMULATORS:
            raise ValueError(f"unknown simulator {self.simulator!r}; known: {list(SIMULATORS)}")
        if self.background < 0:
            raise ValueError(f"background must be 0 or more vehicles, not {self.background}")

    def build(self, workers: int = 1) -> traffic.Dataset:
        """Simulate and label every run (highway-env: in ``workers`` processes), split them by run."""
        if self.simulator == "kinematic":
            return super().build()
        scenarios = self.scenarios()
        policy = traffic.POLICIES[self.policy]()
        traces = simulate(
            scenarios, policy, labeller=self.labeller(), background=self.background, workers=workers
        )
        table = traffic.scenario_table(scenarios)
        table.insert(4, "noise_level", [self.noise_level(s) for s in scenarios])
        part_of = traffic.assign_parts(scenarios, dict(self.parts), self.seed)
        table.insert(1, "part", table["run_id"].map(part_of))
        return traffic.Dataset(self, table, traces)

    def simulate(self, scenarios: Sequence[traffic.Scenario], policy=None, *, workers: int = 1, **kwargs):
        """``scenarios`` simulated with this recipe's simulator (and background traffic) and labeller;
        ``kwargs`` go to the simulator (``vehicle``)."""
        kwargs.setdefault("labeller", self.labeller())
        if self.simulator == "kinematic":
            return traffic.simulate(scenarios, policy, **kwargs)
        return simulate(scenarios, policy, background=self.background, workers=workers, **kwargs)

    def params(self) -> dict[str, str]:
        extra = {"simulator": self.simulator}
        if self.simulator == "highway":
            extra["background"] = str(self.background)
        return super().params() | extra

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Recipe:
        base = traffic.Recipe.from_params(params)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(traffic.Recipe)}
        simulator = params.get("simulator", "kinematic")
        return cls(**fields, simulator=simulator, background=int(params.get("background", BACKGROUND)))


def render(
    scenario: traffic.Scenario,
    run: pd.DataFrame,
    times: Sequence[float],
    *,
    background: int = BACKGROUND,
    width: int = 900,
    height: int = 160,
    scaling: float = 5.0,
) -> list[np.ndarray]:
    """Pictures from above (highway-env's renderer, RGB arrays ``height`` x ``width`` x 3, ``scaling``
    pixels per metre, the ego in the middle) of one run of :func:`simulate` at ``times`` (s): ``run``
    is its traces, played again in a rendering environment with the ego's recorded accelerations (the
    same seed gives the same world). Headless: pygame draws off screen, no display needed."""
    config = {"background": background, "screen_width": width, "screen_height": height, "scaling": scaling}
    env = _classes().ScenarioEnv(config=config | {"centering_position": [0.5, 0.5]}, render_mode="rgb_array")
    frequency = 1 / scenario.dt
    options = {"scenario": scenario, "simulation_frequency": frequency, "policy_frequency": frequency}
    env.reset(seed=run_seed(scenario), options={"config": options})
    wanted = {round(t / scenario.dt) for t in times}
    pictures = {}
    for step, accel in enumerate(run["ego_accel"].to_numpy()):
        if step in wanted:
            pictures[step] = env.render()
        if step >= max(wanted):
            break
        env.step(accel)
    env.close()
    return [pictures[round(t / scenario.dt)] for t in times]
