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
        'layers: list = [32, 16]\nbatch_size: "Optional[int]" = None\nthreshold: "Optional[float]" = None'
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
    # A template's sized parameter (`"Optional[int]" = None`): the inner type, or None.
    sized = batch.prepare(notebook, {"batch_size": "64", "threshold": "None"}, profile="gpu1", policy=policy)
    assert sized.parameters == {"batch_size": 64, "threshold": None}
    with pytest.raises(batch.SubmitError, match="parameter 'batch_size' expects int, got '\\$\\(id\\)'"):
        batch.prepare(notebook, {"batch_size": "$(id)"}, profile="gpu1", policy=policy)
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


# --- notebooks written elsewhere: papermill's rules for parameters, the session's kernel -----


@pytest.fixture
def untyped(tmp_path) -> Path:
    """A notebook as scripts and other tools write them: untyped parameters, no kernelspec."""
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(
        'max_depth = 3\nrate = 0.5\nlabel = "a"\nwarm = False\nseed = None'
    )
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("print(max_depth)")]
    assert "kernelspec" not in nb.metadata
    path = tmp_path / "elsewhere.ipynb"
    nbformat.write(nb, path)
    return path


def test_untyped_parameters_are_read_as_papermills_command_line_reads_them(untyped, policy):
    from papermill.cli import _resolve_type  # papermill's own -p reading

    given = {"max_depth": "2", "rate": "1e-3", "label": "007x", "warm": "True", "seed": "None"}
    sub = batch.prepare(untyped, given, profile="cpu", policy=policy)
    assert sub.parameters == {"max_depth": 2, "rate": 0.001, "label": "007x", "warm": True, "seed": None}
    assert sub.parameters == {name: _resolve_type(value) for name, value in given.items()}
    for text in ("12", "-3", "1.5", "nan", "inf", "1_000", " 7 ", "True", "true", "None", "x", ""):
        assert batch.resolve_type(text) == _resolve_type(text) or text == "nan", text


def test_raw_values_and_a_parameters_file_are_taken_as_given(untyped, policy, tmp_path):
    sub = batch.prepare(
        untyped, {"max_depth": "4"}, raw={"label": "42", "rate": 0.25}, profile="cpu", policy=policy
    )
    assert sub.parameters == {"max_depth": 4, "label": "42", "rate": 0.25}


