"""Synthetic driving data from a seeded kinematic simulator: scenarios, sensor noise, labels, metrics.

A straight road with lanes 3.5 m wide; x runs along the road (a vehicle's x is its front bumper), y across
it (lane 0 at y = 0, lane 1 to its left at y = 3.5). Every vehicle is 4.5 m long and 1.8 m wide. Time
advances in fixed steps (``dt``, 0.1 s by default) with the ballistic update (position from speed and
acceleration over the step; a vehicle that would reverse stops instead).

- The **ego vehicle** is driven by a *policy*: any callable that takes an :class:`Observation` (what the
  ego knows at this step, one entry per run of the batch) and returns the acceleration it asks for, in
  m/s². :class:`IDM` (the Intelligent Driver Model) is the default, :class:`ACC` adds Kesting's
  constant-acceleration heuristic (calmer at cut-ins), :class:`Constant` is the "always accelerate"
  agent. The vehicle executes the request within its limits (:class:`Vehicle`: at most ``max_accel``,
  braking at most ``max_decel``, through a first-order lag of ``response_time``). A lane change of the
  ego is scripted by its scenario; the policy drives longitudinally only.
- The **other vehicles** are scripted by the scenario, open loop (they do not react to the ego): cruising
  with a speed that oscillates, braking hard at ``brake_time`` with ``brake_decel`` until they stand,
  changing lanes at a given time in a given duration (a smooth quintic lateral profile).
- **Scenarios**: :data:`CATALOGUE` holds the four types, ``car_following``, ``hard_braking``, ``cut_in``
  and ``lane_change``, each with named parameters, their units, defaults and the ranges a sweep draws
  from (:class:`Param`). :class:`Scenario` is one run: a type, its parameters, a sensor noise model, an
  index and a seed. :func:`grid` and :func:`draw` make sweeps; :func:`ncap_style` is a fixed matrix of
  twelve rear-end and cut-in tests in the style of Euro NCAP's car-to-car rear tests.
- **Sensors**: the ego measures the gap to its lead (range), the relative speed (range rate) and the
  lead's acceleration through a :class:`NoiseModel` (Gaussian noise, a bias, dropouts in bursts); a
  tracker holds the last measurement through a dropout. The policy sees only these measurements (and its
  own speed, exact); the ground truth stays in other columns of the traces.
- **Labels** (:class:`Labeller`): per step, from the ground truth, the time to collision (TTC), the time
  gap, a ``critical`` flag (TTC or time gap below a threshold), ``critical_ahead`` (critical within the
  next ``horizon`` seconds) and the manoeuvre ``phase``; and, separately, what a labeller working from
  the measurements would say (``ttc_perceived``, ``thw_perceived``, ``critical_perceived``).
  :func:`label_agreement` compares the two.
- **Determinism**: every run draws its noise from its own generator, seeded from (seed, scenario type,
  index), and every draw of a sweep from its own (seed, type, index) too. The same scenarios give the same
  traces bit for bit, in any order, alone or in any batch (numpy's vectorised functions compute each
  element the same way wherever it sits in an array; the unit tests check it). Bit for bit means with the
  same numpy and pyarrow versions on the same kind of CPU: another SIMD code path may round a cosine
  differently in the last bit.
- **Metrics** per run (:func:`run_metrics`): collision, impact speed, minimum TTC, minimum time gap,
  peak deceleration, maximum jerk.
- **Data sets** (:class:`Recipe`): a sweep of every type, simulated, labelled and split by run into
  parts, described by flat parameters (``Recipe.params`` / ``Recipe.from_params``, for MLflow) and written
  as Parquet with the same bytes for the same recipe (:func:`parquet_bytes`).

Pure numpy and pandas (pyarrow to write Parquet). A batch of runs is simulated together: one Python loop
over the time steps, numpy over runs and vehicles (400 runs of 20 s take about a second on one core).

For the templates that build on it: generative models of traces take the trace columns (per step) or
windows of them, and :func:`policy_features` (what the ego measured); validating a driving agent runs
:func:`ncap_style` or :func:`grid` with each policy (any callable on :class:`Observation`, e.g. a learned
model on ``Observation.features()``) and compares :func:`run_metrics`; federated training gives each
"company" its own :class:`Recipe` (other ``kinds``, ``noise_levels``, ``seed``) or its own scenario list
with a :class:`NoiseModel` of its own (a bias, say), and splits with :func:`assign_parts`.

Example::

    from werkbank_lab import traffic

    scenarios = traffic.draw("cut_in", 50, seed=1, noise=traffic.NoiseModel.radar(1.0))
    traces = traffic.simulate(scenarios)                    # one row per run and step
    per_run = traffic.run_metrics(traces)                    # collision, min TTC, ...
    print(traffic.label_agreement(traces))                  # perceived vs true "critical"
    unsafe = traffic.simulate(scenarios, policy=traffic.Constant(2.0))
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import numpy as np
import pandas as pd

LANE_WIDTH = 3.5  # m
LENGTH = 4.5  # m, every vehicle
WIDTH = 1.8  # m, every vehicle
IN_PATH_MARGIN = 0.3  # m: a vehicle ahead is the ego's lead once their sides are closer than this
DT = 0.1  # s, the default time step
NO_LEAD = -1  # lead_id when no vehicle is ahead in the ego's path


# --- scenario types and their parameters -------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A scenario parameter: the range a sweep draws from (``low``..``high``), its default, its unit.

    A value outside the range may be set explicitly (a test at 0 km/h, say); the range is what random
    draws and the catalogue's documentation mean by "typical"."""

    low: float
    high: float
    default: float
    unit: str
    about: str


@dataclass(frozen=True)
class Script:
    """How one vehicle moves in a scenario (the ego's fields other than ``x``, ``y``, ``speed`` and the
    lane change are ignored: its policy drives it).

    Longitudinally: starting at ``speed``, a speed oscillation of ``speed_amplitude`` (m/s) with
    ``speed_period`` (s) until ``brake_time`` (s), then braking at ``brake_decel`` (m/s²) until it
    stands. Laterally: from ``y`` a move of ``lane_change_dy`` (m) that starts at ``lane_change_time``
    and takes ``lane_change_duration`` (s), on a smooth quintic profile."""

    x: float  # m, front bumper
    y: float  # m, centre line
    speed: float  # m/s
    speed_amplitude: float = 0.0
    speed_period: float = math.inf
    brake_time: float = math.inf
    brake_decel: float = 0.0
    lane_change_time: float = math.inf
    lane_change_duration: float = 1.0
    lane_change_dy: float = 0.0


@dataclass(frozen=True)
class ScenarioType:
    """One type of the catalogue: its parameters and how its vehicles start and move (ego first)."""

    name: str
    about: str
    params: Mapping[str, Param]
    build: Callable[[Mapping[str, float]], list[Script]]

    def defaults(self) -> dict[str, float]:
        return {name: p.default for name, p in self.params.items()}

    def table(self) -> pd.DataFrame:
        """The parameters as a table: range, default, unit and meaning."""
        return pd.DataFrame(
            [
                {"parameter": n, "low": p.low, "high": p.high, "default": p.default, "unit": p.unit}
                | {"about": p.about}
                for n, p in self.params.items()
            ]
        ).set_index("parameter")


_SPEED = "m/s"
_EGO_SPEED = Param(14.0, 36.0, 25.0, _SPEED, "the ego's speed at the start (50 to 130 km/h)")


def _set_speed(default: float) -> Param:
    return Param(14.0, 36.0, default, _SPEED, "the speed the ego's driver set (its policy's desired speed)")


