"""How long each notebook template takes at each size (``smoke``, ``workshop``, ``full``) on this machine:
the figures the templates state at their top, and what a trainer re-measures on a course's hardware.

Run after ``deploy/install.sh --dev``::

    /opt/werkbank/venv/bin/python benchmarks/template_sizes.py                        # smoke and workshop
    /opt/werkbank/venv/bin/python benchmarks/template_sizes.py --sizes full --templates 03,05
    /opt/werkbank/venv/bin/python benchmarks/template_sizes.py --rounds 3 --sizes smoke

A private ``mlflow server`` (SQLite, proxied artifacts, as the hub runs it) on a free port, unless
``MLFLOW_TRACKING_URI`` names one. Templates run with papermill in a scratch folder, in lifecycle
order; a template whose input another one produces (``needs`` in ``notebooks/catalogue.yaml``) gets it
from the same size's run of that template, so the figure is what a participant waits for at that
step. Each template's time includes the kernel's start, as a participant's "Run All" does not. Printed:
one row per template, the median seconds per size, and the ratio to the smoke size. Nothing is
asserted; a failed run prints its error and the others go on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import papermill
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/: the MLflow server the tests start
from tests.mlflow_server import MlflowServer  # noqa: E402

SIZES = ("smoke", "workshop", "full")


def templates(chosen: list[str]) -> dict[str, dict]:
    """Catalogue entries (with the notebook's path) of ``chosen`` (ids or their numbers), lifecycle order."""
    catalogue = yaml.safe_load((REPO / "notebooks" / "catalogue.yaml").read_text())["templates"]
    wanted = {name for name in catalogue if not chosen or name in chosen or name[:2] in chosen}
    found = {}
    for name in sorted(wanted):
        [notebook] = (REPO / "notebooks" / name).glob("*.ipynb")
        found[name] = {**catalogue[name], "notebook": notebook}
    return found


def upstream_parameters(name: str, experiments: dict[str, str]) -> dict:
    """The parameters that point ``name`` at its upstream templates' experiments (the tests do the same)."""
    links = {
        "03-training": {"data_experiment": "02-data"},
        "05-validation": {"training_experiment": "03-training"},
        "12-hyperparameter-search": {"data_experiment": "02-data"},
        "14-synthetic-data": {"data_experiment": "02-data"},
        "17-monitoring-drift": {"registered_model_name": "05-validation-model"},
        "06-deployment": {"registered_model_name": "05-validation-model"},
        "08-project-overview": {
            "experiment_names": "03-training,05-validation",
            "registered_model_name": "05-validation-model",
        },
    }
    parameters = {}
    for parameter, sources in links.get(name, {}).items():
        parameters[parameter] = ",".join(
            experiments.get(source, "never-created") for source in sources.split(",")
        )
    return parameters


def run_once(template: dict, name: str, size: str, workdir: Path, experiments: dict[str, str]) -> float:
    experiment = f"sizes-{name}-{size}-{uuid.uuid4().hex[:6]}"
    parameters = {"size": size, "experiment_name": experiment, **upstream_parameters(name, experiments)}
    if name == "05-validation":  # a registered model of its own, which 06 then deploys
        parameters["registered_model_name"] = experiments["05-validation-model"] = (
            f"sizes-{uuid.uuid4().hex[:8]}"
        )
    for folder_parameter in ("data_dir", "checkpoint_dir", "output_dir", "export_dir", "study_dir"):
        parameters.setdefault(
            folder_parameter, folder_parameter
        )  # inside the scratch folder; unknown: ignored
    folder = workdir / f"{name}-{size}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    start = time.monotonic()
    papermill.execute_notebook(
        str(template["notebook"]),
        str(folder / f"executed-{template['notebook'].name}"),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(folder),
        progress_bar=False,
        log_output=False,
    )
    experiments[name] = experiment
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="smoke,workshop", help="comma-separated, of smoke, workshop, full")
    parser.add_argument("--templates", default="", help="comma-separated ids or numbers (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per template and size (median printed)")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        parser.error(f"unknown sizes {sorted(unknown)}; the sizes are {', '.join(SIZES)}")
    # The templates chosen, and the upstream templates they need, transitively (their time is printed too).
    needed = templates([t for t in args.templates.split(",") if t])
    while missing := {need for t in needed.values() for need in t["needs"]} - set(needed):
        needed = templates([*needed, *missing])

    with tempfile.TemporaryDirectory(prefix="werkbank-sizes-") as scratch:
        scratch = Path(scratch)
        server = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            server = MlflowServer(scratch / "mlflow")
            server.start(timeout=120)
            os.environ["MLFLOW_TRACKING_URI"] = server.url
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # templates never download
        print(
            f"MLflow at {os.environ['MLFLOW_TRACKING_URI']}; {os.cpu_count()} CPUs on this machine",
            flush=True,
        )
        seconds: dict[tuple[str, str], list[float]] = {}
        try:
            for size in sizes:
                for _ in range(args.rounds):
                    experiments: dict[str, str] = {}
                    for name, template in needed.items():
                        try:
                            took = run_once(template, name, size, scratch, experiments)
                        except Exception as e:  # reported; the other templates go on
                            print(
                                f"{name} at {size}: FAILED ({str(e).strip().splitlines()[-1][:200]})",
                                flush=True,
                            )
                            continue
                        seconds.setdefault((name, size), []).append(took)
                        print(f"{name} at {size}: {took:.1f} s", flush=True)
        finally:
            if server is not None:
                server.stop()

    print(f"\n{'template':22}" + "".join(f"{size:>12}" for size in sizes) + "   (median seconds; × smoke)")
    for name in needed:
        cells = []
        smoke = statistics.median(seconds[(name, "smoke")]) if (name, "smoke") in seconds else None
        for size in sizes:
            if (name, size) not in seconds:
                cells.append(f"{'failed':>12}")
                continue
            median = statistics.median(seconds[(name, size)])
            ratio = f" ×{median / smoke:.0f}" if smoke and size != "smoke" else ""
            cells.append(f"{median:>8.1f}{ratio:>4}")
        print(f"{name:22}" + "".join(cells))


if __name__ == "__main__":
    main()
