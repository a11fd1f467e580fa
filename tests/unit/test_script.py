"""Batch script rendering, and a property-based attack on the whole options → script path."""

import json
import re
import shlex
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from werkbank_core.policy import JobRequest, PolicyError, policy_from_dict
from werkbank_core.script import (
    JobContext,
    ScriptError,
    parse_job_id,
    render_script,
    sbatch_argv,
)

from .test_policy import SITE

CTX = JobContext(username="alice", homedir="/home/alice", log_dir="/home/alice/.werkbank/logs")
CMD = ["jupyterhub-singleuser", "--debug"]


def command_line(script: str) -> str:
    """The line that starts Jupyter: the one before the script takes its process id."""
    lines = script.splitlines()
    return lines[lines.index("werkbank_jupyter=$!") - 1]


def directives(script: str) -> dict[str, str]:
    return dict(
        re.match(r"#SBATCH --([a-z-]+)=(.*)", line).groups()
        for line in script.splitlines()
        if line.startswith("#SBATCH")
    )


def test_gpu_request_renders_all_directives():
    request = JobRequest("gpu1", "gpu", cpus=4, memory_mb=16384, walltime_min=240, gpus=1, account="demo")
    d = directives(render_script(request, CTX, CMD))
    assert d == {
        "job-name": "werkbank-jupyter",
        "partition": "gpu",
        "cpus-per-task": "4",
        "mem": "16384M",
        "time": "04:00:00",
        "output": "/home/alice/.werkbank/logs/jupyter-%j.log",
        "chdir": "/home/alice",
        "account": "demo",
        "gres": "gpu:1",
    }


def test_cpu_request_has_no_gres_or_account():
    d = directives(render_script(JobRequest("cpu", "cpu", 1, 2048, 60), CTX, CMD))
    assert "gres" not in d and "account" not in d


def test_command_and_path_are_quoted():
    script = render_script(
        JobRequest("cpu", "cpu", 1, 2048, 60),
        CTX,
        [*CMD, "--NotebookApp.default_url=/lab; rm -rf ~"],
        path_prefix="/opt/my venv/bin",
    )
    assert "export PATH='/opt/my venv/bin':\"$PATH\"" in script
    assert shlex.split(command_line(script)) == [*CMD, "--NotebookApp.default_url=/lab; rm -rf ~", "&"]


def test_prologue_is_included_before_the_command():
    script = render_script(JobRequest("cpu", "cpu", 1, 2048, 60), CTX, CMD, prologue="module load cuda")
    assert script.index("module load cuda") < script.index(command_line(script))


@pytest.mark.parametrize(
    "request_, ctx",
    [
        (JobRequest("x", "gpu\n#SBATCH --gres=gpu:8", 1, 1, 1), CTX),
        (JobRequest("x", "cpu", 1, 1, 1, account="a;b"), CTX),
        (JobRequest("x", "cpu", 1, 1, 1), JobContext("alice", "/home/a lice", "/tmp")),
        (JobRequest("x", "cpu", 1, 1, 1), JobContext("Alice; id", "/home/alice", "/tmp")),
    ],
)
def test_renderer_refuses_unsafe_values_even_if_policy_was_bypassed(request_, ctx):
    with pytest.raises(ScriptError):
        render_script(request_, ctx, CMD)


def test_sbatch_argv_preserves_env_by_name_only():
    argv = sbatch_argv(
        ["sudo", "-n", "-u", "{username}"], ["/usr/bin/sbatch"], "alice", ["JUPYTERHUB_API_TOKEN"]
    )
    assert argv == [
        "sudo",
        "--preserve-env=JUPYTERHUB_API_TOKEN",
        "-n",
        "-u",
        "alice",
        "/usr/bin/sbatch",
        "--parsable",
        "--no-requeue",
    ]
    with pytest.raises(ScriptError):
        sbatch_argv(["sudo", "-u", "{username}"], ["sbatch"], "root -s", [])


def test_parse_job_id():
    assert parse_job_id("123\n") == "123"
    assert parse_job_id("warning: something\n456;cluster\n") == "456"
    with pytest.raises(ValueError):
        parse_job_id("sbatch: error: Batch job submission failed")