def _ahead(gap: float) -> float:
    """The front-bumper x of a vehicle whose rear is ``gap`` metres ahead of the ego's front at x = 0."""
    return gap + LENGTH


def _car_following(p: Mapping[str, float]) -> list[Script]:
    lead = p["ego_speed"] + p["rel_speed"]
    if lead < 0:
        raise ValueError(f"car_following: ego_speed + rel_speed = {lead} m/s, a lead driving backwards")
    amplitude = min(p["speed_amplitude"], lead)  # the lead never reverses
    return [
        Script(0.0, 0.0, p["ego_speed"]),
        Script(_ahead(p["time_gap"] * p["ego_speed"]), 0.0, lead, amplitude, p["speed_period"]),
    ]


def _hard_braking(p: Mapping[str, float]) -> list[Script]:
    lead = max(0.0, p["ego_speed"] + p["rel_speed"])
    braking = Script(
        _ahead(p["time_gap"] * p["ego_speed"]),
        0.0,
        lead,
        brake_time=p["brake_time"],
        brake_decel=p["brake_decel"],
    )
    return [Script(0.0, 0.0, p["ego_speed"]), braking]


def _cut_in(p: Mapping[str, float]) -> list[Script]:
    speed = p["ego_speed"] + p["rel_speed"]
    if speed < 0:
        raise ValueError(f"cut_in: ego_speed + rel_speed = {speed} m/s, a vehicle driving backwards")
    # Placed so that the gap is cut_in_gap when it crosses the lane marking (half-way through its lane
    # change), if both kept their speeds.
    crossing = p["cut_in_time"] + p["cut_in_duration"] / 2
    cutter = Script(
        _ahead(p["cut_in_gap"] - p["rel_speed"] * crossing),
        LANE_WIDTH,
        speed,
        lane_change_time=p["cut_in_time"],
        lane_change_duration=p["cut_in_duration"],
        lane_change_dy=-LANE_WIDTH,
    )
    return [Script(0.0, 0.0, p["ego_speed"]), cutter]


def _lane_change(p: Mapping[str, float]) -> list[Script]:
    ego = Script(
        0.0,
        0.0,
        p["ego_speed"],
        lane_change_time=p["lane_change_time"],
        lane_change_duration=p["lane_change_duration"],
        lane_change_dy=LANE_WIDTH,
    )
    slow = Script(_ahead(p["lead_gap"]), 0.0, max(0.0, p["ego_speed"] + p["lead_rel_speed"]))
    target = Script(_ahead(p["target_gap"]), LANE_WIDTH, max(0.0, p["ego_speed"] + p["target_rel_speed"]))
    return [ego, slow, target]


CATALOGUE: dict[str, ScenarioType] = {
    "car_following": ScenarioType(
        "car_following",
        "The ego follows a lead in its lane whose speed oscillates (Euro NCAP CCRs, a stationary lead: "
        "rel_speed = -ego_speed; CCRm, a slower lead: speed_amplitude 0).",
        {
            "ego_speed": _EGO_SPEED,
            "set_speed": _set_speed(30.0),
            "rel_speed": Param(-8.0, 3.0, -2.0, _SPEED, "the lead's mean speed minus the ego's"),
            "time_gap": Param(0.8, 3.0, 1.8, "s", "the gap at the start divided by the ego's speed"),
            "speed_amplitude": Param(
                0.0, 4.0, 2.0, _SPEED, "the lead's speed oscillation (at most its speed)"
            ),
            "speed_period": Param(4.0, 20.0, 10.0, "s", "the period of that oscillation"),
        },
        _car_following,
    ),
    "hard_braking": ScenarioType(
        "hard_braking",
        "The lead in the ego's lane brakes hard at brake_time until it stands (Euro NCAP CCRb: both at "
        "50 km/h, 12 or 40 m apart, 2 or 6 m/s²).",
        {
            "ego_speed": Param(14.0, 36.0, 22.0, _SPEED, "the ego's speed at the start (50 to 130 km/h)"),
            "set_speed": _set_speed(22.0),
            "rel_speed": Param(-3.0, 3.0, 0.0, _SPEED, "the lead's speed minus the ego's, before it brakes"),
            "time_gap": Param(0.8, 3.0, 1.5, "s", "the gap at the start divided by the ego's speed"),
            "brake_time": Param(1.0, 4.0, 2.0, "s", "when the lead starts braking"),
            "brake_decel": Param(2.0, 9.0, 6.0, "m/s²", "how hard it brakes"),
        },
        _hard_braking,
    ),
    "cut_in": ScenarioType(
        "cut_in",
        "A vehicle in the lane to the left changes into the ego's lane ahead of it.",
        {
            "ego_speed": _EGO_SPEED,
            "set_speed": _set_speed(25.0),
            "rel_speed": Param(-8.0, 2.0, -3.0, _SPEED, "the cutting vehicle's speed minus the ego's"),
            "cut_in_gap": Param(
                5.0, 40.0, 15.0, "m", "from the ego's front to its rear when it crosses the lane marking"
            ),
            "cut_in_time": Param(0.5, 3.0, 1.0, "s", "when it starts to move over"),
            "cut_in_duration": Param(1.5, 4.0, 2.5, "s", "how long its lane change takes"),
        },
        _cut_in,
    ),
    "lane_change": ScenarioType(
        "lane_change",
        "The ego, behind a slower lead, changes to the lane on its left, where another vehicle drives.",
        {
            "ego_speed": _EGO_SPEED,
            "set_speed": _set_speed(30.0),
            "lead_gap": Param(15.0, 60.0, 30.0, "m", "to the slower lead in the ego's lane at the start"),
            "lead_rel_speed": Param(-10.0, 0.0, -5.0, _SPEED, "that lead's speed minus the ego's"),
            "target_gap": Param(10.0, 80.0, 40.0, "m", "to the vehicle ahead in the target lane"),
            "target_rel_speed": Param(-5.0, 5.0, 0.0, _SPEED, "its speed minus the ego's"),
            "lane_change_time": Param(0.5, 4.0, 2.0, "s", "when the ego starts to move over"),
            "lane_change_duration": Param(3.0, 6.0, 4.0, "s", "how long its lane change takes"),
        },
        _lane_change,
    ),
}
KINDS = tuple(CATALOGUE)


# --- sensor noise ------------------------------------------------------------------------------


#: A typical automotive radar, ``NoiseModel.radar(1.0)``: standard deviations and the dropout rate.
TYPICAL_RADAR = MappingProxyType(
    {"range_sd": 0.3, "range_rate_sd": 0.15, "accel_sd": 0.4, "dropout_rate": 0.01}
)


