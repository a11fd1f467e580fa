"""`make demo NODES=2` (issue 19): deploy/demo-up.sh --nodes 2 brings the demo up on the multi-node
cluster: JupyterHub and its proxy on the hub host wb-hub, the printed URL on this machine's
loopback (a forwarder into wb-hub's namespace), servers as Slurm jobs on node1 or node2. The test
logs in with the printed credentials through that URL, spawns a server, finds its job on a node,
talks to it over HTTP and a kernel websocket, checks that the job reaches MLflow at the hub host's
address and the browser through the hub's proxy, then runs deploy/demo-down.sh and checks that
nothing of the demo is left.

The test's own requests go where a browser's would: to the loopback URL, from this machine's
namespace (unlike tests/integration/test_multinode_hub.py, which sends them from inside wb-hub)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.cluster import DEPLOY, run, wait_for
from tests.multinode import NODES, read_env
from tests.services import ServiceError

pytestmark = pytest.mark.integration

#: The loopback port of the printed URL (WERKBANK_DEMO_PORT): none of the suite's, and not the
#: demo's own 8000, so that a demo someone runs does not answer in its place.
PORT = 18600
#: What deploy/demo-multinode.sh keeps while the demo runs (pid files, markers).
RUN = Path("/run/werkbank-demo-multinode")
ENV = read_env()
CONF = f"{ENV['MN_RUN_DIR']}/slurm.conf"
#: The demo hub's log (appended to by every run).
HUB_LOG = Path("/var/lib/werkbank/multinode-demo/hub/jupyterhub.log")
#: Whole test, demo up to demo down (the issue's bound).
BUDGET = 90


def demo(script: str, *args: str) -> tuple[str, float]:
    """Run deploy/``script``; returns its output and the seconds it took. Fails with the output."""
    started = time.monotonic()
    env = dict(os.environ, WERKBANK_DEMO_PORT=str(PORT), WERKBANK_DEMO_INSTALL="no")
    result = run(str(DEPLOY / script), *args, check=False, env=env, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script} {' '.join(args)} failed ({result.returncode}):\n{output}"
    return output, time.monotonic() - started


def squeue(user: str) -> list[list[str]]:
    """``user``'s jobs on the multi-node cluster (asked on wb-hub): job id, state, node, name."""
    argv = ["squeue", "--noheader", f"--user={user}", "--format=%i %T %N %j"]
    result = run("nsenter", f"--net=/run/netns/{ENV['MN_HUB_NS']}", "env", f"SLURM_CONF={CONF}", *argv)
    return [line.split() for line in result.stdout.splitlines() if line.strip()]


def cluster_running() -> bool:
    pid_file = Path(ENV["MN_RUN_DIR"]) / "slurmctld.pid"
    return pid_file.exists() and Path(f"/proc/{pid_file.read_text().strip()}").exists()


def demo_processes_on_hub_host() -> list[str]:
    """Command lines of the hub's processes (hub, proxy, MLflow and its proxy) left on wb-hub."""
    pids = run("ip", "netns", "pids", ENV["MN_HUB_NS"], check=False).stdout.split()
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    hub_processes = re.compile(r"jupyterhub|configurable-http-proxy|mlflow|netns-forward")
    return [line for line in lines if hub_processes.search(line)]


def printed(output: str, label: str) -> str:
    found = re.search(rf"^\s+{label}:\s+(\S+)", output, re.MULTILINE)
    assert found, f"no {label!r} line in the demo's output:\n{output}"
    return found.group(1)


def cookie_header(client: httpx.Client) -> str:
    """The client's cookies as one Cookie header, for tornado's websocket client (as in
    tests/integration/test_dashboards.py)."""
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


async def execute(url: str, cookies: str, code: str, timeout: float = 30) -> str:
    """Run ``code`` in the kernel whose channels websocket is ``url``; returns the text/plain of
    its execute_result (or the error it raised, as ``ename: evalue``)."""
    # A browser's request: its cookies, and the Origin Jupyter's server compares with the Host.
    origin = "http://" + url.split("/")[2]
    ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookies, "Origin": origin}))
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex,
              "username": "", "version": "5.3"}  # fmt: skip
    ws.write_message(json.dumps({"channel": "shell", "header": header, "parent_header": {}, "metadata": {},
                                 "content": {"code": code, "silent": False}}))  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
            assert message is not None, "the kernel's websocket closed"
            reply = json.loads(message)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if reply["msg_type"] == "execute_result":
                return reply["content"]["data"]["text/plain"]
            if reply["msg_type"] == "error":
                return f"{reply['content']['ename']}: {reply['content']['evalue']}"
    finally:
        ws.close()
    raise AssertionError(f"no result of {code!r} within {timeout} s")


#: Run in the session (a job on a node): the hub's MLflow service at the address jobs are given,
#: with the session's own token, as MLflow's client would send it.
MLFLOW_FROM_JOB = """
import os, urllib.request
request = urllib.request.Request(
    os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1",
    headers={"Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]},
)
(os.environ["MLFLOW_TRACKING_URI"], urllib.request.urlopen(request, timeout=20).status)
"""


