"""00-first-hour: one run with the session's checks as metrics (1 pass, 0 fail) and what they found as params.

The test process sets the kernel's environment (``tests/notebooks/conftest.py``): a werkbank profile, no
Slurm job, no ``WERKBANK_CENTRE`` (so the demo's defaults: home ``~`` and scratch ``/tmp``, no project).
"""

import getpass
import json
import os
import shutil
from pathlib import Path

from tests.notebooks.lifecycle import PROFILE, Execution, the_run
from werkbank_core.centre import DEFAULTS

NEEDS: tuple[str, ...] = ()
GB = 1024**3
MIN_FREE_GB = 1.0  # the template's default


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke", "run_name": "smoke"}


def check(execution: Execution) -> None:
    client, workdir = execution.client, execution.workdir
    run = the_run(execution)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert run.info.run_name == "smoke"
    assert params["user"] == getpass.getuser()
    assert params["centre"] == DEFAULTS["name"]
    assert params["centre_source"] == "defaults (WERKBANK_CENTRE is not set)"
    assert tags["werkbank.profile"] == params["werkbank_profile"] == PROFILE
    assert tags["werkbank.slurm_job_id"] == params["slurm_job_id"] == "none (not in a Slurm job)"
    assert params["walltime_left"] == "n/a (not in a Slurm job)"
    assert params["mlflow_tracking_uri"] == os.environ["MLFLOW_TRACKING_URI"]
    # Not in a Slurm job: that check fails, and there is no walltime to check; the profile is known.
    assert metrics["check.in_slurm_job"] == 0.0
    assert "check.walltime" not in metrics
    assert metrics["check.profile"] == 1.0
    assert metrics["check.mlflow_configured"] == metrics["check.mlflow_reachable"] == 1.0
    # Storage: home and /tmp exist and are writable here; the demo has no project area.
    assert "storage.project.path" not in params and "check.storage.project.writable" not in metrics
    for area, path in (("home", Path.home()), ("scratch", Path("/tmp"))):
        key = f"storage.{area}"
        assert params[f"{key}.path"] == str(path)
        assert metrics[f"check.{key}.writable"] == 1.0, area
        free = shutil.disk_usage(path).free / GB
        assert abs(metrics[f"{key}.free_gb"] - free) < 2, (area, metrics[f"{key}.free_gb"], free)
        assert metrics[f"check.{key}.free_space"] == float(metrics[f"{key}.free_gb"] >= MIN_FREE_GB)
    assert metrics["check.storage.home.exists"] == 1.0
    # The summary and the failed checks' names agree with the metrics, one per check.
    checks = {k.removeprefix("check."): v for k, v in metrics.items() if k.startswith("check.")}
    assert metrics["checks_total"] == len(checks)
    assert metrics["checks_passed"] == sum(checks.values())
    failed = sorted(name for name, value in checks.items() if value == 0.0)
    assert tags["werkbank.checks_failed"] == (", ".join(failed) or "none")
    # The artifact holds the same results, with what each check found.
    local = client.download_artifacts(run.info.run_id, "checks.json", str(workdir))
    results = json.loads(Path(local).read_text())
    assert {name: float(result["passed"]) for name, result in results.items()} == checks
    assert "SLURM_JOB_ID is not set" in results["in_slurm_job"]["found"]
