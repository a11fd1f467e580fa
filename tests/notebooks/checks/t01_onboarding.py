"""01-onboarding: one run with the session's facts as params, tags and an environment.json artifact."""

import getpass
import json
import os
import sys
from pathlib import Path

from tests.notebooks.lifecycle import PROFILE, Execution, runs_in

NEEDS: tuple[str, ...] = ()


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke", "run_name": "smoke"}


def check(execution: Execution) -> None:
    client, parameters, workdir = execution.client, execution.parameters, execution.workdir
    experiment_name = execution.experiment_name
    runs = runs_in(client, experiment_name)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert run.info.run_name == parameters["run_name"]
    assert tags["werkbank.template"] == "01-onboarding"
    assert tags["werkbank.user"] == params["user"] == getpass.getuser()
    assert tags["werkbank.profile"] == params["werkbank_profile"] == PROFILE
    assert tags["werkbank.slurm_job_id"] == params["slurm_job_id"] == "none (not in a Slurm job)"
    assert params["walltime_left"] == "n/a (not in a Slurm job)"
    # The kernel papermill started is this environment's Python, not whatever `python` is on PATH.
    assert params["python_executable"] == sys.executable
    assert params["cpus"] == params["cpus_visible"] == str(len(os.sched_getaffinity(0)))
    assert params["cpu_pinning"] == "n/a (not in a Slurm job)"
    assert params["cwd"] == str(workdir)
    assert params["mlflow_tracking_uri"] == os.environ["MLFLOW_TRACKING_URI"]
    assert tags["werkbank.device"] == params["device"] in {"cpu", "cuda", "mps"}
    assert (params["device"] == "cpu") == (params["gpu_count"] == "0")
    assert metrics["cpus"] == len(os.sched_getaffinity(0))
    assert metrics["memory_gb"] > 0 and metrics["matmul_gflops"] > 0
    # The artifact went through the server's artifact proxy and holds the same facts.
    local = client.download_artifacts(run.info.run_id, "environment.json", str(workdir))
    assert json.loads(Path(local).read_text()) == params