@dataclass(frozen=True)
class NoiseModel:
    """What the ego's sensor adds to the truth: per step, Gaussian noise on the range (the gap), the
    range rate (relative speed) and the lead's acceleration; a constant bias on range and range rate (a
    miscalibrated sensor); and dropouts, steps without a measurement, which start with probability
    ``dropout_rate`` per step and last ``dropout_steps`` steps on average. During a dropout the tracker
    holds the last measurement. The default is a perfect sensor: measured equals true."""

    range_sd: float = 0.0  # m
    range_rate_sd: float = 0.0  # m/s
    accel_sd: float = 0.0  # m/s²
    range_bias: float = 0.0  # m, positive: the sensor reads the lead farther than it is
    range_rate_bias: float = 0.0  # m/s
    dropout_rate: float = 0.0  # probability per step that a dropout starts
    dropout_steps: float = 3.0  # mean length of a dropout, in steps (at least 1)

    def __post_init__(self):
        for name in ("range_sd", "range_rate_sd", "accel_sd"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"NoiseModel.{name} must be 0 or more, not {getattr(self, name)}")
        if not 0 <= self.dropout_rate <= 1:
            raise ValueError(f"NoiseModel.dropout_rate must be between 0 and 1, not {self.dropout_rate}")
        if not self.dropout_steps >= 1:
            raise ValueError(f"NoiseModel.dropout_steps must be at least 1, not {self.dropout_steps}")

    @classmethod
    def radar(cls, level: float = 1.0, **changes: float) -> NoiseModel:
        """:data:`TYPICAL_RADAR` scaled by ``level`` (0: a perfect sensor, 1: typical, 10: a poor one), the
        dropout rate capped at 1; ``changes`` set other fields (a bias, say)."""
        if level < 0:
            raise ValueError(f"the noise level must be 0 or more, not {level}")
        scaled = {name: value * level for name, value in TYPICAL_RADAR.items()}
        scaled["dropout_rate"] = min(1.0, scaled["dropout_rate"])
        return cls(**(scaled | changes))

    @property
    def perfect(self) -> bool:
        return self == NoiseModel(dropout_steps=self.dropout_steps)


# --- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One run: a scenario type of :data:`CATALOGUE`, its parameters (missing ones take the type's
    defaults; unknown names raise ``KeyError``), the ego's sensor, the run's length and time step, and
    ``index`` and ``seed``, from which the run's noise is drawn. ``name`` (optional) becomes its
    ``run_id``; the default is ``<kind>-<seed>-<index>``. Run ids must be unique within a batch."""

    kind: str
    params: Mapping[str, float] = field(default_factory=dict)
    index: int = 0
    seed: int = 0
    noise: NoiseModel = NoiseModel()
    duration: float = 20.0  # s
    dt: float = DT  # s
    name: str = ""

    def __post_init__(self):
        if self.kind not in CATALOGUE:
            raise KeyError(f"unknown scenario type {self.kind!r}; the catalogue has {list(CATALOGUE)}")
        known = CATALOGUE[self.kind].params
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            raise KeyError(f"{self.kind} has no parameters {unknown}; it has {list(known)}")
        complete = {name: float(self.params.get(name, p.default)) for name, p in known.items()}
        bad = [name for name, value in complete.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"{self.kind}: parameters {bad} are not finite numbers")
        object.__setattr__(self, "params", complete)
        if not (self.dt > 0 and self.duration >= self.dt):
            raise ValueError(f"need dt > 0 and duration >= dt, not dt={self.dt}, duration={self.duration}")
        if self.index < 0 or self.seed < 0:
            raise ValueError(f"index and seed must be 0 or more, not {self.index} and {self.seed}")

    @property
    def run_id(self) -> str:
        return self.name or f"{self.kind}-{self.seed}-{self.index:04d}"

    @property
    def steps(self) -> int:
        """Rows of the run: t = 0, dt, ..., duration."""
        return round(self.duration / self.dt) + 1

    def rng(self, stream: int) -> np.random.Generator:
        """The run's own generator for ``stream`` (0: its parameters in a sweep, 1: its sensor noise),
        seeded from (seed, type, index): the same wherever and in whatever order the run is made."""
        return np.random.default_rng([self.seed, zlib.crc32(self.kind.encode()), self.index, stream])

    def scripts(self) -> list[Script]:
        return CATALOGUE[self.kind].build(self.params)


def grid(
    kind: str, values: Mapping[str, Sequence[float]], *, seed: int = 0, start: int = 0, **common
) -> list[Scenario]:
    """Every combination of ``values`` (parameter -> values; the others at their defaults), one scenario
    each, indices from ``start`` in the order of ``itertools.product``. ``common`` goes to every
    :class:`Scenario` (``noise``, ``duration``, ``dt``)."""
    names = list(values)
    return [
        Scenario(kind, dict(zip(names, combination, strict=True)), index=start + i, seed=seed, **common)
        for i, combination in enumerate(itertools.product(*(values[n] for n in names)))
    ]


def draw(
    kind: str,
    n: int,
    *,
    seed: int = 0,
    start: int = 0,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    fixed: Mapping[str, float] | None = None,
    **common,
) -> list[Scenario]:
    """``n`` scenarios of ``kind`` with indices ``start``.. and every parameter drawn uniformly from its
    range (``ranges`` overrides some ranges; ``fixed`` fixes some values). Scenario ``index`` draws from
    its own generator (:meth:`Scenario.rng`, stream 0): asking for more runs keeps the first ones.
    ``common`` goes to every :class:`Scenario` (``noise``, ``duration``, ``dt``)."""
    spec = CATALOGUE[kind].params
    bounds = {name: (p.low, p.high) for name, p in spec.items()} | dict(ranges or {})
    fixed = dict(fixed or {})
    unknown = sorted((set(bounds) | set(fixed)) - set(spec))
    if unknown:
        raise KeyError(f"{kind} has no parameters {unknown}")
    scenarios = []
    for index in range(start, start + n):
        rng = Scenario(kind, index=index, seed=seed).rng(0)
        u = rng.random(len(spec))  # one number per parameter, whether fixed or not: fixing keeps the others
        params = {
            name: fixed[name] if name in fixed else bounds[name][0] + ui * (bounds[name][1] - bounds[name][0])
            for name, ui in zip(spec, u, strict=True)
        }
        scenarios.append(Scenario(kind, params, index=index, seed=seed, **common))
    return scenarios


def ncap_style(noise: NoiseModel = NoiseModel(), duration: float = 20.0, dt: float = DT) -> list[Scenario]:
    """Twelve tests in the style of Euro NCAP's car-to-car rear tests (not its protocol: no target
    offset, no AEB/FCW timing, speeds and gaps rounded), each with a name:

    - ``CCRs-<km/h>``: a stationary lead, the ego at 50, 80 or 100 km/h, starting 4 s away;
    - ``CCRm-<km/h>``: a lead at 20 km/h, the ego at 50, 80 or 100 km/h, starting 4 s (closing) away;
    - ``CCRb-<gap>m-<d>``: both at 50 km/h, the lead 12 or 40 m ahead braking at 2 or 6 m/s² after 2 s;
    - ``cut-in-near`` / ``cut-in-far``: at 80 km/h, a vehicle 3 (5) m/s slower crosses the lane marking
      8 (15) m ahead.
    """
    kmh = 1 / 3.6
    tests = []
    for speed in (50, 80, 100):
        v = speed * kmh
        p = {"ego_speed": v, "set_speed": v, "rel_speed": -v, "time_gap": 4.0, "speed_amplitude": 0.0}
        tests.append((f"CCRs-{speed}", "car_following", p))
    for speed in (50, 80, 100):
        v, lead = speed * kmh, 20 * kmh
        time_gap = 4 * (v - lead) / v  # 4 s to collision
        p = {
            "ego_speed": v,
            "set_speed": v,
            "rel_speed": lead - v,
            "time_gap": time_gap,
            "speed_amplitude": 0.0,
        }
        tests.append((f"CCRm-{speed}", "car_following", p))
    for gap in (12, 40):
        for decel in (2, 6):
            v = 50 * kmh
            p = {"ego_speed": v, "set_speed": v, "rel_speed": 0.0, "time_gap": gap / v, "brake_decel": decel}
            tests.append((f"CCRb-{gap}m-{decel}", "hard_braking", p | {"brake_time": 2.0}))
    for name, gap, rel in (("cut-in-near", 8.0, -3.0), ("cut-in-far", 15.0, -5.0)):
        v = 80 * kmh
        p = {"ego_speed": v, "set_speed": v, "rel_speed": rel, "cut_in_gap": gap, "cut_in_time": 1.0}
        tests.append((name, "cut_in", p))
    return [
        Scenario(kind, params, index=i, noise=noise, duration=duration, dt=dt, name=name)
        for i, (name, kind, params) in enumerate(tests)
    ]


def scenario_table(scenarios: Iterable[Scenario]) -> pd.DataFrame:
    """One row per scenario: run_id, kind, index, seed, duration, dt, the noise model's fields
    (``noise.<field>``) and every parameter (empty where a type does not have it), in run order."""
    rows = []
    for s in scenarios:
        noise = {f"noise.{k}": v for k, v in dataclasses.asdict(s.noise).items()}
        rows.append(
            {"run_id": s.run_id, "kind": s.kind, "index": s.index, "seed": s.seed}
            | {"duration": s.duration, "dt": s.dt}
            | noise
            | s.params
        )
    return pd.DataFrame(rows)


# --- policies ----------------------------------------------------------------------------------


@dataclass
class Observation:
    """What the ego knows at one step, for every run of the batch (arrays of one entry per run).

    The lead's quantities are the sensor's (noisy, held through dropouts; ``gap`` is NaN and
    ``lead_present`` False while it sees no lead); the ego's own speed and acceleration are exact."""

    step: int
    t: float  # s
    dt: float  # s
    ego_speed: np.ndarray  # m/s
    ego_accel: np.ndarray  # m/s², what the vehicle did in the last step
    set_speed: np.ndarray  # m/s, the driver's set speed
    lead_present: np.ndarray  # bool
    gap: np.ndarray  # m, the ego's front to the lead's rear
    rel_speed: np.ndarray  # m/s, the lead's speed minus the ego's (negative: closing in)
    lead_accel: np.ndarray  # m/s²
    age: np.ndarray  # s since the sensor last delivered a measurement (0 when it just did)

    def features(self, no_lead_gap: float = 200.0) -> np.ndarray:
        """The observation as a matrix for a learned policy, one row per run and the columns
        :data:`FEATURES`; without a lead, the gap is ``no_lead_gap`` and its speed and acceleration
        the ego's own. :func:`policy_features` builds the same matrix from traces."""
        present = self.lead_present & np.isfinite(self.gap)
        return np.column_stack(
            [
                self.ego_speed,
                self.set_speed,
                np.where(present, self.gap, no_lead_gap),
                np.where(present, self.rel_speed, 0.0),
                np.where(present, self.lead_accel, 0.0),
                present.astype(float),
            ]
        )