# --- property-based: hostile strings through validation and rendering -------------------

HOSTILE = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "gpu\n#SBATCH --gres=gpu:8",
            "cpu --account=other",
            "$(id)",
            "`reboot`",
            "a;rm -rf /",
            "cpu'\"",
            "ｇｐｕ",
            "gpu\u2028#SBATCH",
            "1e9",
            "9" * 40,
            "-1",
            "1; scancel -u alice",
            "04:00:00\n#SBATCH --partition=reserved",
            "../../etc/passwd",
        ]
    ),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.floats(allow_nan=True),
)
KEYS = st.sampled_from(
    ["profile", "gpus", "cpus", "memory", "walltime", "partition", "account", "cmd", "options"]
)
SAFE_LINE = re.compile(r"#SBATCH --[a-z-]+=[A-Za-z0-9_.:/%=,+@-]+\Z")
POLICY = policy_from_dict(SITE)


def padded(values):
    """``values``, as given or as strings with the spaces a form adds."""
    return st.one_of(
        st.sampled_from(values),
        st.builds(
            lambda v, left, right: f"{left}{v}{right}",
            st.sampled_from(values),
            *[st.sampled_from(["", " ", "\t"])] * 2,
        ),
    )


#: Values each option may take for a user without groups (SITE's default limits): every
#: combination of them is accepted.
VALID = {
    "profile": st.sampled_from(["cpu", "gpu1", "fullnode", None, ""]),
    "gpus": padded([0, 1, 2, "0", "2"]),
    "cpus": padded([1, 4, 16, "1", "16"]),
    "memory": padded(["512M", "2G", "16G", "64G", "65536", 1024, "2GB", "1gib"]),
    "walltime": padded(["04:00:00", "8h", "90m", "1:30", "480", 60, "00:00:01"]),
    "partition": st.sampled_from(["cpu", "gpu"]),  # names are not stripped: " cpu" is refused
    "account": st.sampled_from(["demo", "", None]),
}
#: Near-valid options: valid values for some keys, and a hostile value for at most one key
#: (a dictionary of hostile values only is nearly always refused at its first key).
MIXED = st.builds(
    lambda valid, hostile: {**valid, **hostile},
    st.fixed_dictionaries({}, optional=VALID),
    st.dictionaries(st.sampled_from(list(VALID)), HOSTILE, max_size=1),
)
OPTIONS = st.one_of(MIXED, st.dictionaries(KEYS, HOSTILE, max_size=5))


def test_no_hostile_input_reaches_the_script():
    # How many examples reached which end; checked after the run, so that a strategy that
    # degenerates (everything refused before the asserts on the script) fails the test.
    seen = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(OPTIONS)
    def check(options):
        seen["examples"] += 1
        try:
            request = POLICY.validate(options)
        except PolicyError as e:
            event(f"refused: {e.field}")
            seen["refused"] += 1
            return  # rejected with a message: fine
        set_values = {k: v for k, v in options.items() if v not in ("", None)}
        event(f"accepted with {len(set_values)} value(s) set")
        seen["accepted"] += 1
        seen["accepted with a custom value"] += bool(set(set_values) - {"profile"})
        script = render_script(request, CTX, CMD)
        header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
        assert all(SAFE_LINE.match(line) for line in header), header
        d = directives(script)
        # Whatever was accepted stays inside the default limits and allow-lists.
        assert d["partition"] in ("cpu", "gpu")
        assert d.get("account", "demo") == "demo"
        assert int(d.get("gres", "gpu:0").split(":")[1]) <= 2
        assert 1 <= int(d["cpus-per-task"]) <= 16
        assert int(d["mem"].rstrip("M")) <= 64 * 1024
        # Only the lines we render: header, fixed preamble and the one command line.
        assert script.count("\n#SBATCH") == len(header)
        assert shlex.split(command_line(script)) == [*CMD, "&"]

    check()
    print(dict(seen))
    # Both ends are exercised in earnest: a fifth or more of the examples reach the asserts on
    # the rendered script (about a third do), most of them with custom values; a quarter or more
    # are refused. (Hostile dictionaries alone: about 1 in 25 accepted, none with a custom value.)
    assert seen["examples"] >= 100, seen
    assert seen["accepted"] >= seen["examples"] / 5, seen
    assert seen["accepted with a custom value"] >= seen["accepted"] / 2, seen
    assert seen["refused"] >= seen["examples"] / 4, seen