def test_demo_on_the_multinode_cluster_serves_a_kernel_on_a_node_and_stops_cleanly(report_figure):
    if RUN.exists():
        pytest.fail(f"a multi-node demo runs already ({RUN} exists): stop it with `make demo-stop`")
    cluster_was_up = cluster_running()
    log_start = HUB_LOG.stat().st_size if HUB_LOG.exists() else 0
    started = time.monotonic()
    hub_pid = forward_pid = 0
    try:
        output, up_seconds = demo("demo-up.sh", "--nodes", "2")
        report_figure(
            f"demo NODES=2: up ({'cluster running' if cluster_was_up else 'cluster started'})",
            f"{up_seconds:.1f} s",
        )
        hub_pid, forward_pid = (int((RUN / name).read_text()) for name in ("jupyterhub.pid", "forward.pid"))
        url, user, password = (printed(output, label) for label in ("URL", "user", "password"))
        assert url == f"http://127.0.0.1:{PORT}/", output
        with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as client:
            client.get("hub/login")
            r = client.post(
                "hub/login",
                data={"username": user, "password": password, "_xsrf": client.cookies.get("_xsrf", "")},
            )
            assert r.status_code == 200 and "CPU" in r.text, r.text[:1000]  # the spawn page
            spawned = time.monotonic()
            r = client.post("hub/spawn", data={"profile": "cpu", "_xsrf": client.cookies.get("_xsrf", "")})
            assert r.status_code == 200, r.text[:1000]

            def lab_page():
                # Through the server's OAuth with the hub and back, as a browser would: it leaves
                # the server's cookie, which its API (that does not redirect) needs.
                response = client.get(f"user/{user}/lab")
                return response.status_code == 200 and "JupyterLab" in response.text

            try:
                wait_for(lab_page, 60, f"JupyterLab of {user}'s server at {url}", interval=0.5)
            except ServiceError as error:
                with HUB_LOG.open(errors="replace") as log:
                    log.seek(log_start)
                    pytest.fail(f"{error}; the hub's log:\n" + "\n".join(log.read().splitlines()[-40:]))
            report_figure("demo NODES=2: spawn to JupyterLab", f"{time.monotonic() - spawned:.1f} s")
            r = client.get(f"user/{user}/api/status")
            assert r.status_code == 200 and "last_activity" in r.json(), r.text[:1000]
            jobs = squeue(user)
            assert len(jobs) == 1, jobs
            _, state, node, name = jobs[0]
            assert (state, name) == ("RUNNING", "werkbank-jupyter") and node in NODES, jobs

            # JupyterLab's page set the server's _xsrf cookie, which POSTs with cookies need.
            xsrf = client.cookies.get("_xsrf", path=f"/user/{user}/")
            r = client.post(
                f"user/{user}/api/kernels", json={"name": "python3"}, headers={"X-XSRFToken": xsrf}
            )
            assert r.status_code == 201, r.text[:1000]
            channels = f"ws://127.0.0.1:{PORT}/user/{user}/api/kernels/{r.json()['id']}/channels"
            assert asyncio.run(execute(channels, cookie_header(client), "1+1")) == "2"
            mlflow = asyncio.run(execute(channels, cookie_header(client), MLFLOW_FROM_JOB))
            assert mlflow == f"('http://{ENV['MN_HUB_ADDR']}:5001/services/mlflow', 200)", mlflow
            # The browser's way to the same MLflow: through the hub's proxy, after the hub's login;
            # it lists the experiment the hub made for the session.
            page = wait_for(lambda: (r := client.get("services/mlflow/")).status_code == 200 and r, 30,
                            "MLflow through the hub's proxy")  # fmt: skip
            assert page.url == f"{url}services/mlflow/", page.url
            r = client.get("services/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=100")
            assert r.status_code == 200, r.text[:1000]
            assert f"{user}/default" in [e["name"] for e in r.json()["experiments"]], r.text[:1000]
    finally:
        # Also after a failed start: what it did start is stopped, and the next run is not refused.
        down, down_seconds = demo("demo-down.sh")
    report_figure("demo NODES=2: down", f"{down_seconds:.1f} s")
    total = time.monotonic() - started
    report_figure("demo NODES=2: up, spawn, kernel, down", f"{total:.1f} s")

    for pid, what in ((hub_pid, "JupyterHub"), (forward_pid, "the forwarder")):
        assert not Path(f"/proc/{pid}").exists(), f"{what} (pid {pid}) still runs:\n{down}"
    assert not run("ss", "-Hltn", f"sport = :{PORT}").stdout.strip(), f"port {PORT} still listens"
    assert not RUN.exists(), down
    # The cluster stays as it was found: stopped again if the demo started it.
    assert cluster_running() == cluster_was_up, down
    if cluster_was_up:
        assert squeue("demo") == [], down
        left = demo_processes_on_hub_host()
        assert not left, f"still on {ENV['MN_HUB_NS']}: {left}\n{down}"
        assert "multinode: down" not in down, down
    else:
        assert not Path(f"/run/netns/{ENV['MN_HUB_NS']}").exists(), down
    assert total < BUDGET, f"took {total:.1f} s (bound {BUDGET} s)"