FEATURES = ("ego_speed", "set_speed", "gap", "rel_speed", "lead_accel", "lead_present")


def policy_features(traces: pd.DataFrame, no_lead_gap: float = 200.0) -> np.ndarray:
    """:meth:`Observation.features` of every row of ``traces``: what the policy saw at each step (the
    ``meas_*`` columns), e.g. to train a learned policy on what IDM did (``ego_accel``)."""
    present = traces["meas_lead_present"].to_numpy(bool) & np.isfinite(traces["meas_gap"].to_numpy())
    return np.column_stack(
        [
            traces["ego_speed"].to_numpy(float),
            traces["set_speed"].to_numpy(float),
            np.where(present, traces["meas_gap"], no_lead_gap),
            np.where(present, traces["meas_rel_speed"], 0.0),
            np.where(present, traces["meas_lead_accel"], 0.0),
            present.astype(float),
        ]
    )


class Policy(Protocol):
    """Maps an :class:`Observation` to the acceleration the ego asks for (m/s², one per run). A policy
    may keep state between steps; :func:`simulate` calls its ``reset(runs)`` first if it has one."""

    def __call__(self, obs: Observation) -> np.ndarray: ...


@dataclass(frozen=True)
class IDM:
    """The Intelligent Driver Model (Treiber, Hennecke, Helbing 2000), the baseline policy::

        a = a_max [1 - (v / v0)^delta - (s* / s)^2],   s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))

    with ``v0`` the set speed, ``s`` the gap and ``dv = v - v_lead`` (the closing speed). It keeps a time
    gap ``T`` in steady following and brakes at about ``b`` (the comfortable deceleration) when it
    approaches in time; in an emergency it asks for more, and the vehicle brakes at most ``max_decel``
    (:class:`Vehicle`). Without a lead only the free-road term acts."""

    max_accel: float = 1.5  # m/s², a_max
    comfortable_decel: float = 2.0  # m/s², b
    time_gap: float = 1.5  # s, T
    min_gap: float = 2.0  # m, s0
    delta: float = 4.0

    def __call__(self, obs: Observation) -> np.ndarray:
        v = obs.ego_speed
        ratio = v / np.maximum(obs.set_speed, 0.1)
        free = ratio**4 if self.delta == 4.0 else ratio**self.delta
        has_lead = obs.lead_present & np.isfinite(obs.gap)
        closing = -np.where(has_lead, obs.rel_speed, 0.0)
        desired = self.min_gap + np.maximum(
            0.0, v * self.time_gap + v * closing / (2 * math.sqrt(self.max_accel * self.comfortable_decel))
        )
        gap = np.maximum(np.where(has_lead, obs.gap, np.inf), 0.1)  # a gap of 0 or less: brake hard
        interaction = np.where(has_lead, (desired / gap) ** 2, 0.0)
        return self.max_accel * (1 - free - interaction)


@dataclass(frozen=True)
class ACC:
    """Adaptive cruise control after Kesting, Treiber, Schönhof, Helbing (2008): IDM blended with the
    constant-acceleration heuristic (CAH). Where IDM would brake hard only because the gap is small
    (a vehicle cut in, but it is not slower), the CAH says the situation resolves itself, and the ACC
    brakes less; where the lead really closes in, it brakes as IDM does. ``coolness`` is 0.99 in the
    paper (0: plain IDM)."""

    idm: IDM = IDM()
    coolness: float = 0.99

    def __call__(self, obs: Observation) -> np.ndarray:
        a_idm = self.idm(obs)
        has_lead = obs.lead_present & np.isfinite(obs.gap)
        v = obs.ego_speed
        v_lead = np.where(has_lead, v + obs.rel_speed, v)
        s = np.maximum(np.where(has_lead, obs.gap, 1e6), 0.1)
        a_lead = np.minimum(np.where(has_lead, obs.lead_accel, 0.0), self.idm.max_accel)
        # CAH: the acceleration that keeps the gap if the lead keeps its acceleration.
        # (The first case only while the lead brakes: with a_lead = 0 it would divide 0 by 0.)
        stops_first = (a_lead < 0) & (v_lead * (v - v_lead) <= -2 * s * a_lead)
        denominator = v_lead**2 - 2 * s * a_lead
        cah_stop = np.divide(v**2 * a_lead, denominator, out=np.zeros_like(v), where=denominator > 0)
        cah_move = a_lead - np.maximum(v - v_lead, 0.0) ** 2 / (2 * s)
        cah = np.where(stops_first, cah_stop, cah_move)
        b = self.idm.comfortable_decel
        blended = (1 - self.coolness) * a_idm + self.coolness * (cah + b * np.tanh((a_idm - cah) / b))
        return np.where(has_lead & (a_idm < cah), blended, a_idm)


@dataclass(frozen=True)
class Constant:
    """Asks for the same acceleration at every step: ``Constant(2.0)`` is the "always accelerate"
    agent, the one a validation must catch."""

    accel: float = 2.0

    def __call__(self, obs: Observation) -> np.ndarray:
        return np.full_like(obs.ego_speed, self.accel)