def test_rendered_script_is_valid_bash_and_python(tmp_path):
    import subprocess

    from werkbank_core.script import PORT_REPORT

    script = render_script(
        JobRequest("gpu1", "gpu", 4, 16384, 240, gpus=1), CTX, CMD, path_prefix="/opt/x/bin"
    )
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    compile(PORT_REPORT, "port-report", "exec")
    # The token is read by Python, or printed by bash's builtin printf into curl's standard input
    # (tests/unit/test_end_report.py): never an argument of a command other users' ps shows.
    in_script = script.replace('os.environ["JUPYTERHUB_API_TOKEN"]', "")
    assert in_script.count("JUPYTERHUB_API_TOKEN") == 1
    assert "printf 'Authorization: token %s\\n' \"$JUPYTERHUB_API_TOKEN\" |\n        curl " in in_script


class FakeHub:
    """An HTTP server on loopback that records what the job script posts to the hub API."""

    def __init__(self):
        import http.server
        import threading

        reports = self.reports = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reports.append((self.path, self.headers["Authorization"], json.loads(body)))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hub/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def job_tail(command: list[str], tmp_path):
    """The rendered script from where Jupyter starts (no Slurm, no port report), as a file."""
    script = render_script(JobRequest("cpu", "cpu", 1, 2048, 60), CTX, command)
    tail = script[script.index("# Jupyter runs as this script's child") :]
    path = tmp_path / "tail.sh"
    path.write_text("#!/bin/bash\nset -euo pipefail\n" + tail)
    return path


def run_tail(path, hub: FakeHub, *, terminate_after: float | None = None):
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "JUPYTERHUB_API_URL": hub.url, "JUPYTERHUB_API_TOKEN": "server-token"}
    env["SLURM_JOB_ID"] = "4711"
    proc = subprocess.Popen(
        ["bash", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if terminate_after is not None:
        time.sleep(terminate_after)
        proc.send_signal(signal.SIGTERM)  # what Slurm sends at scancel or the time limit
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_the_job_tells_the_hub_when_jupyter_exits(tmp_path):
    hub = FakeHub()
    try:
        code, _, err = run_tail(job_tail(["sh", "-c", "exit 3"], tmp_path), hub)
    finally:
        hub.close()
    assert code == 3, err  # the job ends with Jupyter's status
    assert hub.reports == [
        (
            "/hub/api/werkbank/server-ended",
            "token server-token",
            {"job_id": "4711", "how": "exit", "status": 3},
        )
    ]


def test_the_job_tells_the_hub_at_slurms_sigterm_and_jupyter_gets_it(tmp_path):
    # The stand-in for Jupyter writes down the signal it got, then takes a moment to shut down.
    marker = tmp_path / "got"
    jupyter = (
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        f"    open({str(marker)!r}, 'w').write(str(signum)); time.sleep(0.5); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(30)\n"
    )
    hub = FakeHub()
    try:
        code, _, err = run_tail(job_tail([sys.executable, "-c", jupyter], tmp_path), hub, terminate_after=1.5)
    finally:
        hub.close()
    # Only the script got the signal here (Slurm signals both): it passed it on and waited for Jupyter.
    assert marker.read_text() == "15", err
    assert code == 0, err
    assert [body for _, _, body in hub.reports] == [{"job_id": "4711", "how": "signal", "status": 0}]


def test_a_hub_that_does_not_answer_does_not_change_how_the_job_ends(tmp_path):
    hub = FakeHub()
    hub.close()  # nobody listens: the report fails, with a line in the job's log
    code, _, err = run_tail(job_tail(["sh", "-c", "exit 0"], tmp_path), hub)
    assert code == 0
    assert "could not tell the hub that the server ended" in err
