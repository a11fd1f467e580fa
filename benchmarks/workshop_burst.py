"""A workshop's first minute: N participants log in with the event code and start their servers at
the same moment, each runs a cell through its kernel, then the trainer stops them all.

Run as root on the machine with the single-node Slurm cluster (deploy/slurm-up.sh)::

    /opt/werkbank/venv/bin/python benchmarks/workshop_burst.py                 # 30 participants
    /opt/werkbank/venv/bin/python benchmarks/workshop_burst.py --participants 5

It starts a werkbank hub (hub_config/jupyterhub_config.py, a test site; port 28400, API 28481,
trainer console 28482; MLflow off: this measures spawning), creates a course of N + 1 pool
accounts with ``werkbank-workshop create`` (a reservation of N + 1 cores), and prints, measured
in the same run:

- a single participant's spawn alone (login, spawn form, until the hub reports the server ready,
  and until a first cell ran), three times: the baseline;
- the burst: for each of N participants at once, the same times; median, p95, max and failures;
  p95 against the single spawn;
- the hub's CPU time and memory (the hub process and its children: proxy, services) over the
  burst, sampled from /proc;
- how long "stop all" from the trainer console takes until every server is gone.

Nothing is asserted. It ends the course (``werkbank-workshop end``) and removes its accounts,
also when it fails. Shares the cluster with the test suite: run it under
``flock /tmp/werkbank-cluster.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.cluster import SERVICE_TOKEN, VENV_BIN, make_hub, run, start_slurm  # noqa: E402

PORT, API_PORT = 28400, 28481
PREFIX = "burst"
TRAINER = "alice"  # a test user (tests.cluster.start_slurm makes it)


@dataclass
class Attempt:
    who: str
    ready: float | None = None  # seconds from the start until the hub reported the server ready
    cell: float | None = None  # ... until a first cell's result came back
    error: str = ""


def say(text: str = "") -> None:
    print(text, flush=True)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# --- one participant ---------------------------------------------------------------------------


def participant(hub_url: str, nickname: str, code: str, start: float, timeout: float = 300) -> Attempt:
    """Log in with the event code, submit the spawn form, wait for the server, run ``6*7``."""
    attempt = Attempt(nickname)
    try:
        with httpx.Client(base_url=hub_url, timeout=60, follow_redirects=True) as browser:
            browser.get("/hub/login")
            r = browser.post(
                "/hub/login", data={"username": nickname, "password": code, "_xsrf": browser.cookies["_xsrf"]}
            )
            r.raise_for_status()
            user = browser.get("/hub/api/user").json()["name"]
            attempt.who = user
            r = browser.post(
                "/hub/spawn",
                data={"profile": "course", "_xsrf": browser.cookies["_xsrf"]},
                follow_redirects=False,
            )
            if r.status_code not in (302, 303):
                raise RuntimeError(f"spawn form answered {r.status_code}")
        admin = {"Authorization": f"token {SERVICE_TOKEN}"}
        wait_ready(hub_url, user, admin, timeout)
        attempt.ready = time.monotonic() - start
        token = httpx.post(
            f"{hub_url}/hub/api/users/{user}/tokens", headers=admin, json={"expires_in": 3600}, timeout=30
        ).json()["token"]
        result = asyncio.run(run_cell(hub_url, user, token, "6*7"))
        if result != "42":
            raise RuntimeError(f"the cell gave {result!r}")
        attempt.cell = time.monotonic() - start
    except Exception as e:  # reported, not raised: a burst counts its failures
        attempt.error = f"{type(e).__name__}: {e}"
    return attempt


def wait_ready(hub_url: str, user: str, headers: dict, timeout: float) -> None:
    """Follow the spawn's progress stream, as the spawn-pending page does (no polling)."""
    url = f"{hub_url}/hub/api/users/{user}/server/progress"
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as events:
        for line in events.iter_lines():  # the hub sends a keepalive line every few seconds
            if time.monotonic() > deadline:
                raise RuntimeError(f"no 'ready' in the progress stream after {timeout:g} s")
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("ready"):
                return
            if event.get("failed"):
                raise RuntimeError(f"the spawn failed: {event.get('message')}")
    raise RuntimeError("the progress stream ended before the server was ready")