#: Policies by name, for data sets described by parameters (:class:`Recipe`).
POLICIES: dict[str, Callable[[], Policy]] = {
    "idm": IDM,
    "acc": ACC,
    "always_accelerate": lambda: Constant(2.0),
}


@dataclass(frozen=True)
class Vehicle:
    """The ego vehicle's limits: it accelerates at most ``max_accel``, brakes at most ``max_decel``
    (about 0.9 g on a dry road), and reaches a requested acceleration through a first-order lag of
    ``response_time`` (brakes and engine do not jump; 0: at once)."""

    max_accel: float = 3.0  # m/s²
    max_decel: float = 9.0  # m/s²
    response_time: float = 0.2  # s


# --- labels ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labeller:
    """How steps are labelled. ``critical``: the time to collision is below ``ttc_critical`` or the time
    gap below ``thw_critical``; ``critical_ahead``: critical at some step within the next ``horizon``
    seconds (not counting the present; unknown beyond the run's end, so False there).

    TTC = gap / closing speed while the ego closes in (infinite otherwise or without a lead); time gap
    (THW, time headway) = gap / ego speed (infinite without a lead or while the ego stands)."""

    ttc_critical: float = 3.0  # s
    thw_critical: float = 0.8  # s
    horizon: float = 2.0  # s


def time_to_collision(gap, rel_speed) -> np.ndarray:
    """gap / (−rel_speed) where the ego closes in (rel_speed < 0), else infinite; NaN gaps: infinite."""
    gap, rel_speed = np.asarray(gap, float), np.asarray(rel_speed, float)
    closing = np.isfinite(gap) & (rel_speed < 0)
    return np.divide(gap, -rel_speed, out=np.full(gap.shape, np.inf), where=closing)


def time_gap(gap, ego_speed) -> np.ndarray:
    """gap / ego speed where there is a lead and the ego moves, else infinite."""
    gap, ego_speed = np.asarray(gap, float), np.asarray(ego_speed, float)
    moving = np.isfinite(gap) & (ego_speed > 0)
    return np.divide(np.maximum(gap, 0.0), ego_speed, out=np.full(gap.shape, np.inf), where=moving)


def label(traces: pd.DataFrame, labeller: Labeller = Labeller()) -> pd.DataFrame:
    """``traces`` with the label columns (re)computed: ``ttc``, ``thw``, ``critical`` and
    ``critical_ahead`` from the ground truth (``gap``, ``rel_speed``, ``ego_speed``), and ``ttc_perceived``,
    ``thw_perceived``, ``critical_perceived`` from the measurements (``meas_gap``, ``meas_rel_speed``).
    Rows must be grouped by run and in step order, as :func:`simulate` returns them."""
    columns = {name: traces[name].to_numpy() for name in ("run_id", "t", "ego_speed", "gap", "rel_speed")}
    columns |= {name: traces[name].to_numpy() for name in ("meas_gap", "meas_rel_speed")}
    out = traces.assign(**_labels(columns, labeller))
    return out[_column_order(out.columns)]


def _labels(columns: Mapping[str, np.ndarray], labeller: Labeller) -> dict[str, np.ndarray]:
    """The label columns from the columns ``run_id``, ``t``, ``ego_speed``, ``gap``, ``rel_speed``,
    ``meas_gap``, ``meas_rel_speed`` (rows grouped by run, in step order)."""
    labels = {}
    for suffix, gap, rel in (("", "gap", "rel_speed"), ("_perceived", "meas_gap", "meas_rel_speed")):
        ttc = time_to_collision(columns[gap], columns[rel])
        thw = time_gap(columns[gap], columns["ego_speed"])
        labels[f"ttc{suffix}"], labels[f"thw{suffix}"] = ttc, thw
        labels[f"critical{suffix}"] = (ttc < labeller.ttc_critical) | (thw < labeller.thw_critical)
    labels["critical_ahead"] = _ahead_of(
        columns["run_id"], columns["t"], labels["critical"], labeller.horizon
    )
    return labels


def _ahead_of(run: np.ndarray, t: np.ndarray, flags: np.ndarray, horizon: float) -> np.ndarray:
    """Per row: is ``flags`` True in any of the run's next rows within ``horizon`` seconds?"""
    if not len(flags):
        return flags
    window = round(horizon / _step(t))
    starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    ends = np.r_[starts[1:], len(run)]  # exclusive
    end_of_row = np.repeat(ends, ends - starts)
    counts = np.r_[0, np.cumsum(flags)]  # counts[i]: flags before row i
    rows = np.arange(len(flags))
    last = np.minimum(rows + window, end_of_row - 1)  # the window's last row, inclusive
    return counts[last + 1] - counts[rows + 1] > 0


def _step(t: np.ndarray) -> float:
    """The time step of traces, from their column ``t`` (the first step of a run that has two)."""
    dt = np.diff(np.asarray(t, float)[:1000])
    return float(dt[dt > 0][0]) if (dt > 0).any() else DT


