"""``werkbank submit``/``jobs``/``cancel`` as a user in a session would run them: real ``sbatch`` jobs
on the test cluster, running as that user, papermill inside, logging through the hub's MLflow
service with a token of the job's own (as in production), the MLflow run tagged with the job id."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient

from tests.cluster import REPO, Hub, job_field, run, squeue, wait_for
from werkbank_core.policy import policy_from_dict
from werkbank_spawner import site as werkbank_site

from .test_spawn import job_environ

pytestmark = pytest.mark.integration
WERKBANK = str(Path(sys.executable).parent / "werkbank")
SITE = werkbank_site.validate(werkbank_site.load(REPO / "hub_config" / "site.yaml"))
# What the spawner puts in a session of a user in no group.
POLICY_JSON = json.dumps(policy_from_dict(SITE.policy_config()).view_for(()))
#: What `werkbank` reads in a session: the policy, the hub's MLflow service as jobs reach it with
#: the session's token, and the hub API with the server's token (for a job token of its own).
SESSION_VARIABLES = (
    "WERKBANK_POLICY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_EXPERIMENT_NAME",
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_API_TOKEN",
)


@pytest.fixture(scope="module")
def session_env(hub) -> dict[str, str]:
    """The environment of alice's real session (a server the hub started as a Slurm job)."""
    assert hub.spawn("alice", {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready("alice")
    env = job_environ(hub.job_id("alice"))
    assert json.loads(env["WERKBANK_POLICY"]) == json.loads(POLICY_JSON)
    yield {name: env[name] for name in SESSION_VARIABLES}
    hub.stop_server("alice")


def mlflow_as(hub: Hub, user: str, monkeypatch) -> MlflowClient:
    """MLflow's client as ``user``, through the hub's MLflow service (what jobs reach)."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", hub.token_for(user))
    return MlflowClient(hub.mlflow_job_url)


def as_user(user: str, env: dict[str, str], *argv: str):
    """Run ``argv`` as ``user`` with the session's environment (no shell anywhere)."""
    assignments = [f"{key}={value}" for key, value in env.items()]
    return run("sudo", "-n", "-u", user, "-H", "env", *assignments, *argv, check=False)


def user_folder(user: str, name: str) -> Path:
    """A fresh folder in the user's home, owned by the user."""
    folder = Path(pwd.getpwnam(user).pw_dir) / name
    shutil.rmtree(folder, ignore_errors=True)
    run("sudo", "-n", "-u", user, "mkdir", "-p", str(folder))
    return folder


def put(user: str, source: Path, folder: Path) -> Path:
    """A copy of ``source`` in ``folder``, owned by ``user``."""
    target = folder / source.name
    shutil.copyfile(source, target)
    account = pwd.getpwnam(user)
    os.chown(target, account.pw_uid, account.pw_gid)
    return target


def submitted_job_id(result) -> str:
    assert result.returncode == 0, result.stderr
    m = re.search(r"Submitted job (\d+)", result.stdout)
    assert m, result.stdout
    return m.group(1)


def status_of(user: str, job_id: str) -> dict | None:
    path = Path(pwd.getpwnam(user).pw_dir) / ".werkbank" / "jobs" / f"{job_id}.status.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_a_notebook_runs_as_a_batch_job_and_mlflow_records_the_job(hub, session_env, monkeypatch):
    folder = user_folder("alice", "submit-test")
    notebook = put("alice", REPO / "notebooks" / "01-onboarding" / "onboarding.ipynb", folder)
    experiment = f"submit-{uuid.uuid4().hex[:8]}"
    result = as_user(
        "alice", session_env, WERKBANK, "submit", str(notebook),
        "-p", "matmul_size", "128", "-p", "run_name", "batch", "-p", "experiment_name", experiment,
        "--profile", "cpu",
    )  # fmt: skip
    job_id = submitted_job_id(result)
    assert "CPU" in result.stdout and f"onboarding-{job_id}.ipynb" in result.stdout
    # scontrol still knows a job that has ended (for MinJobAge, 300 s): it ran as alice.
    assert job_field(job_id, "UserId").startswith("alice(")
    assert job_field(job_id, "JobName") == "werkbank-batch"

    status = wait_for(lambda: status_of("alice", job_id), 240, f"job {job_id} to finish")
    log = folder / f"onboarding-{job_id}.log"
    assert status["state"] == "COMPLETED", (status, log.read_text() if log.exists() else "no log")
    executed = folder / f"onboarding-{job_id}.ipynb"
    assert executed.exists() and executed.stat().st_uid == pwd.getpwnam("alice").pw_uid
    # The executed notebook holds outputs; the parameters given are in its injected cell.
    nb = nbformat.read(executed, as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "matmul_size = 128" in injected.source

    client = mlflow_as(hub, "alice", monkeypatch)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert mlflow_run.info.user_id == "alice"  # recorded by the hub's gateway
    assert mlflow_run.data.tags["werkbank.slurm_job_id"] == job_id
    assert mlflow_run.data.tags["werkbank.user"] == "alice"
    assert mlflow_run.data.params["cwd"] == str(folder)
    # The test cluster runs TaskPlugin=task/none (its node claims 32 cores on a 2-core machine): the job
    # sees every core, and the template says so instead of counting them as the job's.
    params = mlflow_run.data.params
    assert params["cpus"] == job_field(job_id, "NumCPUs"), (params["cpus"], job_field(job_id, "NumCPUs"))
    assert params["cpu_pinning"].startswith("no: ") or params["cpus"] == params["cpus_visible"], params

    listing = as_user("alice", session_env, WERKBANK, "jobs")
    assert re.search(rf"^\s*{job_id}\s+COMPLETED\s+{re.escape(str(notebook))}$", listing.stdout, re.M), (
        listing.stdout
    )


def test_a_bad_choice_is_refused_before_sbatch(session_env):
    folder = user_folder("alice", "submit-refused")
    notebook = put("alice", REPO / "notebooks" / "01-onboarding" / "onboarding.ipynb", folder)
    # Job ids, all states: an earlier test's job may end meanwhile, but no new one may appear.
    jobs_before = set(
        squeue("--states=all", "--user", "alice", "--name", "werkbank-batch", "--format=%i").split()
    )
    jobs_dir = Path(pwd.getpwnam("alice").pw_dir) / ".werkbank" / "jobs"
    specs_before = sorted(jobs_dir.glob("spec-*.json"))
    for args, reason in [
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--profile", "cpu", "--gpus", "9"], "9 GPUs requested, your limit is"),
        (["--profile", "cpu", "-p", "matmul_sise", "8"], "has no parameter 'matmul_sise'"),
        (["--profile", "cpu", "-p", "matmul_size", "$(id)"], "parameter 'matmul_size' expects int"),
    ]:
        result = as_user("alice", session_env, WERKBANK, "submit", str(notebook), *args)
        assert result.returncode == 2 and reason in result.stderr, (args, result.stderr)
    jobs_after = set(
        squeue("--states=all", "--user", "alice", "--name", "werkbank-batch", "--format=%i").split()
    )
    assert jobs_after <= jobs_before
    assert sorted(jobs_dir.glob("spec-*.json")) == specs_before


def test_cancel_ends_the_job_and_only_its_owner_may(session_env, tmp_path):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("seconds: int = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "sleep.ipynb"
    nbformat.write(nb, source)
    notebook = put("alice", source, user_folder("alice", "submit-cancel"))

    job_id = submitted_job_id(
        as_user("alice", session_env, WERKBANK, "submit", str(notebook), "-p", "seconds", "600")
    )
    wait_for(lambda: squeue("--jobs", job_id, "--format=%T").strip() == "RUNNING", 60, "the job to run")

    # (bob from his own session: not alice's tokens)
    refused = as_user("bob", {"WERKBANK_POLICY": POLICY_JSON}, WERKBANK, "cancel", job_id)
    assert refused.returncode == 2 and f"scancel {job_id}" in refused.stderr
    assert squeue("--jobs", job_id, "--format=%T").strip() == "RUNNING"

    cancelled = as_user("alice", session_env, WERKBANK, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: not squeue("--jobs", job_id).strip(), 60, "the job to leave the queue")
    listing = wait_for(
        lambda: (
            (out := as_user("alice", session_env, WERKBANK, "jobs").stdout) and "CANCELLED" in out and out
        ),
        30,
        "`werkbank jobs` to show the job cancelled",
    )
    assert re.search(rf"^\s*{job_id}\s+CANCELLED", listing, re.M), listing


def ddp_script() -> str:
    """The training script of template 07, as its %%writefile cell writes it."""
    nb = nbformat.read(REPO / "notebooks" / "07-distributed" / "distributed.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.source.startswith("%%writefile train_ddp.py"))
    return cell.split("\n", 1)[1]


def test_a_ddp_script_runs_under_srun_and_torchrun_in_one_mlflow_run(hub, session_env, monkeypatch, tmp_path):
    source = tmp_path / "train_ddp.py"
    source.write_text(ddp_script())
    folder = user_folder("alice", "submit-ddp")
    script = put("alice", source, folder)
    experiment = f"ddp-{uuid.uuid4().hex[:8]}"

    refused = as_user(
        "alice", session_env, WERKBANK, "submit", str(script), "--nodes", "2", "--profile", "cpu"
    )
    assert refused.returncode == 2 and "nodes: 2 nodes requested, your limit is 1" in refused.stderr

    result = as_user(
        "alice", session_env, WERKBANK, "submit", str(script), "--procs-per-node", "2", "--profile", "cpu",
        "--", "--experiment", experiment, "--epochs", "3",
    )  # fmt: skip
    job_id = submitted_job_id(result)
    assert "1 node(s) × 2 process(es)" in result.stdout
    status = wait_for(lambda: status_of("alice", job_id), 240, f"job {job_id} to finish")
    log = folder / f"train_ddp-{job_id}.log"
    assert status["state"] == "COMPLETED", (status, log.read_text() if log.exists() else "no log")
    assert "test accuracy" in log.read_text()

    client = mlflow_as(hub, "alice", monkeypatch)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert mlflow_run.info.user_id == "alice"
    assert mlflow_run.data.params["world_size"] == "2"
    assert mlflow_run.data.params["backend"] == "gloo"
    assert mlflow_run.data.tags["werkbank.slurm_job_id"] == job_id
    assert mlflow_run.data.tags["werkbank.user"] == "alice"
    assert len(client.get_metric_history(mlflow_run.info.run_id, "train_loss")) == 3


def lora_script() -> str:
    """Template 10's data-parallel LoRA script, as its %%writefile cell writes it."""
    nb = nbformat.read(
        REPO / "notebooks" / "10-llm-instruction-tuning" / "instruction_tuning.ipynb", as_version=4
    )
    cell = next(c.source for c in nb.cells if c.source.startswith("%%writefile tune_lora.py"))
    return cell.split("\n", 1)[1]


def val_losses(client: MlflowClient, run_id: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]


def test_lora_tuning_runs_data_parallel_as_a_slurm_job_and_equals_one_process(
    hub, session_env, monkeypatch, tmp_path
):
    """Template 10's ``tune_lora.py`` through ``werkbank submit`` with 2 processes (gloo) in alice's job:
    one MLflow run of hers, the processes' adapters equal bit for bit, and the same training as one
    process on the same global batches (dropout off: it draws different masks per process), which holds
    only if each process scales its loss by the *global* number of answer tokens."""
    source = tmp_path / "tune_lora.py"
    source.write_text(lora_script())
    folder = user_folder("alice", "submit-lora")
    script = put("alice", source, folder)
    experiment = f"lora-ddp-{uuid.uuid4().hex[:8]}"
    tiny = [
        "--experiment", experiment, "--train-per-class", "4", "--val-per-class", "1", "--test-per-class", "2",
        "--article-words", "16", "--steps", "4", "--batch-size", "4", "--lr", "2e-3", "--eval-every", "2",
        "--lora-dropout", "0",
    ]  # fmt: skip

    result = as_user(
        "alice", session_env, WERKBANK, "submit", str(script), "--procs-per-node", "2", "--profile", "cpu",
        "--", *tiny,
    )  # fmt: skip
    job_id = submitted_job_id(result)
    # One process as the reference, in alice's session (no DDP: plain Python), while the job runs.
    reference = as_user("alice", {**session_env, "OMP_NUM_THREADS": "1"}, sys.executable, str(script), *tiny)
    assert reference.returncode == 0, reference.stderr[-3000:]
    status = wait_for(lambda: status_of("alice", job_id), 300, f"job {job_id} to finish")
    log = folder / f"tune_lora-{job_id}.log"
    assert status["state"] == "COMPLETED", (status, log.read_text() if log.exists() else "no log")

    client = mlflow_as(hub, "alice", monkeypatch)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [ddp] = [r for r in runs if r.data.params["world_size"] == "2"]
    [single] = [r for r in runs if r.data.params["world_size"] == "1"]
    assert ddp.info.user_id == "alice" and ddp.data.tags["werkbank.slurm_job_id"] == job_id
    assert ddp.data.params["backend"] == "gloo" and ddp.data.params["global_batch_size"] == "4"
    assert ddp.data.metrics["rank_max_abs_diff"] == 0.0
    losses = {r.data.params["world_size"]: val_losses(client, r.info.run_id) for r in (ddp, single)}
    assert len(losses["2"]) == 3 and losses["2"][-1] < losses["2"][0], losses
    # Equal up to float rounding (measured: equal to 5 decimals); dividing by each process's own token
    # count instead moves the last held-out loss by 1.9e-3 here.
    assert max(abs(a - b) for a, b in zip(losses["2"], losses["1"], strict=True)) < 2e-4, losses
    adapter = {f.path for f in client.list_artifacts(ddp.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter


def test_a_hyperparameter_search_fans_out_as_slurm_jobs_sharing_one_study(hub, session_env, monkeypatch):
    """Template 12 in alice's session with ``fan_out_jobs=2``: 4 trials run as 2 Slurm jobs of hers, which
    share one Optuna study (a journal file in her home) and log each trial as a child of the search's run
    through the hub's MLflow with the jobs' own token; the notebook waits for them, then tests the best
    configuration once. Four trials cannot promise the search's outcome (a better configuration than the
    default, a pruned trial): ``check_outcome`` is off here, and the smoke run of
    ``tests/notebooks`` (8 trials in the session) asserts it. The bookkeeping checks all run."""
    papermill = str(Path(sys.executable).parent / "papermill")
    folder = user_folder("alice", "search-test")
    data_notebook = put("alice", REPO / "notebooks" / "02-data" / "data.ipynb", folder)
    search_notebook = put("alice", REPO / "notebooks" / "12-hyperparameter-search" / "search.ipynb", folder)
    suffix = uuid.uuid4().hex[:8]
    data_experiment, experiment = f"search-data-{suffix}", f"search-{suffix}"

    result = as_user(
        "alice", session_env, papermill, str(data_notebook), str(folder / "data-out.ipynb"),
        "-p", "size", "smoke", "-p", "experiment_name", data_experiment, "--cwd", str(folder),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    result = as_user(
        "alice", session_env, papermill, str(search_notebook), str(folder / "search-out.ipynb"),
        "-p", "size", "smoke", "-p", "data_experiment", data_experiment, "-p", "experiment_name", experiment,
        "-p", "trials", "4", "-p", "fan_out_jobs", "2", "-p", "worker_profile", "cpu",
        "-p", "check_outcome", "False", "-p", "wait_minutes", "5", "-p", "study_dir", str(folder / "studies"),
        "--cwd", str(folder),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    executed = nbformat.read(folder / "search-out.ipynb", as_version=4)
    assert "All checks passed." in json.dumps(executed.cells[-1].outputs)

    client = mlflow_as(hub, "alice", monkeypatch)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    job_ids = parent.data.tags["werkbank.search_jobs"].split(",")
    assert len(job_ids) == 2 and all(j.isdigit() for j in job_ids)
    trial_runs = [r for r in runs if "werkbank.trial" in r.data.tags]
    assert sorted(int(r.data.tags["werkbank.trial"]) for r in trial_runs) == [0, 1, 2, 3]
    # Each job ran its share (2 trials), as alice, and wrote the trials' runs itself.
    ran_in = sorted(r.data.tags["werkbank.slurm_job_id"] for r in trial_runs)
    assert ran_in == sorted(job_ids * 2), ran_in
    for job_id in job_ids:
        assert job_field(job_id, "UserId").startswith("alice(")
        assert status_of("alice", job_id)["state"] == "COMPLETED"
    for r in trial_runs:
        assert r.info.status == "FINISHED" and r.info.user_id == "alice"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # The study's journal lies in alice's folder, written by her session and her jobs; the test ran once.
    journal = folder / "studies" / f"search-{parent.info.run_id}.journal"
    assert journal.stat().st_uid == pwd.getpwnam("alice").pw_uid
    assert parent.data.metrics["test_evaluations"] == 1
    assert not [r for r in runs if r is not parent and "test_accuracy" in r.data.metrics]
