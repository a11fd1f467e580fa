"""``werkbank submit``: what is checked before ``sbatch`` and what the job script holds (no Slurm here;
tests/integration/test_submit.py runs real jobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from werkbank_core.policy import policy_from_dict
from werkbank_lab import batch

SITE = {
    "profiles": [
        {"name": "cpu", "partition": "cpu", "cpus": 1, "memory": "2G", "walltime": "01:00:00"},
        {"name": "gpu1", "partition": "gpu", "gpus": 1, "cpus": 4, "memory": "16G", "walltime": "4h"},
    ],
    "custom_fields": ["gpus", "walltime"],
    "limits": {
        "default": {"gpus": 1, "cpus": 4, "memory": "16G", "walltime": "4h", "partitions": ["cpu", "gpu"]}
    },
}
POLICY_JSON = json.dumps(policy_from_dict(SITE).view_for(()))


@pytest.fixture
def notebook(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(
        'epochs: int = 3\nlearning_rate: float = 0.1\nname: str = "run"\ncompile_model: bool = False\n'
        "layers: list = [32, 16]"
    )
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("print(epochs, learning_rate, name)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "my notebook.ipynb"  # a space: users' file names have them
    nbformat.write(nb, path)
    return path


@pytest.fixture
def policy():
    return batch.session_policy({"WERKBANK_POLICY": POLICY_JSON})


def test_parameters_are_converted_to_the_declared_types(notebook, policy):
    sub = batch.prepare(
        notebook,
        {
            "epochs": "20",
            "learning_rate": "1e-3",
            "name": "a b; rm -rf ~",
            "compile_model": "yes",
            "layers": "[8]",
        },
        profile="gpu1",
        policy=policy,
    )
    assert sub.parameters == {
        "epochs": 20,
        "learning_rate": 0.001,
        "name": "a b; rm -rf ~",
        "compile_model": True,
        "layers": [8],
    }
    assert (sub.request.profile, sub.request.gpus, sub.request.partition) == ("gpu1", 1, "gpu")
    assert sub.output_for("42") == notebook.with_name("my notebook-42.ipynb")


@pytest.mark.parametrize(
    ("parameters", "options", "message"),
    [
        ({"epoch": "3"}, {}, "has no parameter 'epoch'; its parameters: epochs, learning_rate"),
        ({"epochs": "three"}, {}, "parameter 'epochs' expects int, got 'three'"),
        ({"compile_model": "maybe"}, {}, "parameter 'compile_model' expects bool"),
        ({"layers": "8, 16"}, {}, "give it as JSON"),
        ({}, {"profile": "bigmem"}, "unknown profile 'bigmem'; choose one of: cpu, gpu1"),
        ({}, {"profile": "cpu", "gpus": "2"}, "gpus: 2 GPUs requested, your limit is 1"),
        ({}, {"profile": "cpu", "cpus": "2"}, "cpus: this site does not allow changing it"),
        ({}, {"profile": "cpu", "walltime": "1h; id"}, "walltime: expected a time like 04:00:00"),
    ],
)
def test_bad_choices_are_refused_with_the_reason(notebook, policy, parameters, options, message):
    with pytest.raises(batch.SubmitError) as refused:
        batch.prepare(notebook, parameters, policy=policy, **options)
    assert message in str(refused.value)


def test_only_notebooks_that_exist(tmp_path, policy):
    with pytest.raises(batch.SubmitError, match="no such notebook"):
        batch.prepare(tmp_path / "missing.ipynb", policy=policy)
    (tmp_path / "script.py").write_text("print(1)\n")
    with pytest.raises(batch.SubmitError, match=r"not a notebook \(.ipynb\)"):
        batch.prepare(tmp_path / "script.py", policy=policy)


def test_outside_a_session_submit_says_why():
    with pytest.raises(batch.SubmitError, match="WERKBANK_POLICY is not set"):
        batch.session_policy({})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=1, max_size=60))
def test_no_parameter_value_reaches_the_job_script(notebook, policy, tmp_path, value):
    """Values travel in the spec file: the script is the same whatever the value."""
    neutral = batch.prepare(notebook, {"name": "x"}, profile="cpu", policy=policy)
    sub = batch.prepare(notebook, {"name": value}, profile="cpu", policy=policy)
    assert sub.parameters == {"name": value}
    spec = tmp_path / "spec-x.json"
    assert batch.render_batch_script(sub, spec) == batch.render_batch_script(neutral, spec)


def test_the_job_script_asks_for_the_profile(notebook, policy, tmp_path):
    sub = batch.prepare(notebook, {}, profile="gpu1", policy=policy, walltime="30m")
    script = batch.render_batch_script(sub, tmp_path / "spec-x.json")
    for line in (
        "#SBATCH --job-name=werkbank-batch",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16384M",
        "#SBATCH --time=00:30:00",
        "#SBATCH --gres=gpu:1",
    ):
        assert line in script.splitlines()
    assert f"-m werkbank_lab.runjob {tmp_path}/spec-x.json" in script


def test_the_cli_refuses_before_sbatch(notebook, tmp_path):
    """A bad profile exits 2 with the reason, and the (fake, recording) sbatch is never called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "sbatch-called"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {called}\necho 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "WERKBANK_POLICY": POLICY_JSON, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "werkbank_lab.cli", "submit", str(notebook), "-p", "epochs", "3"]
    result = subprocess.run([*argv, "--profile", "fullnode"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "werkbank submit: profile: unknown profile 'fullnode'; choose one of: cpu, gpu1" in result.stderr
    assert not called.exists()


def test_a_training_script_runs_under_srun_with_torchrun_per_node(tmp_path, monkeypatch):
    from werkbank_lab import runjob

    script = tmp_path / "train.py"
    script.write_text("print('training')\n")
    site = {**SITE, "limits": {"default": {**SITE["limits"]["default"], "nodes": 4}}}
    policy = policy_from_dict(site)
    sub = batch.prepare_distributed(script, ["--epochs", "$(id)"], nodes="2", profile="gpu1", policy=policy)
    assert (sub.nodes, sub.procs_per_node, sub.args) == (2, 1, ["--epochs", "$(id)"])  # one process per GPU
    rendered = batch.render_batch_script(sub, tmp_path / "spec-x.json")
    assert "#SBATCH --nodes=2" in rendered and "#SBATCH --ntasks-per-node=1" in rendered
    assert "#SBATCH --gres=gpu:1" in rendered  # per node
    assert "$(id)" not in rendered  # arguments travel in the spec file
    assert rendered.splitlines()[-1].startswith("exec srun --kill-on-bad-exit=1 ")

    spec = {"nodes": 2, "procs_per_node": 1, "notebook": str(script), "args": sub.args}
    monkeypatch.setattr(runjob, "rendezvous_address", lambda nodelist: "10.0.0.7")
    argv = runjob.torchrun_argv(spec, "1234", {"SLURM_JOB_NODELIST": "node[1-2]"})
    assert argv[1:] == [
        "-m", "torch.distributed.run", "--nproc-per-node=1", "--nnodes=2", "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.7:21234", "--rdzv-id=1234", str(script), "--epochs", "$(id)",
    ]  # fmt: skip
    single = runjob.torchrun_argv({**spec, "nodes": 1}, "1234", {})
    assert "--standalone" in single and not any(a.startswith("--rdzv") for a in single)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nodes": 5}, "nodes: 5 nodes requested, your limit is 4"),
        ({"nodes": "two"}, "nodes: expected a whole number"),
        ({"procs_per_node": 2, "profile": "gpu1"}, "2 processes but 1 GPUs per node"),
    ],
)
def test_distributed_jobs_are_bounded(tmp_path, options, message):
    script = tmp_path / "train.py"
    script.write_text("\n")
    policy = policy_from_dict({**SITE, "limits": {"default": {**SITE["limits"]["default"], "nodes": 4}}})
    with pytest.raises(batch.SubmitError) as refused:
        batch.prepare_distributed(script, policy=policy, **options)
    assert message in str(refused.value)