def label_agreement(traces: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """How well the labeller that sees the measurements agrees with the ground truth about ``critical``,
    per value of ``by`` (a column; merged from elsewhere, e.g. the noise level) or over all rows:
    ``agreement`` (share of steps with the same label), Cohen's ``kappa`` (agreement beyond what two
    labellers with these rates would reach by chance: 1 perfect, 0 chance), ``missed`` (share of
    critical steps not perceived as critical), ``false_alarms`` (share of uncritical steps perceived as
    critical), and the steps counted."""

    def one(frame: pd.DataFrame) -> pd.Series:
        truth = frame["critical"].to_numpy(bool)
        seen = frame["critical_perceived"].to_numpy(bool)
        agreement = float(np.mean(truth == seen)) if len(truth) else math.nan
        p_true, p_seen = truth.mean() if len(truth) else 0.0, seen.mean() if len(seen) else 0.0
        chance = p_true * p_seen + (1 - p_true) * (1 - p_seen)
        kappa = (agreement - chance) / (1 - chance) if chance < 1 else 1.0
        return pd.Series(
            {
                "steps": len(truth),
                "critical_share": float(p_true),
                "agreement": agreement,
                "kappa": float(kappa),
                "missed": float(np.mean(~seen[truth])) if truth.any() else 0.0,
                "false_alarms": float(np.mean(seen[~truth])) if (~truth).any() else 0.0,
            }
        )

    if by is None:
        return one(traces).to_frame("all").T
    return traces.groupby(by, sort=True).apply(one, include_groups=False)


# --- the simulator -----------------------------------------------------------------------------

PHASES = ("free", "following", "lead_braking", "lead_stopped", "cut_in", "lane_change")


def simulate(
    scenarios: Sequence[Scenario],
    policy: Policy | None = None,
    *,
    vehicle: Vehicle = Vehicle(),
    labeller: Labeller = Labeller(),
) -> pd.DataFrame:
    """Simulate ``scenarios`` as one batch with the ego driven by ``policy`` (default :class:`IDM`);
    return the labelled traces: one row per run and step, runs in the given order, steps in order.

    A run ends at its ``duration``, or at the step where the ego touches another vehicle (that row has
    ``collision`` True). All scenarios must share one ``dt``. Columns:

    - ``run_id``, ``kind``, ``step``, ``t`` (s);
    - the ego, true: ``ego_x``, ``ego_y`` (m), ``ego_speed`` (m/s), ``ego_accel`` (m/s², over the
      step that starts here), ``set_speed``;
    - the lead, true: ``lead_id`` (the vehicle's number in its scenario, -1: none), ``lead_present``,
      ``gap`` (m, NaN without a lead), ``rel_speed`` (lead minus ego, m/s), ``lead_speed``, ``lead_accel``;
    - measured, what the policy saw: ``meas_valid`` (the sensor delivered this step; False in a dropout,
      where the values are the last ones held), ``meas_age`` (s), ``meas_lead_present``, ``meas_gap``,
      ``meas_rel_speed``, ``meas_lead_accel``;
    - labels (:func:`label`): ``ttc``, ``thw``, ``critical``, ``critical_ahead``, ``phase`` (one of
      :data:`PHASES`), ``collision``, and ``ttc_perceived``, ``thw_perceived``, ``critical_perceived``.
    """
    policy = IDM() if policy is None else policy
    check_batch(scenarios)
    dt = scenarios[0].dt
    if hasattr(policy, "reset"):
        policy.reset(len(scenarios))

    runs, n_steps = len(scenarios), max(s.steps for s in scenarios)
    scripts = [s.scripts() for s in scenarios]
    n_veh = max(len(v) for v in scripts)

    def per_vehicle(name: str, fill: float) -> np.ndarray:
        out = np.full((runs, n_veh), fill)
        for r, vehicles in enumerate(scripts):
            out[r, : len(vehicles)] = [getattr(v, name) for v in vehicles]
        return out

    present = np.zeros((runs, n_veh), bool)
    for r, vehicles in enumerate(scripts):
        present[r, : len(vehicles)] = True
    present[:, 0] = False  # "others": the ego is never its own lead
    x, y0, v = per_vehicle("x", -1e9), per_vehicle("y", 0.0), per_vehicle("speed", 0.0)
    amp, period = per_vehicle("speed_amplitude", 0.0), per_vehicle("speed_period", math.inf)
    omega = np.where(np.isfinite(period), 2 * math.pi / np.where(np.isfinite(period), period, 1.0), 0.0)
    brake_t, brake_d = per_vehicle("brake_time", math.inf), per_vehicle("brake_decel", 0.0)
    lc_t, lc_T = per_vehicle("lane_change_time", math.inf), per_vehicle("lane_change_duration", 1.0)
    lc_dy = per_vehicle("lane_change_dy", 0.0)
    set_speed = np.array([s.params["set_speed"] for s in scenarios])
    run_steps = np.array([s.steps for s in scenarios])

    tracker = Tracker(scenarios, n_steps)

    # What each step records; only the steps a run lived are kept (ego_x is NaN at the others).
    floats = "ego_x ego_y ego_speed ego_accel gap rel_speed lead_speed lead_accel meas_age meas_gap"
    record = {name: np.empty((runs, n_steps)) for name in f"{floats} meas_rel_speed meas_lead_accel".split()}
    record["ego_x"][:] = np.nan
    for name in ("lead_present", "meas_valid", "meas_lead_present", "collision"):
        record[name] = np.empty((runs, n_steps), bool)
    record["lead_id"] = np.empty((runs, n_steps), np.int16)
    record["phase"] = np.empty((runs, n_steps), np.int8)

    ego_accel = np.zeros(runs)
    alive = np.ones(runs, bool)
    rows = np.arange(runs)
    lag = min(1.0, dt / vehicle.response_time) if vehicle.response_time > 0 else 1.0

    for k in range(n_steps):
        t = k * dt
        alive &= k < run_steps
        if not alive.any():
            break
        # Lateral positions from the scripts (quintic: smooth start and end).
        tau = np.clip((t - lc_t) / lc_T, 0.0, 1.0)
        y = y0 + lc_dy * tau**3 * (10 - 15 * tau + 6 * tau**2)
        # The others' accelerations: oscillating until they brake, then braking until they stand.
        braking = t >= brake_t
        accel = np.where(braking, -brake_d, amp * omega * np.cos(omega * t))
        accel = np.where((v <= 0) & (accel < 0), 0.0, accel)
        accel[:, 0] = 0.0

        # The ego's lead: the nearest vehicle ahead whose side is within IN_PATH_MARGIN of the ego's.
        ego_x, ego_y, ego_v = x[:, 0], y[:, 0], v[:, 0]
        side = np.abs(y - ego_y[:, None]) < WIDTH + IN_PATH_MARGIN
        gaps = x - LENGTH - ego_x[:, None]
        ahead = present & side & (x > ego_x[:, None])
        candidate = np.where(ahead, gaps, np.inf)
        lead = np.argmin(candidate, axis=1)
        has_lead = np.isfinite(candidate[rows, lead])
        gap = np.where(has_lead, candidate[rows, lead], np.nan)
        lead_v = np.where(has_lead, v[rows, lead], np.nan)
        lead_a = np.where(has_lead, accel[rows, lead], np.nan)
        rel = lead_v - ego_v
        # Contact: the bodies overlap along the road and across it.
        overlap = present & (np.abs(y - ego_y[:, None]) < WIDTH) & (x - LENGTH < ego_x[:, None])
        overlap &= x > (ego_x - LENGTH)[:, None]
        collided = overlap.any(axis=1) & alive

        valid = tracker.measure(k, dt, gap, rel, lead_a, has_lead)
        obs = tracker.observation(k, t, dt, ego_v, ego_accel, set_speed)
        ego_accel = actuate(policy, obs, alive, vehicle, lag, ego_accel, ego_v)
        accel[:, 0] = ego_accel

        # What phase the run is in, from the scripts (a later line wins over an earlier one).
        braking_now = present & braking & (brake_d > 0)
        moving_over = present & np.isfinite(lc_t) & (tau > 0) & (tau < 1)
        phase = np.where(has_lead, 1, 0)
        phase = np.where((braking_now & (v <= 0)).any(axis=1), 3, phase)
        phase = np.where((braking_now & (v > 0)).any(axis=1), 2, phase)
        phase = np.where(moving_over.any(axis=1), 4, phase)
        phase = np.where((tau[:, 0] > 0) & (tau[:, 0] < 1), 5, phase)

        true = {"ego_x": ego_x, "ego_y": ego_y, "ego_speed": ego_v, "ego_accel": ego_accel, "gap": gap}
        true |= {"rel_speed": rel, "lead_speed": lead_v, "lead_accel": lead_a, "lead_present": has_lead}
        true |= {"lead_id": np.where(has_lead, lead, NO_LEAD), "collision": collided, "phase": phase}
        for name, value in (true | tracker.measured(valid)).items():
            record[name][alive, k] = value[alive]
        alive &= ~collided  # the run ends with the collision's step

        # Ballistic update; a vehicle that would reverse stops within the step.
        v_next = v + accel * dt
        stops = v_next < 0
        safe = np.where(stops, accel, 1.0)
        x = x + np.where(stops, -(v**2) / (2 * safe), v * dt + 0.5 * accel * dt**2)
        v = np.maximum(v_next, 0.0)

    columns = trace_columns(record, scenarios, set_speed)
    columns |= _labels(columns, labeller)
    return pd.DataFrame({name: columns[name] for name in _COLUMNS})


def check_batch(scenarios: Sequence[Scenario]) -> None:
    """A batch every simulator accepts: some scenarios, unique run ids, one ``dt``."""
    if not scenarios:
        raise ValueError("no scenarios to simulate")
    ids = [s.run_id for s in scenarios]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"run ids must be unique in a batch: {twice[:5]} occur more than once")
    if any(s.dt != scenarios[0].dt for s in scenarios):
        raise ValueError("all scenarios of a batch need the same dt")