def test_a_notebook_without_a_kernelspec_runs_with_the_sessions_kernel(untyped, policy, home, tmp_path):
    sub = batch.prepare(untyped, {"max_depth": "2"}, profile="cpu", policy=policy)
    assert sub.kernel == batch.SESSION_KERNEL == "python3"
    spec = submitted(sub, tmp_path, "515")
    result = run_job(spec, "515", untyped.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    executed = nbformat.read(untyped.with_name("elsewhere-515.ipynb"), as_version=4)
    printed = [o["text"] for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stdout"]
    assert printed == ["2\n"]  # the injected int, not the text '2'


def test_a_kernel_the_session_does_not_have_is_refused_at_submission(notebook, policy):
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["kernelspec"] = {"name": "conda-env-old-py", "display_name": "old", "language": "python"}
    nbformat.write(nb, notebook)
    with pytest.raises(batch.SubmitError) as refused:
        batch.prepare(notebook, {}, profile="cpu", policy=policy)
    assert "names the kernel 'conda-env-old-py', which this session does not have" in str(refused.value)
    assert "python3" in str(refused.value) and "--kernel" in str(refused.value)
    assert batch.prepare(notebook, {}, profile="cpu", policy=policy, kernel="python3").kernel == "python3"
    with pytest.raises(batch.SubmitError, match="you asked for the kernel 'nope'"):
        batch.prepare(notebook, {}, profile="cpu", policy=policy, kernel="nope")


def werkbank_cli(*args: str, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``werkbank`` in a session whose sbatch is missing from PATH (nothing may reach it)."""
    env = {**os.environ, "WERKBANK_POLICY": POLICY_JSON, **(extra_env or {})}
    env.pop("WERKBANK_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "werkbank_lab.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("junk", ["submit", "junk.ipynb"], "werkbank submit: junk.ipynb: not a notebook Jupyter can read ("),
        (
            "untyped",
            ["submit", "elsewhere.ipynb", "-f", "missing.yaml"],
            "werkbank submit: missing.yaml: cannot read it",
        ),
        ("bad-yaml", ["submit", "elsewhere.ipynb", "-f", "p.yaml"], "werkbank submit: p.yaml: not YAML ("),
        ("list-yaml", ["submit", "elsewhere.ipynb", "-f", "p.yaml"], "expected name: value lines"),
        ("untyped", ["submit", "elsewhere.ipynb", "-p", "depth", "2"], "has no parameter 'depth'"),
        (
            "untyped",
            ["submit", "elsewhere.ipynb", "-p", "rate", "1", "-r", "rate", "2"],
            "'rate' is given twice",
        ),
        ("untyped", ["submit", "elsewhere.ipynb", "--kernel", "nope"], "you asked for the kernel 'nope'"),
        ("untyped", ["submit", "train.py", "-p", "a", "1"], "-p, -r, -f and --kernel are for notebooks"),
    ],
)
def test_every_refusal_is_one_line_and_never_a_traceback(tmp_path, untyped, setup, args, message):
    (tmp_path / "junk.ipynb").write_text('{"cells": [oops')
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "p.yaml").write_text({"bad-yaml": "a: [1\n", "list-yaml": "- a\n- b\n"}.get(setup, "a: 1\n"))
    result = werkbank_cli(*args, cwd=tmp_path, extra_env={"PATH": "/nonexistent"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("werkbank submit: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_an_unforeseen_error_is_one_line_too(tmp_path, untyped):
    """sbatch missing from PATH is not a refusal werkbank foresaw: still one line, no traceback."""
    result = werkbank_cli(
        "submit", "elsewhere.ipynb", "-p", "max_depth", "2", cwd=tmp_path, extra_env={"PATH": "/nonexistent"}
    )
    assert result.returncode in (1, 2), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("werkbank submit: ")


def test_the_parameters_file_comes_first_then_p_then_r(tmp_path, untyped):
    """papermill's precedence; checked through the spec file the job would read."""
    (tmp_path / "p.yaml").write_text("max_depth: 9\nlabel: from-file\nrate: 0.1\nwarm: true\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\ncat >/dev/null\necho 31\n")
    (bin_dir / "sbatch").chmod(0o755)
    home = tmp_path / "home"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home)}
    args = ["submit", "elsewhere.ipynb", "-f", "p.yaml", "-p", "max_depth", "4", "-r", "label", "1e3"]
    result = werkbank_cli(*args, cwd=tmp_path, extra_env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads((home / ".werkbank" / "jobs" / "31.json").read_text())
    assert record["parameters"] == {"max_depth": 4, "label": "1e3", "rate": 0.1, "warm": True}
    assert record["kernel"] == "python3"
    assert record["log"] == str(tmp_path / "elsewhere-31.log")
    assert "Log: " + str(tmp_path / "elsewhere-31.log") in result.stdout


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
    # And `werkbank jobs` says so once Slurm has forgotten the job (an empty squeue), with the log.
    [view] = batch.list_jobs(squeue=("true",))
    assert (view.job_id, view.state, view.detail) == ("4242", "FAILED", status["error"])
    assert view.log == str(notebook.with_name("my notebook-4242.log"))


def test_a_multi_line_exception_is_one_line_in_werkbank_jobs(notebook, policy, home, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell('raise RuntimeError("first line\\n  second line\\n" + "x" * 500)')
    )
    nbformat.write(nb, notebook)
    spec = submitted(batch.prepare(notebook, {}, profile="cpu", policy=policy), tmp_path, "4343")
    assert run_job(spec, "4343", notebook.parent).returncode == 1
    error = status_of("4343")["error"]
    assert "\n" not in error and len(error) <= 300
    assert error.startswith("cell 3: RuntimeError: first line second line xxx") and error.endswith("…")


def test_a_notebook_that_cannot_run_ends_failed_with_the_reason(notebook, policy, home, tmp_path):
    """Not an error in a cell: the kernel the notebook asks for does not exist."""
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["kernelspec"] = {"name": "no-such-kernel", "display_name": "gone", "language": "python"}
    nbformat.write(nb, notebook)
    sub = batch.prepare(notebook, {}, profile="cpu", policy=policy, kernel="python3")
    sub.kernel = "no-such-kernel"  # the kernel went away between submission and the job's start
    spec = submitted(sub, tmp_path, "77")

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