def test_jobs_never_get_the_sessions_tokens(notebook, policy):
    sub = batch.prepare(notebook, {}, profile="cpu", policy=policy)
    session = {"PATH": "/usr/bin", "JUPYTERHUB_API_TOKEN": "session", "JPY_API_TOKEN": "session"}
    env = batch.job_environment(sub, session)
    assert env == {"PATH": "/usr/bin"}  # no MLflow token in the session: none asked for


def test_a_job_gets_a_token_of_its_own_for_mlflow(notebook, policy):
    """Against a stand-in for the hub's job-token endpoint: what the session asks for, and what
    the job's environment holds."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_POST(self):
            asked.append(
                (
                    self.path,
                    self.headers["Authorization"],
                    json.loads(self.rfile.read(int(self.headers["Content-Length"]))),
                )
            )
            answer = json.dumps({"token": "job-token"}).encode()
            self.send_response(201)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sub = batch.prepare(notebook, {}, profile="cpu", policy=policy)
        session = {
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{server.server_port}/hub/api",
            "JUPYTERHUB_API_TOKEN": "session-token",
            "MLFLOW_TRACKING_TOKEN": "session-token",
            "MLFLOW_TRACKING_URI": "http://hub:5001/services/mlflow",
        }
        env = batch.job_environment(sub, session)
    finally:
        server.shutdown()
    expected = {k: v for k, v in session.items() if k != "JUPYTERHUB_API_TOKEN"}
    assert env == {**expected, "MLFLOW_TRACKING_TOKEN": "job-token"}
    [(path, authorization, body)] = asked
    assert (path, authorization) == ("/hub/api/werkbank/job-tokens", "token session-token")
    assert body == {
        "expires_in": sub.request.walltime_min * 60 + batch.QUEUE_ALLOWANCE_S,
        "note": notebook.name,
    }
    with pytest.raises(batch.SubmitError, match="no hub API token"):
        batch.job_environment(sub, {"MLFLOW_TRACKING_TOKEN": "t"})


# --- the job itself (runjob): how a failing notebook or script ends -----------------------


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home of the test's own: ``~/.werkbank/jobs`` (spec, record and status files) goes there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def submitted(sub: batch.Submission, tmp_path: Path, job_id: str) -> Path:
    """``werkbank submit`` with a stand-in ``sbatch`` that answers ``job_id``; the spec file's path."""
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncat > {tmp_path}/job-script\necho {job_id}\n")
    sbatch.chmod(0o755)
    assert batch.submit(sub, sbatch=(str(sbatch),), environ={"PATH": os.environ["PATH"]}) == job_id
    [spec] = batch.jobs_dir().glob("spec-*.json")
    return spec