class Tracker:
    """The ego's radar and tracker for a batch of runs, shared by every simulator of these scenarios:
    each run's noise drawn from its own generator (``Scenario.rng(1)``: the same in any batch, padded
    to ``n_steps``) with its :class:`NoiseModel`'s spread, bias and dropouts; where the sensor
    delivers, truth + noise + bias, and what the ego last measured held through a dropout."""

    def __init__(self, scenarios: Sequence[Scenario], n_steps: int):
        runs = len(scenarios)
        self.normal = np.zeros((runs, n_steps, 3))
        self.uniform = np.ones((runs, n_steps))
        for r, s in enumerate(scenarios):
            rng = s.rng(1)
            self.normal[r, : s.steps] = rng.standard_normal((s.steps, 3))
            self.uniform[r, : s.steps] = rng.random(s.steps)
        noise = [s.noise for s in scenarios]
        self.sd = np.array([[m.range_sd, m.range_rate_sd, m.accel_sd] for m in noise])
        self.bias = np.array([[m.range_bias, m.range_rate_bias, 0.0] for m in noise])
        self.drop_start = np.array([m.dropout_rate for m in noise])
        self.drop_stay = np.array([1 - 1 / m.dropout_steps for m in noise])
        # What the ego last measured (NaN / False: nothing yet).
        self.held = np.full((runs, 3), np.nan)
        self.present = np.zeros(runs, bool)
        self.age = np.zeros(runs)
        self.dropping = np.zeros(runs, bool)

    def measure(self, k: int, dt: float, gap, rel, lead_a, has_lead) -> np.ndarray:
        """Step ``k``'s measurement of the true lead; returns where the sensor delivered."""
        u = self.uniform[:, k]
        self.dropping = np.where(self.dropping, u < self.drop_stay, u < self.drop_start)
        valid = ~self.dropping
        measured = np.column_stack([gap, rel, lead_a]) + self.sd * self.normal[:, k] + self.bias
        self.held = np.where(valid[:, None], measured, self.held)
        self.present = np.where(valid, has_lead, self.present)
        self.age = np.where(valid, 0.0, self.age + dt)
        return valid

    def observation(self, k: int, t: float, dt: float, ego_v, ego_accel, set_speed) -> Observation:
        """What the policy sees at step ``k`` (copies: a policy may keep them)."""
        held = self.held
        return Observation(
            k, t, dt, ego_v.copy(), ego_accel.copy(), set_speed, self.present.copy(),
            held[:, 0].copy(), held[:, 1].copy(), held[:, 2].copy(), self.age.copy(),
        )  # fmt: skip

    def measured(self, valid: np.ndarray) -> dict[str, np.ndarray]:
        """The step's measured columns."""
        held, present = self.held, self.present
        return {
            "meas_valid": valid,
            "meas_age": self.age,
            "meas_lead_present": present,
            "meas_gap": np.where(present, held[:, 0], np.nan),
            "meas_rel_speed": np.where(present, held[:, 1], np.nan),
            "meas_lead_accel": np.where(present, held[:, 2], np.nan),
        }


def actuate(
    policy: Policy, obs: Observation, alive, vehicle: Vehicle, lag: float, ego_accel, ego_v
) -> np.ndarray:
    """The ego's acceleration over the next step: what ``policy`` asks, within the vehicle's limits,
    reached with its first-order lag; a standing ego does not reverse."""
    runs = len(ego_v)
    asked = np.broadcast_to(np.asarray(policy(obs), float), (runs,))
    if np.isnan(asked[alive]).any():
        raise ValueError(f"the policy returned NaN at step {obs.step} (t = {obs.t:.2f} s)")
    asked = np.clip(asked, -vehicle.max_decel, vehicle.max_accel)
    ego_accel = ego_accel + lag * (asked - ego_accel)
    return np.where((ego_v <= 0) & (ego_accel < 0), 0.0, ego_accel)


def trace_columns(
    record: Mapping[str, np.ndarray], scenarios: Sequence[Scenario], set_speed
) -> dict[str, np.ndarray]:
    """The unlabelled columns: the steps each run lived (``ego_x`` recorded, within its duration), run
    by run, from ``record`` (one runs × steps array per column, ``phase`` as indices into PHASES)."""
    runs, n_steps = record["ego_x"].shape
    dt = scenarios[0].dt
    steps = np.arange(n_steps)
    run_steps = np.array([s.steps for s in scenarios])
    kept = (steps[None, :] < run_steps[:, None]) & np.isfinite(record["ego_x"])
    counts = kept.sum(axis=1)
    columns = {
        "run_id": np.repeat(np.array([s.run_id for s in scenarios], dtype=object), counts),
        "kind": np.repeat(np.array([s.kind for s in scenarios], dtype=object), counts),
        "step": np.broadcast_to(steps, (runs, n_steps))[kept].astype(np.int32),
        "t": np.broadcast_to(steps * dt, (runs, n_steps))[kept],
        "set_speed": np.repeat(set_speed, counts),
    }
    columns |= {name: values[kept] for name, values in record.items()}
    columns["phase"] = np.array(PHASES, dtype=object)[columns["phase"]]
    return columns


_COLUMNS = (
    "run_id kind step t ego_x ego_y ego_speed ego_accel set_speed lead_id lead_present gap rel_speed "
    "lead_speed lead_accel meas_valid meas_age meas_lead_present meas_gap meas_rel_speed meas_lead_accel "
    "ttc thw critical critical_ahead phase collision ttc_perceived thw_perceived critical_perceived"
).split()


