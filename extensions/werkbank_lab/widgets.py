"""Widgets for a werkbank session: a live training panel and a session panel.

``TrainingPanel`` listens to a :class:`~werkbank_lab.tracking.MetricLogger` (the values that go to
MLflow are the values on screen) and shows progress, ETA and the curves. It redraws at most every
``min_interval`` seconds and draws the curves as a small inline SVG, not with matplotlib: a redraw
costs about a millisecond, so the panel stays well under the 2 % tracking budget of a training step.

``SessionPanel`` shows the Slurm job, node, profile, walltime left (with a warning before the end)
and, where ``nvidia-smi`` exists, GPU utilisation and memory; on a CPU-only session it says so.

Both work headless (papermill): widgets without a front end simply hold their state.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable

import ipywidgets as widgets

from werkbank_core import slurm

#: Colours of the curves, in the order of ``keys``.
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def svg_curves(series: dict[str, list[tuple[int, float]]], width: int = 480, height: int = 160) -> str:
    """Line charts of ``{key: [(step, value), ...]}`` as one inline SVG, at most ``width`` points each."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<svg width='{width}' height='{height}'></svg>"
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    x0, x1 = min(steps), max(steps) or 1
    y0, y1 = min(values), max(values)
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 24

    def xy(step: int, value: float) -> str:
        x = pad + (step - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        y = height - pad - (value - y0) / (y1 - y0) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    parts = [f"<svg width='{width}' height='{height}' style='font: 11px sans-serif'>"]
    parts.append(
        f"<rect x='{pad}' y='{pad}' width='{width - 2 * pad}' height='{height - 2 * pad}' "
        "fill='none' stroke='#ccc'/>"
    )
    for i, (key, values_of_key) in enumerate(series.items()):
        every = max(1, len(values_of_key) // width)  # no more points than pixels
        line = " ".join(xy(s, v) for s, v in values_of_key[::every] + values_of_key[-1:])
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f"<polyline points='{line}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        parts.append(f"<text x='{pad + 4 + 90 * i}' y='{pad - 6}' fill='{colour}'>{html.escape(key)}</text>")
    parts.append(f"<text x='{pad}' y='{height - 6}'>{x0}</text>")
    parts.append(f"<text x='{width - pad}' y='{height - 6}' text-anchor='end'>step {x1}</text>")
    parts.append(f"<text x='2' y='{height - pad}'>{y0:.3g}</text><text x='2' y='{pad + 10}'>{y1:.3g}</text>")
    parts.append("</svg>")
    return "".join(parts)


class TrainingPanel:
    """Progress, ETA and live curves of a training loop; pass it to ``MetricLogger(listeners=[...])``.

    ``total_steps`` is the step count at the end (for the bar and the ETA); ``keys`` the metrics to
    plot (others are listed as numbers only; empty: plot every key).
    """

    def __init__(
        self,
        total_steps: int | None = None,
        keys: Iterable[str] = (),
        title: str = "Training",
        min_interval: float = 0.5,
    ):
        self.total_steps = total_steps
        self.keys = tuple(keys)
        self.min_interval = min_interval
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.latest: dict[str, float] = {}
        self.step = 0
        self.started = time.monotonic()
        self.renders = 0
        # Never rendered: the first value is drawn at once (time.monotonic() may be small, e.g.
        # shortly after a machine booted, so 0.0 would be 'recently').
        self._last_render = -math.inf
        self.bar = widgets.IntProgress(value=0, min=0, max=total_steps or 1, description=title)
        self.status = widgets.HTML()
        self.chart = widgets.HTML()
        self.widget = widgets.VBox([self.bar, self.status, self.chart])

    def __call__(self, key: str, value: float, step: int) -> None:
        """A :class:`MetricLogger` listener: record the value, redraw if it is time."""
        self.latest[key] = value
        if not self.keys or key in self.keys:
            self.series.setdefault(key, []).append((step, value))
        self.step = max(self.step, step)
        now = time.monotonic()
        if now - self._last_render >= self.min_interval:
            self.render(now)

    def eta_seconds(self) -> float | None:
        if not self.total_steps or self.step <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.step * max(0, self.total_steps - self.step)

    def render(self, now: float | None = None) -> None:
        self._last_render = time.monotonic() if now is None else now
        self.renders += 1
        if self.total_steps:
            self.bar.value = min(self.step, self.total_steps)
        eta = self.eta_seconds()
        numbers = " · ".join(f"{html.escape(k)} {v:.4g}" for k, v in self.latest.items())
        self.status.value = (
            f"step {self.step}{f' / {self.total_steps}' if self.total_steps else ''}"
            f" · elapsed {format_seconds(time.monotonic() - self.started)}"
            f"{f' · ETA {format_seconds(eta)}' if eta is not None else ''} · {numbers}"
        )
        self.chart.value = svg_curves(self.series)

    def finish(self) -> None:
        """Draw the final state (the last values may have come after the last redraw)."""
        self.render()
        self.bar.bar_style = "success"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


# --- the session panel -----------------------------------------------------------------------


parse_slurm_time = slurm.parse_time


def walltime_left(job_id: str, squeue: str = "squeue") -> int | None:
    """Seconds until Slurm ends ``job_id``, from squeue; None when unknown."""
    try:
        return slurm.parse_time(slurm.time_left(job_id, squeue=squeue, timeout=10))
    except slurm.SlurmCommandError:
        return None


def gpu_status(nvidia_smi: str = "nvidia-smi") -> list[dict[str, str]]:
    """One dict per GPU (index, name, utilization %, memory used/total MiB); [] without nvidia-smi."""
    if not shutil.which(nvidia_smi):
        return []
    fields = ("index", "name", "utilization.gpu", "memory.used", "memory.total")
    try:
        out = subprocess.run(
            [nvidia_smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [
        dict(zip(fields, (part.strip() for part in line.split(",")), strict=False))
        for line in out.stdout.splitlines()
        if line.strip()
    ]


class SessionPanel:
    """Job, node, profile, walltime left and GPUs of this session, refreshed on demand or on a timer."""

    def __init__(self, warn_minutes: int = 15, environ: dict[str, str] | None = None):
        self.warn_minutes = warn_minutes
        self.environ = dict(os.environ if environ is None else environ)
        self.table = widgets.HTML()
        self.warning = widgets.HTML()
        self.button = widgets.Button(description="Refresh", icon="refresh")
        self.button.on_click(lambda _: self.refresh())
        self.widget = widgets.VBox([self.warning, self.table, self.button])
        self._timer: threading.Event | None = None
        self.refresh()

    def facts(self) -> dict[str, str]:
        env = self.environ
        job_id = env.get("SLURM_JOB_ID", "")
        facts = {
            "Slurm job": job_id or "none (not in a Slurm job)",
            "Node": env.get("SLURMD_NODENAME") or "this machine",
            "Profile": env.get("WERKBANK_PROFILE") or "n/a",
        }
        self.seconds_left = walltime_left(job_id) if job_id else None
        facts["Walltime left"] = format_seconds(self.seconds_left) if self.seconds_left is not None else "n/a"
        gpus = gpu_status()
        if gpus:
            for gpu in gpus:
                facts[f"GPU {gpu['index']}"] = (
                    f"{gpu['name']} · {gpu['utilization.gpu']} % busy · "
                    f"{gpu['memory.used']} / {gpu['memory.total']} MiB"
                )
        else:
            facts["GPUs"] = "none: CPU only"
        return facts

    def refresh(self) -> None:
        facts = self.facts()
        rows = "".join(
            f"<tr><th style='text-align:left; padding-right:1.5em'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in facts.items()
        )
        self.table.value = f"<table>{rows}</table>"
        left = self.seconds_left
        if left is not None and left < self.warn_minutes * 60:
            self.warning.value = (
                f"<b style='color:#b00'>Your session ends in {format_seconds(left)}: save your work. "
                "Slurm stops the job at its walltime.</b>"
            )
        else:
            self.warning.value = ""

    def start(self, interval: float = 60.0) -> None:
        """Refresh every ``interval`` seconds in the background until :meth:`stop`."""
        self.stop()
        stop = self._timer = threading.Event()

        def loop():
            while not stop.wait(interval):
                self.refresh()

        threading.Thread(target=loop, name="werkbank-session-panel", daemon=True).start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.set()
            self._timer = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