def run_job(spec: Path, job_id: str, cwd: Path) -> subprocess.CompletedProcess:
    """What the job script runs on the node, with the environment Slurm gives it."""
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "node1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "werkbank_lab.runjob", str(spec)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def status_of(job_id: str) -> dict:
    return json.loads((batch.jobs_dir() / f"{job_id}.status.json").read_text())


def test_a_notebook_that_raises_ends_failed_with_its_cell_and_exception(notebook, policy, home, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('raise ValueError(f"diverged after {epochs} epochs")'))
    nb.cells.append(nbformat.v4.new_code_cell('print("never reached")'))
    nbformat.write(nb, notebook)
    sub = batch.prepare(notebook, {"epochs": "7"}, profile="cpu", policy=policy)
    spec = submitted(sub, tmp_path, "4242")

    result = run_job(spec, "4242", notebook.parent)

    assert result.returncode == 1, result.stderr[-2000:]
    output = notebook.with_name("my notebook-4242.ipynb")
    status = status_of("4242")
    assert (status["job_id"], status["state"], status["output"]) == ("4242", "FAILED", str(output))
    # The error names the cell that raised (its number in the executed notebook) and the exception,
    # with the job's parameter (epochs=7, not the notebook's 3) in its message.
    executed = nbformat.read(output, as_version=4)
    [failed] = [
        c for c in executed.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert status["error"] == f"cell {failed.execution_count}: ValueError: diverged after 7 epochs"
    assert f"the notebook failed in cell {failed.execution_count}: ValueError" in result.stdout
    assert executed.cells[-1].get("execution_count") is None  # stopped at the error
    # And `werkbank jobs` says so once Slurm has forgotten the job (an empty squeue).
    [view] = batch.list_jobs(squeue=("true",))
    assert (view.job_id, view.state, view.detail) == ("4242", "FAILED", status["error"])


def test_a_notebook_that_cannot_run_ends_failed_with_the_reason(notebook, policy, home, tmp_path):
    """Not an error in a cell: the kernel the notebook asks for does not exist."""
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["kernelspec"] = {"name": "no-such-kernel", "display_name": "gone", "language": "python"}
    nbformat.write(nb, notebook)
    spec = submitted(batch.prepare(notebook, {}, profile="cpu", policy=policy), tmp_path, "77")

    result = run_job(spec, "77", notebook.parent)

    assert result.returncode != 0
    status = status_of("77")
    assert status["state"] == "FAILED"
    assert status["error"].startswith("NoSuchKernel: ") and "no-such-kernel" in status["error"], status
    assert "NoSuchKernel" in result.stderr  # re-raised for the job's log


def test_a_training_script_that_raises_ends_failed(tmp_path, home):
    """The torchrun path (one node, one process; no Slurm): the script's exception fails the job."""
    script = tmp_path / "train.py"
    script.write_text('import sys\nprint("epoch 1", sys.argv[1:])\nraise RuntimeError("loss is nan")\n')
    policy = policy_from_dict(SITE)
    sub = batch.prepare_distributed(script, ["--epochs", "2"], nodes="1", profile="cpu", policy=policy)
    spec = submitted(sub, tmp_path, "99")

    result = run_job(spec, "99", tmp_path)

    assert result.returncode != 0
    status = status_of("99")
    assert (status["state"], status["output"]) == ("FAILED", str(tmp_path / "train-99.log"))
    assert status["error"] == f"torchrun exit status {result.returncode}"
    # runjob records only torchrun's exit status; the exception is in the job's log (here: its output).
    assert "RuntimeError: loss is nan" in result.stdout + result.stderr
    assert "epoch 1 ['--epochs', '2']" in result.stdout