async def run_cell(hub_url: str, user: str, token: str, code: str, timeout: float = 120) -> str:
    """Start a kernel on the user's server, run ``code`` over the kernel's websocket, return the
    result's text."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(base_url=f"{hub_url}/user/{user}", headers=headers, timeout=60) as client:
        kernel = (await client.post("/api/kernels", json={"name": "python3"})).json()["id"]
        url = f"{hub_url.replace('http', 'ws', 1)}/user/{user}/api/kernels/{kernel}/channels"
        ws = await websocket_connect(
            HTTPRequest(url, headers=headers, connect_timeout=timeout, request_timeout=timeout)
        )
        msg_id = uuid.uuid4().hex
        await ws.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": user,
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                        "date": datetime.now().isoformat(),
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                message = await asyncio.wait_for(ws.read_message(), max(deadline - time.monotonic(), 0.1))
                if message is None:
                    raise RuntimeError("the kernel's websocket closed")
                msg = json.loads(message)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "execute_result":
                    return msg["content"]["data"]["text/plain"]
                if msg["msg_type"] == "error":
                    raise RuntimeError(msg["content"]["ename"])
        finally:
            ws.close()
            await client.delete(f"/api/kernels/{kernel}")


# --- the hub's resources -------------------------------------------------------------------------


class HubSampler(threading.Thread):
    """CPU seconds and memory of the hub and its children (proxy, services), from /proc."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop_event = threading.Event()
        self.rss_peak = 0
        self.cpu_start = self.cpu_end = 0.0
        self.ticks = os.sysconf("SC_CLK_TCK")

    def processes(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout.split()
        return [self.pid, *map(int, out)]

    def cpu_and_rss(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for pid in self.processes():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / self.ticks
                rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        return cpu, rss

    @staticmethod
    def machine_busy() -> tuple[float, float]:
        """Seconds every core together was busy and was there, from /proc/stat."""
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]
        return (sum(fields) - idle) / ticks, sum(fields) / ticks

    def run(self):
        self.machine_start = self.machine_busy()
        self.cpu_start, _ = self.cpu_and_rss()
        while not self.stop_event.wait(self.interval):
            cpu, rss = self.cpu_and_rss()
            self.cpu_end, self.rss_peak = cpu, max(self.rss_peak, rss)

    def stop(self):
        self.stop_event.set()
        self.join()
        self.machine_end = self.machine_busy()

    def machine_share(self) -> tuple[float, float]:
        """CPU seconds the whole machine used over the run, and the share of all cores."""
        busy = self.machine_end[0] - self.machine_start[0]
        return busy, busy / (self.machine_end[1] - self.machine_start[1])


# --- the run ---------------------------------------------------------------------------------------


def workshop(site: str, *args: str) -> str:
    result = run(str(VENV_BIN / "werkbank-workshop"), *args, "--site", site, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"werkbank-workshop {args[0]}: {result.stderr.strip()}")
    return result.stdout


def course_file(folder: Path, participants: int) -> Path:
    now = datetime.now().replace(microsecond=0)
    course = {
        "name": f"burst-{uuid.uuid4().hex[:6]}",
        "trainers": [TRAINER],
        "participants": participants,
        "account_prefix": PREFIX,
        "profile": {"cpus": 1, "memory": "1G", "walltime": "1h"},
        "starts": (now - timedelta(minutes=1)).isoformat(),
        "ends": (now + timedelta(hours=2)).isoformat(),
        "reservation": True,
    }
    path = folder / "course.yaml"
    path.write_text(yaml.safe_dump(course))
    return path


def stop_all(hub_url: str, course: str) -> float:
    """The trainer console's "stop all", until every server is gone; seconds."""
    admin = httpx.post(
        f"{hub_url}/hub/api/users/{TRAINER}/tokens",
        headers={"Authorization": f"token {SERVICE_TOKEN}"},
        json={"expires_in": 3600},
        timeout=30,
    ).json()["token"]
    start = time.monotonic()
    r = httpx.delete(
        f"{hub_url}/services/werkbank-workshop/api/courses/{course}/servers",
        headers={"Authorization": f"token {admin}"},
        timeout=300,
    )
    r.raise_for_status()
    stopped = r.json()["stopped"]
    while any(
        (
            httpx.get(f"{hub_url}/hub/api/users/{u}", headers={"Authorization": f"token {SERVICE_TOKEN}"})
            .json()
            .get("servers")
            or {}
        )
        for u in stopped
    ):
        time.sleep(0.5)
    return time.monotonic() - start


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: none"
    return (
        f"{name}: median {statistics.median(values):.2f} s, p95 {p95(values):.2f} s, max {max(values):.2f} s"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=30, help="participants in the burst (default 30)")
    parser.add_argument("--solo", type=int, default=3, help="single spawns for the baseline (default 3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("workshop_burst: run as root (course accounts, Slurm)")
    start_slurm()
    root = Path(tempfile.mkdtemp(prefix="werkbank-burst-"))
    hub = make_hub(root, port=PORT, api_port=API_PORT, spawner="slurm", mlflow=False)
    site = hub.env["WERKBANK_SITE_CONFIG"]
    course = None
    try:
        hub.start()
        path = course_file(root, args.participants + 1)
        course = yaml.safe_load(path.read_text())["name"]
        out = workshop(site, "create", str(path))
        code = out.split("event code: ")[1].split()[0]
        say(f"course {course}: {args.participants + 1} pool accounts, reservation; hub at {hub.url}")
        solos = []
        for _ in range(args.solo):
            attempt = participant(hub.url, "solo", code, time.monotonic())
            solos.append(attempt)
            stop_all(hub.url, course)
        single = [a.ready for a in solos if a.ready is not None]
        say(summary(f"single spawn, alone ({len(single)}/{args.solo}), login to ready", single))
        say(
            summary(
                "single spawn, alone, login to a cell's result", [a.cell for a in solos if a.cell is not None]
            )
        )

        sampler = HubSampler(hub.process.proc.pid)
        sampler.start()
        start = time.monotonic()
        barrier = threading.Barrier(args.participants)

        def one(i: int) -> Attempt:
            barrier.wait()
            return participant(hub.url, f"participant {i}", code, time.monotonic())

        with ThreadPoolExecutor(max_workers=args.participants) as pool:
            burst = list(pool.map(one, range(args.participants)))
        elapsed = time.monotonic() - start
        sampler.stop()
        ready = [a.ready for a in burst if a.ready is not None]
        cells = [a.cell for a in burst if a.cell is not None]
        failures = [a for a in burst if a.error]
        say(
            f"burst of {args.participants}: {len(ready)}/{args.participants} ready, "
            f"{len(failures)} failures, all done after {elapsed:.1f} s"
        )
        say(summary("  login to ready", ready))
        say(summary("  login to a cell's result", cells))
        if ready and single:
            say(f"  p95 ready / single spawn: {p95(ready) / statistics.median(single):.2f}x (target <= 2x)")
        for a in failures:
            say(f"  failed: {a.who}: {a.error}")
        cpu = sampler.cpu_end - sampler.cpu_start
        say(
            f"hub (with proxy and services) over the burst: {cpu:.1f} CPU s "
            f"({100 * cpu / elapsed:.0f} % of one core), peak memory {sampler.rss_peak / 2**20:.0f} MiB"
        )
        busy, share = sampler.machine_share()
        cores = os.cpu_count()
        say(f"the machine over the burst: {busy:.0f} CPU s, {100 * share:.0f} % of its {cores} cores busy")
        stopping = stop_all(hub.url, course)
        say(f"stop all from the trainer console: {stopping:.1f} s until every server was gone")
    finally:
        if course:
            try:
                ended = workshop(site, "end", course)
                for line in ended.splitlines():  # the trainer's copy of the (empty) work
                    if "participants' work: " in line:
                        Path(line.split("participants' work: ", 1)[1].strip()).unlink(missing_ok=True)
            except RuntimeError as e:
                say(f"cleanup: {e}")
        hub.stop()
        for i in range(1, args.participants + 2):
            run("userdel", "--remove", f"{PREFIX}{i:02d}", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
