"""The job script's report that its server ended (``werkbank_core.script.END_REPORT_FUNCTION``), run
by bash against a small HTTP server standing in for the hub API: with curl where the node has it,
with Python's standard library where it does not; the same request either way, the token never on
a command line. (With internal_ssl: tests/unit/test_internal_ssl.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from werkbank_core.script import END_REPORT_FUNCTION

TOKEN = "0123456789abcdef0123456789abcdef"


class FakeHub(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.posts: list[tuple[str, dict, dict]] = []
        self.answer = 202
        self.delay = 0.0  # seconds before answering

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hub/api/"


class FakeHubHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, dict(self.headers), json.loads(body)))
        time.sleep(self.server.delay)
        self.send_response(self.server.answer)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def report(hub: FakeHub, path: str, how: str = "signal", status: int = 0) -> subprocess.CompletedProcess:
    script = "\n".join([*END_REPORT_FUNCTION, 'werkbank_end_report "$@"'])
    env = {
        "PATH": path,
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_API_TOKEN": TOKEN,
        "SLURM_JOB_ID": "4711",
    }
    bash = shutil.which("bash")
    return subprocess.run(
        [bash, "-euo", "pipefail", "-c", script, "report", how, str(status)],
        env=env,
        text=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def with_curl(tmp_path) -> tuple[str, Path]:
    """A PATH whose curl records its arguments, then runs the real one."""
    folder = tmp_path / "bin"
    folder.mkdir()
    calls = tmp_path / "curl-args"
    wrapper = folder / "curl"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {calls}\nexec {shutil.which("curl")} "$@"\n')
    wrapper.chmod(0o755)
    return f"{folder}:/usr/bin:/bin", calls


@pytest.fixture
def without_curl(tmp_path) -> str:
    """A PATH with python3 and no curl."""
    folder = tmp_path / "nocurl"
    folder.mkdir()
    (folder / "python3").symlink_to(shutil.which("python3", path="/usr/bin:/bin"))
    return str(folder)


@pytest.mark.parametrize("client", ["curl", "python"])
@pytest.mark.parametrize("how, status", [("signal", 0), ("exit", 3)])
def test_the_report_posts_exactly_the_jobs_end_with_the_token(
    hub, with_curl, without_curl, client, how, status
):
    done = report(hub, with_curl[0] if client == "curl" else without_curl, how, status)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    [(path, headers, body)] = hub.posts
    assert path == "/hub/api/werkbank/server-ended"
    assert headers["Authorization"] == f"token {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    assert body == {"job_id": "4711", "how": how, "status": status}
    assert with_curl[1].exists() == (client == "curl")


def test_the_token_is_not_on_curls_command_line(hub, with_curl):
    assert report(hub, with_curl[0]).returncode == 0
    args = with_curl[1].read_text()
    assert "-H\n@-\n" in args and TOKEN not in args


@pytest.mark.parametrize("client", ["curl", "python"])
def test_a_refused_report_is_quiet_only_when_the_hub_stopped_the_server_already(
    hub, with_curl, without_curl, client
):
    path = with_curl[0] if client == "curl" else without_curl
    hub.answer = 403
    done = report(hub, path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    hub.answer = 500
    done = report(hub, path)
    assert done.returncode == 0 and "could not tell the hub that the server ended" in done.stderr


@pytest.mark.parametrize("client", ["curl", "python"])
def test_no_hub_is_a_message_not_a_failed_script(with_curl, without_curl, client):
    class Gone:
        api_url = "http://127.0.0.1:9/hub/api/"  # discard: nothing listens

    done = report(Gone(), with_curl[0] if client == "curl" else without_curl)
    assert done.returncode == 0 and "could not tell the hub that the server ended" in done.stderr


def test_the_trap_lowers_the_ending_servers_priority_after_the_report(tmp_path, hub, with_curl):
    """Rendered trap, real signal: Jupyter (here: sleep) gets nice 19 while the report is on its
    way (the hub answers after 0.5 s), the report is the job's signal, and then the job's session
    gets nice 19 as a whole."""
    from werkbank_core.script import END_LINES_AFTER, END_LINES_BEFORE

    ready = tmp_path / "ready"
    hub.delay = 0.5
    bystander = tmp_path / "bystander"  # another process of the job's session, as slurmstepd is
    script = "\n".join(
        [
            *END_LINES_BEFORE,
            f"sleep 60 & echo $! > {bystander}",
            f"sleep 30 & werkbank_jupyter=$!; echo $werkbank_jupyter > {ready}",
            *END_LINES_AFTER[1:],
        ]
    )
    env = {"PATH": with_curl[0], "JUPYTERHUB_API_URL": hub.api_url, "JUPYTERHUB_API_TOKEN": TOKEN,
           "SLURM_JOB_ID": "4711"}  # fmt: skip
    job = subprocess.Popen([shutil.which("bash"), "-c", script], env=env, start_new_session=True)
    try:
        for _ in range(100):
            if ready.exists() and ready.read_text().strip():
                break
            time.sleep(0.05)
        sleeper = int(ready.read_text())
        nice = []
        original = os.getpriority(os.PRIO_PROCESS, sleeper)
        os.kill(job.pid, 15)
        for _ in range(100):  # the trap renices before it reports and kills
            try:
                nice.append(os.getpriority(os.PRIO_PROCESS, sleeper))
            except ProcessLookupError:
                break
            time.sleep(0.02)
        assert job.wait(10) == 143  # as Jupyter ended: 128 + TERM
    finally:
        job.kill()
    assert original == 0 and 19 in nice, nice
    # After the report the job's whole session yields the CPU (its autogroup, where the kernel
    # has them).
    other = int(bystander.read_text())
    try:
        autogroup = Path(f"/proc/{other}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text().split()[-1] == "19", autogroup.read_text()
    finally:
        os.kill(other, 9)
    [(_, _, body)] = hub.posts
    assert body == {"job_id": "4711", "how": "signal", "status": 0}