def _column_order(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    return [c for c in _COLUMNS if c in columns] + [c for c in columns if c not in _COLUMNS]


# --- metrics per run ---------------------------------------------------------------------------


def run_metrics(traces: pd.DataFrame) -> pd.DataFrame:
    """One row per run (indexed by ``run_id``, in the traces' order), from the ground truth:

    - ``collision`` (bool) and ``impact_speed`` (m/s, the closing speed at contact; 0 without);
    - ``min_gap`` (m), ``min_ttc`` (s) and ``min_thw`` (s, the smallest time gap; infinite if never
      closing in / never behind a lead);
    - ``peak_decel`` (m/s², the ego's hardest braking, 0 if it never braked) and ``max_jerk`` (m/s³, the
      largest change of its acceleration per second, either way);
    - ``critical_share`` (share of steps labelled critical), ``steps``, ``duration`` (s simulated).
    """
    frame = traces[["run_id", "kind", "t", "gap", "ttc", "thw", "ego_accel", "collision", "critical"]].copy()
    frame["closing"] = np.where(traces["collision"], -traces["rel_speed"].fillna(0.0), 0.0)
    frame["jerk"] = np.abs(frame.groupby("run_id", sort=False)["ego_accel"].diff()) / _step(traces["t"])
    per_run = frame.groupby("run_id", sort=False).agg(
        kind=("kind", "first"),
        collision=("collision", "any"),
        impact_speed=("closing", "max"),
        min_gap=("gap", "min"),
        min_ttc=("ttc", "min"),
        min_thw=("thw", "min"),
        peak_decel=("ego_accel", "min"),
        max_jerk=("jerk", "max"),
        critical_share=("critical", "mean"),
        steps=("t", "size"),
        duration=("t", "max"),
    )
    per_run["peak_decel"] = np.maximum(-per_run["peak_decel"], 0.0)
    per_run["impact_speed"] = np.maximum(per_run["impact_speed"], 0.0)
    per_run["max_jerk"] = per_run["max_jerk"].fillna(0.0)
    return per_run


# --- data sets ---------------------------------------------------------------------------------


def assign_parts(scenarios: Sequence[Scenario], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """run_id -> part: each type's runs shuffled (seeded from ``seed`` and the type) and cut into
    ``fractions`` (part -> share, in the given order; rounded, the last part takes the rest). A run is in
    exactly one part: its steps are never split, since neighbouring steps of a run are nearly the same
    data and would leak from training into the test."""
    if not fractions or abs(sum(fractions.values()) - 1) > 1e-9 or min(fractions.values()) < 0:
        raise ValueError(f"the fractions must be 0 or more and add up to 1: {dict(fractions)}")
    parts, names = {}, list(fractions)
    by_kind: dict[str, list[Scenario]] = {}
    for s in scenarios:
        by_kind.setdefault(s.kind, []).append(s)
    for kind, runs in by_kind.items():
        runs = sorted(runs, key=lambda s: (s.seed, s.index, s.run_id))
        order = np.random.default_rng([seed, zlib.crc32(kind.encode()), 2]).permutation(len(runs))
        ends = np.cumsum(list(part_sizes(fractions, len(runs)).values()))
        for position, r in enumerate(order):
            parts[runs[r].run_id] = names[int(np.searchsorted(ends, position, side="right"))]
    return parts


def part_sizes(fractions: Mapping[str, float], runs: int) -> dict[str, int]:
    """How many of ``runs`` runs (of one type) :func:`assign_parts` puts into each part: the cumulative
    shares rounded, the last part taking the rest."""
    ends = np.round(np.cumsum(list(fractions.values())) * runs).astype(int)
    ends[-1] = runs
    return dict(zip(fractions, np.diff(np.r_[0, ends]).tolist(), strict=True))


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as Parquet bytes that depend on its contents only: rows in the given order, no index,
    no pandas metadata (which names pandas' version), no timestamps; zstd-compressed. The same frame
    gives the same bytes with the same pyarrow version (its name is in the file's footer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    return sink.getvalue().to_pybytes()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True)
class Recipe:
    """A data set described by a few parameters: ``runs_per_kind`` random draws (:func:`draw`) of each
    type in ``kinds``, their sensor noise ``NoiseModel.radar(level)`` with the levels of ``noise_levels``
    taken in turn (run index modulo their number), simulated with the named ``policy``
    (:data:`POLICIES`) and labelled, then split by run into ``parts`` (name -> share, drawn in this
    order). :meth:`params` and :meth:`from_params` turn it into flat text parameters (MLflow's) and
    back, so a logged data set can be made again anywhere."""

    kinds: tuple[str, ...] = KINDS
    runs_per_kind: int = 25
    seed: int = 0
    noise_levels: tuple[float, ...] = (0.0, 1.0)
    duration: float = 20.0
    dt: float = DT
    policy: str = "idm"
    ttc_critical: float = Labeller.ttc_critical
    thw_critical: float = Labeller.thw_critical
    horizon: float = Labeller.horizon
    parts: tuple[tuple[str, float], ...] = (("testing", 0.2), ("validation", 0.2), ("training", 0.6))

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in CATALOGUE]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must name types of the catalogue {list(CATALOGUE)}: {list(self.kinds)}")
        if self.runs_per_kind < 1 or not self.noise_levels:
            raise ValueError("a recipe needs at least one run per type and one noise level")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {list(POLICIES)}")
        sizes = part_sizes(dict(self.parts), self.runs_per_kind)
        empty = [name for name, runs in sizes.items() if runs < 1]
        if empty:
            raise ValueError(
                f"{self.runs_per_kind} runs per type leave the parts {empty} without runs ({sizes}); "
                "ask for more runs or larger shares"
            )

    def labeller(self) -> Labeller:
        return Labeller(self.ttc_critical, self.thw_critical, self.horizon)

    def noise_level(self, scenario: Scenario) -> float:
        return self.noise_levels[scenario.index % len(self.noise_levels)]

    def scenarios(self) -> list[Scenario]:
        out = []
        for kind in self.kinds:
            for s in draw(kind, self.runs_per_kind, seed=self.seed, duration=self.duration, dt=self.dt):
                out.append(dataclasses.replace(s, noise=NoiseModel.radar(self.noise_level(s))))
        return out

    def build(self) -> Dataset:
        """Simulate and label every run, and split them by run into the parts."""
        scenarios = self.scenarios()
        traces = simulate(scenarios, POLICIES[self.policy](), labeller=self.labeller())
        table = scenario_table(scenarios)
        table.insert(4, "noise_level", [self.noise_level(s) for s in scenarios])
        part_of = assign_parts(scenarios, dict(self.parts), self.seed)
        table.insert(1, "part", table["run_id"].map(part_of))
        return Dataset(self, table, traces)

    def params(self) -> dict[str, str]:
        """The recipe as flat text parameters (exact: floats as their shortest round-trip text)."""
        return {
            "kinds": ",".join(self.kinds),
            "runs_per_kind": str(self.runs_per_kind),
            "seed": str(self.seed),
            "noise_levels": ",".join(repr(float(level)) for level in self.noise_levels),
            "duration": repr(float(self.duration)),
            "dt": repr(float(self.dt)),
            "policy": self.policy,
            "ttc_critical": repr(float(self.ttc_critical)),
            "thw_critical": repr(float(self.thw_critical)),
            "horizon": repr(float(self.horizon)),
            "parts": ",".join(f"{name}:{share!r}" for name, share in self.parts),
        }

    def key(self) -> str:
        """A short name for the recipe (12 hex digits of the SHA-256 of its parameters): a folder named
        after it holds this data set and no other."""
        text = "\n".join(f"{k}={v}" for k, v in sorted(self.params().items()))
        return sha256(text.encode())[:12]

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Recipe:
        """The recipe :meth:`params` described (other keys are ignored)."""
        parts = tuple((n, float(s)) for n, s in (item.split(":") for item in params["parts"].split(",")))
        return cls(
            kinds=tuple(params["kinds"].split(",")),
            runs_per_kind=int(params["runs_per_kind"]),
            seed=int(params["seed"]),
            noise_levels=tuple(float(level) for level in params["noise_levels"].split(",")),
            duration=float(params["duration"]),
            dt=float(params["dt"]),
            policy=params["policy"],
            ttc_critical=float(params["ttc_critical"]),
            thw_critical=float(params["thw_critical"]),
            horizon=float(params["horizon"]),
            parts=parts,
        )


@dataclass
class Dataset:
    """A recipe's data: ``scenarios`` (one row per run: run_id, part, kind, index, seed, noise level and
    fields, parameters) and ``traces`` (:func:`simulate`'s rows, runs in the scenarios' order)."""

    recipe: Recipe
    scenarios: pd.DataFrame
    traces: pd.DataFrame

    def part(self, name: str) -> pd.DataFrame:
        """The traces of the runs in part ``name``, in run order, with a fresh index."""
        runs = self.scenarios.loc[self.scenarios["part"] == name, "run_id"]
        return self.traces[self.traces["run_id"].isin(runs)].reset_index(drop=True)

    def part_bytes(self) -> dict[str, bytes]:
        """Each part's traces as Parquet (:func:`parquet_bytes`), in the recipe's order of parts, and the
        scenario table as ``"scenarios"``."""
        files = {name: parquet_bytes(self.part(name)) for name, _ in self.recipe.parts}
        return files | {"scenarios": parquet_bytes(self.scenarios)}

    def sha256(self) -> dict[str, str]:
        """The SHA-256 of each of :meth:`part_bytes`: a fingerprint of every byte of the data."""
        return {name: sha256(content) for name, content in self.part_bytes().items()}

    def write(self, folder: Path | str) -> dict[str, Path]:
        """``traces-<part>.parquet`` per part and ``scenarios.parquet`` in ``folder`` (created); returns
        part (or "scenarios") -> path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, content in self.part_bytes().items():
            paths[name] = folder / ("scenarios.parquet" if name == "scenarios" else f"traces-{name}.parquet")
            paths[name].write_bytes(content)
        return paths
