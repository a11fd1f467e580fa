"""Spawn latency and scheduler load: werkbank vs stock batchspawner vs LocalProcessSpawner.

Run as root on the machine that runs the single-node Slurm cluster (deploy/slurm-up.sh)::

    /opt/werkbank/venv/bin/python benchmarks/spawn_latency.py            # full run, ~15 min
    /opt/werkbank/venv/bin/python benchmarks/spawn_latency.py --quick    # 3 spawns, crowd 6

It starts three hubs side by side (on ports 28000/28100/28200, proxy API and hub API on
+1/+81) and prints, measured in the same run:

A. spawn-to-ready time, ``POST /hub/api/users/NAME/server`` until ``GET /user/NAME/api/status``
   answers 200 through the proxy, interleaved werkbank, stock, local, werkbank, ...; with a
   breakdown of where the time goes, from the hub log, the job log and Slurm;
B. scheduler command calls per second while ``--crowd`` spawns are held pending behind a
   blocker job (counted by wrapper scripts configured as the spawners' commands);
C. after a mass ``scancel`` of ``--crowd`` running servers, how long each hub takes to report
   them stopped (each variant at its default poll interval; werkbank's jobs also tell the hub);
D. werkbank's polling with ``--crowd`` servers running, then with ``--others`` held jobs of another
   user in the queue: squeue calls per second and the hub's CPU per poll, side by side.

Nothing here asserts timings. Shares the cluster with the test suite: run it under
``flock /tmp/werkbank-cluster.lock``. It cancels only jobs of its own users (bench-*) and its
own blocker job, also when it fails.
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/services.py: how the tests and the benchmarks start services
from tests import services  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SINGLEUSER = str(VENV_BIN / "jupyterhub-singleuser")
BATCHSPAWNER_SINGLEUSER = str(VENV_BIN / "batchspawner-singleuser")
SLURM_BIN = Path("/usr/bin")
SCHEDULER_COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")

VARIANTS = ("werkbank", "stock", "local")
SOLO_USERS = {"werkbank": "bench-w", "stock": "bench-s", "local": "bench-l"}
BASE_PORTS = {"werkbank": 28000, "stock": 28100, "local": 28200}
SPAWN_BODY = {"werkbank": {"profile": "cpu"}, "stock": {}, "local": {}}
JOB_NAMES = {"werkbank": "werkbank-jupyter", "stock": "spawner-jupyterhub"}
BLOCKER_NAME = "bench-blocker"

SERVICE_TOKEN = "werkbank-bench-" + os.urandom(16).hex()
SHARED_PASSWORD = "bench-" + os.urandom(8).hex()
SERVICE_SCOPES = [
    "admin:users",
    "admin:servers",
    "admin:server_state",
    "tokens",
    "list:users",
    "read:users",
]

LOG_LINE = re.compile(r"^\[(\w) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\S+)")


class BenchError(RuntimeError):
    """Something did not come up or did not finish in time; the message says what."""


# --------------------------------------------------------------------------- small helpers


def run(*argv, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` every ``interval`` seconds (fixed: the figures are read off these
    polls) until it returns something truthy; raise BenchError after ``timeout``."""
    try:
        return services.wait_for(predicate, timeout, what, interval=interval, max_interval=interval)
    except services.ServiceError as e:
        raise BenchError(str(e)) from None


def say(text: str = "") -> None:
    print(text, flush=True)


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (the maximum for fewer than 20 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def fmt(seconds: float | None) -> str:
    return "   n/a" if seconds is None else f"{seconds:6.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def log_time(text: str) -> float:
    """Epoch seconds of a JupyterHub/Jupyter log timestamp (local time, ms)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def timestamped_lines(path: Path) -> list[tuple[float, str]]:
    """(epoch, line) for every line of a Jupyter-style log that starts with a timestamp."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            lines.append((log_time(match.group(2)), line))
    return lines


def home_of(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


# --------------------------------------------------------------------------- Slurm helpers


def ensure_slurm() -> None:
    if run("sinfo", "--noheader", check=False).returncode != 0:
        result = run(str(REPO / "deploy" / "slurm-up.sh"), check=False, timeout=600)
        if result.returncode != 0:
            raise BenchError(f"deploy/slurm-up.sh failed:\n{result.stdout}\n{result.stderr}")


def ensure_users(users: list[str]) -> None:
    for user in users:
        run(str(REPO / "deploy" / "users.sh"), user)


def jobs_of(users: list[str], states: str = "all", name: str = "") -> dict[str, tuple[str, str]]:
    """job id -> (user, state) for the jobs of ``users`` that squeue still shows."""
    argv = ["squeue", "--noheader", "--user=" + ",".join(users), "--format=%i|%u|%T"]
    if states != "all":
        argv.append("--states=" + states)
    if name:
        argv.append("--name=" + name)
    jobs = {}
    for line in run(*argv).stdout.splitlines():
        job_id, user, state = line.strip().split("|")
        jobs[job_id] = (user, state)
    return jobs


def cancel_jobs_of(users: list[str], timeout: float = 60) -> None:
    """scancel every job of ``users`` (ours only) and wait until Slurm no longer runs them."""
    live = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"
    ids = list(jobs_of(users, live))
    if ids:
        run("scancel", *ids, check=False)
    wait_for(lambda: not jobs_of(users, live), timeout, f"the jobs of {len(users)} users to end", 1)


def foreign_jobs(ours: list[str]) -> list[str]:
    lines = run("squeue", "--noheader", "--format=%i %u %T %j").stdout.splitlines()
    return [line.strip() for line in lines if line.split()[1] not in ours]


def job_start_time(job_id: str) -> float | None:
    out = run("squeue", "--noheader", "--states=all", "--jobs=" + job_id, "--format=%S", check=False)
    text = out.stdout.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def submit_blocker() -> str:
    """A root job that takes every CPU of the node, so that spawns stay pending."""
    job_id = run(
        "sbatch",
        "--parsable",
        "--partition=cpu",
        "--cpus-per-task=32",
        "--mem=1G",
        f"--job-name={BLOCKER_NAME}",
        "--output=/dev/null",
        "--wrap=sleep 900",
    ).stdout.strip()
    job_id = job_id.split(";")[0]
    wait_for(
        lambda: jobs_of(["root"], "RUNNING", BLOCKER_NAME).get(job_id),
        60,
        f"blocker job {job_id} to run (is another job on the node?)",
        0.5,
    )
    return job_id


# --------------------------------------------------------------------------- counting wrappers


@dataclass
class CommandCounter:
    """Wrapper scripts that log each scheduler call (time, command, via sudo) and exec the real one."""

    bin_dir: Path
    log: Path

    @classmethod
    def create(cls, root: Path) -> CommandCounter:
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True)
        os.chmod(root, 0o755)
        os.chmod(bin_dir, 0o755)
        log = root / "calls.log"
        log.touch()
        os.chmod(log, 0o666)
        for name in SCHEDULER_COMMANDS:
            wrapper = bin_dir / name
            wrapper.write_text(
                "#!/bin/sh\n"
                f'printf "%s {name} %s\\n" "$(date +%s.%N)" "${{SUDO_USER:+sudo}}" >> {log}\n'
                f'exec {SLURM_BIN / name} "$@"\n'
            )
            os.chmod(wrapper, 0o755)
        return cls(bin_dir, log)

    def path(self, name: str) -> str:
        return str(self.bin_dir / name)

    def calls(self, start: float, end: float) -> list[tuple[str, bool]]:
        """(command, via sudo) for every call logged between ``start`` and ``end``."""
        calls = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and start <= float(parts[0]) < end:
                calls.append((parts[1], len(parts) > 2 and parts[2] == "sudo"))
        return calls


# --------------------------------------------------------------------------- the hub harness


@dataclass
class Hub:
    """A JupyterHub process started by the benchmark, driven through its REST API."""

    name: str
    workdir: Path
    port: int
    env: dict
    process: services.Process | None = None
    user_tokens: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "jupyterhub.log"

    def start(self, timeout: float = 120) -> None:
        argv = [str(VENV_BIN / "jupyterhub"), "-f", str(self.workdir / "jupyterhub_config.py")]
        self.process = services.Process(
            f"{self.name} hub", argv, log_path=self.log_path, env=self.env, cwd=self.workdir
        ).start()
        try:
            self.process.wait_until(
                lambda: services.answers(f"{self.url}/hub/health"), timeout, "/hub/health"
            )
        except services.ServiceError as e:
            raise BenchError(str(e)) from None

    def stop(self, timeout: float = 30) -> None:
        # SIGTERM to the hub, then whatever is left of its session (the proxy) is killed.
        if self.process is not None:
            self.process.stop(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- REST API

    def api(self, method: str, path: str, timeout: float = 30, **kw) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}/hub/api{path}",
            headers={"Authorization": f"token {SERVICE_TOKEN}"},
            timeout=timeout,
            **kw,
        )

    def token_for(self, user: str) -> str:
        if user not in self.user_tokens:
            r = self.api("POST", f"/users/{user}/tokens", json={"note": "benchmark", "expires_in": 3600})
            if r.status_code != 201:
                raise BenchError(f"{self.name}: cannot create a token for {user}: {r.status_code} {r.text}")
            self.user_tokens[user] = r.json()["token"]
        return self.user_tokens[user]

    def spawn(self, user: str, body: dict, timeout: float = 60) -> httpx.Response:
        """POST the spawn; JupyterHub answers 201 (ready) or 202 (pending, after ~10 s)."""
        r = self.api("POST", f"/users/{user}/server", json=body, timeout=timeout)
        if r.status_code not in (201, 202):
            raise BenchError(f"{self.name}: spawn for {user} answered {r.status_code}: {r.text}")
        return r

    def server(self, user: str) -> dict | None:
        r = self.api("GET", f"/users/{user}")
        r.raise_for_status()
        return r.json().get("servers", {}).get("")

    def servers(self) -> dict[str, dict | None]:
        """user name -> default server model (None when stopped), for every user."""
        r = self.api("GET", "/users")
        r.raise_for_status()
        return {u["name"]: u.get("servers", {}).get("") for u in r.json()}

    def user_api_ok(self, user: str) -> bool:
        try:
            r = httpx.get(
                f"{self.url}/user/{user}/api/status",
                headers={"Authorization": f"token {self.token_for(user)}"},
                timeout=5,
                follow_redirects=False,
            )
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def delete_server(self, user: str) -> None:
        r = self.api("DELETE", f"/users/{user}/server")
        if r.status_code not in (202, 204, 404):
            raise BenchError(f"{self.name}: DELETE {user}'s server answered {r.status_code}: {r.text}")

    def wait_stopped(self, users: list[str], timeout: float) -> None:
        def stopped():
            models = self.servers()
            return all(models.get(u) is None for u in users)

        wait_for(stopped, timeout, f"{self.name}: {len(users)} server(s) to stop", 0.5)

    def stop_servers(self, users: list[str], timeout: float = 120) -> None:
        with ThreadPoolExecutor(max_workers=min(len(users), 16)) as pool:
            list(pool.map(self.delete_server, users))
        self.wait_stopped(users, timeout)


# --------------------------------------------------------------------------- the three hubs


def hub_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUDO_", "JUPYTERHUB_", "WERKBANK_"))}
    env["PATH"] = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra or {})
    return env


def service_config(port: int, extend: bool) -> str:
    """Config lines shared by all three hubs: proxy API port and the benchmark's admin token.

    ``extend``: add to the services and roles the config set before (werkbank's site file).
    """
    services = "list(c.JupyterHub.services) + " if extend else ""
    roles = "list(c.JupyterHub.load_roles) + " if extend else ""
    return f"""
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{port + 1}"
c.JupyterHub.services = {services}[{{"name": "werkbank-bench", "api_token": {SERVICE_TOKEN!r}}}]
c.JupyterHub.load_roles = {roles}[
    {{"name": "werkbank-bench", "services": ["werkbank-bench"], "scopes": {SERVICE_SCOPES!r}}}
]
"""


def werkbank_hub(root: Path, users: list[str], counter: CommandCounter) -> Hub:
    """hub_config/jupyterhub_config.py with a benchmark site file; extras via jupyterhub_config.d/."""
    port = BASE_PORTS["werkbank"]
    workdir = root / "werkbank"
    (workdir / "jupyterhub_config.d").mkdir(parents=True)
    os.chmod(workdir, 0o755)
    shutil.copy(REPO / "hub_config" / "jupyterhub_config.py", workdir / "jupyterhub_config.py")
    site = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
    site["hub"].update(
        bind_url=f"http://127.0.0.1:{port}",
        hub_bind_url=f"http://127.0.0.1:{port + 81}",
        data_dir=str(workdir / "data" / "hub"),
        admin_users=[],
    )
    site["auth"].update(allowed_users=users, shared_password=SHARED_PASSWORD)
    site.setdefault("tracking", {}).setdefault("mlflow", {})["manage"] = False
    site["culling"] = {"enabled": False}
    (workdir / "site.yaml").write_text(yaml.safe_dump(site))
    commands = "\n".join(
        f"c.WerkbankSlurmSpawner.{name}_cmd = [{counter.path(name)!r}]"
        for name in ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
    )
    (workdir / "jupyterhub_config.d" / "90-bench.py").write_text(service_config(port, True) + commands + "\n")
    env = hub_env({"WERKBANK_SITE_CONFIG": str(workdir / "site.yaml"), "WERKBANK_SPAWNER": "slurm"})
    return Hub("werkbank", workdir, port, env)


def plain_config(port: int, workdir: Path, users: list[str]) -> str:
    return f"""
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{port + 81}"
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "{workdir}/proxy.pid"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {SHARED_PASSWORD!r}
c.Authenticator.allowed_users = set({users!r})
c.JupyterHub.cleanup_servers = True
c.Spawner.cmd = [{SINGLEUSER!r}]
""" + service_config(port, False)


def stock_hub(root: Path, users: list[str], counter: CommandCounter) -> Hub:
    """Stock batchspawner.SlurmSpawner; werkbank_spawner is never imported in this hub."""
    port = BASE_PORTS["stock"]
    workdir = root / "stock"
    workdir.mkdir(parents=True)
    os.chmod(workdir, 0o755)
    config = (
        "import batchspawner  # noqa: F401\n"
        "from batchspawner import SlurmSpawner\n"
        + plain_config(port, workdir, users)
        + f"""
def _default(name):
    return SlurmSpawner.class_traits()[name].default_value

c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.req_partition = "cpu"
c.SlurmSpawner.req_runtime = "01:00:00"
c.SlurmSpawner.req_memory = "2G"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.batchspawner_singleuser_cmd = {BATCHSPAWNER_SINGLEUSER!r}
# Default arguments kept; only the program goes through the counting wrapper.
c.SlurmSpawner.batch_submit_cmd = {str(counter.bin_dir)!r} + "/" + _default("batch_submit_cmd")
c.SlurmSpawner.batch_query_cmd = {str(counter.bin_dir)!r} + "/" + _default("batch_query_cmd")
c.SlurmSpawner.batch_cancel_cmd = {str(counter.bin_dir)!r} + "/" + _default("batch_cancel_cmd")
# JupyterHub imports every installed "jupyterhub.spawners" entry point at start (to list
# their config classes), and importing werkbank_spawner replaces /api/batchspawner with
# werkbank's handler, which refuses stock spawners' port reports (403). Put batchspawner's own
# handler back, as in an environment without werkbank-spawner installed.
import sys
import batchspawner.api
from jupyterhub.apihandlers import default_handlers

print("stock config: werkbank_spawner.api imported before this file:", "werkbank_spawner.api" in sys.modules)
default_handlers[:] = [h for h in default_handlers if h[0] != r"/api/batchspawner"]
default_handlers.append((r"/api/batchspawner", batchspawner.api.BatchSpawnerAPIHandler))
# squeue %B says "node1", which does not resolve on this demo host (werkbank maps it through
# sinfo's NodeAddr=127.0.0.1); a real site's node names resolve.
c.SlurmSpawner.state_exechost_exp = "127.0.0.1"
"""
    )
    (workdir / "jupyterhub_config.py").write_text(config)
    return Hub("stock", workdir, port, hub_env())


def report_handler_swap(hub: Hub) -> None:
    """Say whether JupyterHub's entry-point scan had imported werkbank_spawner in the stock hub."""
    match = re.search(r"imported before this file: (True|False)", hub.log_path.read_text(errors="replace"))
    if match and match.group(1) == "True":
        say(
            "note: the stock hub imported werkbank_spawner through JupyterHub's entry-point scan, which\n"
            "      replaced /api/batchspawner; the stock config put batchspawner's handler back"
        )


def local_hub(root: Path, users: list[str]) -> Hub:
    port = BASE_PORTS["local"]
    workdir = root / "local"
    workdir.mkdir(parents=True)
    os.chmod(workdir, 0o755)
    config = plain_config(port, workdir, users) + '\nc.JupyterHub.spawner_class = "localprocess"\n'
    (workdir / "jupyterhub_config.py").write_text(config)
    return Hub("local", workdir, port, hub_env())


# --------------------------------------------------------------------------- A: spawn latency


@dataclass
class Spawn:
    variant: str
    user: str
    t0: float  # POST sent (epoch)
    t1: float  # first 200 from /user/NAME/api/status (epoch)
    job_id: str = ""
    job_start: float | None = None  # Slurm StartTime (whole seconds)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def timed_spawn(hub: Hub, variant: str, timeout: float = 180, poll: float = 0.1) -> Spawn:
    user = SOLO_USERS[variant]
    hub.token_for(user)
    t0 = time.time()
    hub.spawn(user, SPAWN_BODY[variant])
    wait_for(lambda: hub.user_api_ok(user), timeout, f"{variant}: {user}'s server to answer", poll)
    spawn = Spawn(variant, user, t0, time.time())
    if variant in JOB_NAMES:
        state = (hub.api("GET", f"/users/{user}").json()["servers"][""].get("state")) or {}
        spawn.job_id = state.get("job_id", "")
        spawn.job_start = job_start_time(spawn.job_id) if spawn.job_id else None
    return spawn


def stop_solo(hub: Hub, variant: str) -> None:
    user = SOLO_USERS[variant]
    hub.delete_server(user)
    hub.wait_stopped([user], 90)
    if variant in JOB_NAMES:
        live = "PENDING,RUNNING,CONFIGURING,COMPLETING"
        wait_for(lambda: not jobs_of([user], live), 60, f"{user}'s job to end", 0.3)


def bench_spawn_latency(hubs: dict[str, Hub], rounds: int) -> list[Spawn]:
    spawns = []
    for i in range(rounds):
        for variant in VARIANTS:
            try:
                spawn = timed_spawn(hubs[variant], variant)
            except BenchError as e:
                raise BenchError(f"{e}\n--- {variant} hub log ---\n{hubs[variant].log_tail()}") from None
            spawns.append(spawn)
            say(f"  round {i + 1:2d} {variant:9s} {spawn.seconds:6.2f} s")
            stop_solo(hubs[variant], variant)
    return spawns


def print_latency(spawns: list[Spawn]) -> None:
    by_variant = {v: [s.seconds for s in spawns if s.variant == v] for v in VARIANTS}
    say()
    say("A. Spawn-to-ready: POST /hub/api/users/NAME/server -> 200 from GET /user/NAME/api/status")
    say("   through the proxy (client polls every 0.1 s); rounds interleaved werkbank, stock, local")
    say(f"   {'variant':9s} {'n':>3s} {'median':>7s} {'p95':>7s} {'min':>7s} {'max':>7s}   (seconds)")
    for v, values in by_variant.items():
        say(
            f"   {v:9s} {len(values):3d} {fmt(statistics.median(values))}  {fmt(p95(values))}"
            f"  {fmt(min(values))}  {fmt(max(values))}"
        )
    med = {v: statistics.median(values) for v, values in by_variant.items()}
    top = {v: p95(values) for v, values in by_variant.items()}
    say(
        f"   median ratios: werkbank/local {ratio(med['werkbank'], med['local'])}, "
        f"stock/local {ratio(med['stock'], med['local'])}, "
        f"werkbank/stock {ratio(med['werkbank'], med['stock'])}"
    )
    say(
        f"   p95 ratios:    werkbank/local {ratio(top['werkbank'], top['local'])}, "
        f"stock/local {ratio(top['stock'], top['local'])}, "
        f"werkbank/stock {ratio(top['werkbank'], top['stock'])}"
    )
    say("   (p95 is nearest-rank: the maximum when n < 20)")


# -- where the time goes


def hub_events(variant: str, user: str, job: str) -> list[tuple[str, str]]:
    """(label, regex) of the hub-log lines that mark a spawn's steps."""
    done = ("hub: spawn finished, route added", rf"User {user} took [\d.]+ seconds to start")
    # werkbank's handler answers 201; batchspawner's sets 201 after finish(), so logs 200.
    port = ("job reported its port", rf"20[01] POST /hub/api/batchspawner \({user}@")
    if variant == "werkbank":
        return [
            ("sbatch returned", rf"werkbank: job {job} submitted for {user}\b"),
            port,
            ("hub: start() returned", rf"werkbank: job {job} serves at"),
            done,
        ]
    if variant == "stock":
        return [
            ("sbatch returned", rf"Job submitted\. output: {job}\b"),
            port,
            ("hub: start() returned", rf"Notebook server job {job} started at"),
            done,
        ]
    return [
        ("server: first log line", r" (ServerApp|JupyterHubSingleUser|LabApp)\] "),
        ("server: listening", r"Jupyter Server \S+ is running at"),
        done,
    ]


JOB_EVENTS = [
    ("server: first log line", r" (ServerApp|JupyterHubSingleUser|LabApp)\] "),
    ("server: listening", r"Jupyter Server \S+ is running at"),
]


def job_log(variant: str, spawn: Spawn) -> Path | None:
    if variant == "werkbank":
        return home_of(spawn.user) / ".werkbank" / "logs" / f"jupyter-{spawn.job_id}.log"
    if variant == "stock":
        return home_of(spawn.user) / f"jupyterhub_slurmspawner_{spawn.job_id}.log"
    return None


def first_after(lines: list[tuple[float, str]], pattern: str, start: float, end: float) -> float | None:
    regex = re.compile(pattern)
    for ts, line in lines:
        if start <= ts <= end and regex.search(line):
            return ts
    return None


def spawn_steps(spawn: Spawn, hub_lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds after the POST at which each step of one spawn was logged."""
    start, end = spawn.t0 - 0.05, spawn.t1 + 1.0
    steps = {}
    for label, pattern in hub_events(spawn.variant, spawn.user, spawn.job_id or "NONE"):
        ts = first_after(hub_lines, pattern, start, end)
        if ts is not None:
            steps[label] = ts - spawn.t0
    if spawn.job_start is not None:
        steps["Slurm StartTime (1 s resolution)"] = spawn.job_start - spawn.t0
    path = job_log(spawn.variant, spawn)
    if path is not None:
        job_lines = timestamped_lines(path)
        for label, pattern in JOB_EVENTS:
            ts = first_after(job_lines, pattern, start, end)
            if ts is not None:
                steps[label] = ts - spawn.t0
    steps["client: 200 through the proxy"] = spawn.seconds
    return steps


def print_breakdown(spawns: list[Spawn], hubs: dict[str, Hub]) -> None:
    say()
    say("   Where the time goes: median seconds after the POST (hub log, job log, Slurm)")
    for variant in VARIANTS:
        lines = timestamped_lines(hubs[variant].log_path)
        per_step: dict[str, list[float]] = {}
        for spawn in (s for s in spawns if s.variant == variant):
            for label, offset in spawn_steps(spawn, lines).items():
                per_step.setdefault(label, []).append(offset)
        say(f"   {variant}:")
        for label, offsets in sorted(per_step.items(), key=lambda kv: statistics.median(kv[1])):
            say(f"     {statistics.median(offsets):6.2f}  {label}  (n={len(offsets)})")


# --------------------------------------------------------------------------- B: scheduler load


def spawn_all(hub: Hub, users: list[str], body: dict) -> None:
    """POST every spawn at once (each POST blocks up to JupyterHub's slow_spawn_timeout)."""
    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        list(pool.map(lambda u: hub.spawn(u, body, timeout=120), users))


def bench_scheduler_load(
    hub: Hub, variant: str, users: list[str], counter: CommandCounter, settle: float, window: float
) -> dict:
    spawn_all(hub, users, SPAWN_BODY[variant])
    wait_for(
        lambda: len(jobs_of(users, "PENDING")) == len(users),
        60,
        f"{variant}: {len(users)} jobs pending",
        1,
    )
    time.sleep(settle)
    start = time.time()
    time.sleep(window)
    calls = counter.calls(start, start + window)
    pending = len(jobs_of(users, "PENDING"))
    hub.stop_servers(users, timeout=180)
    cancel_jobs_of(users)
    counts = Counter(name for name, _ in calls)
    return {
        "calls": len(calls),
        "per_s": len(calls) / window,
        "by_command": counts,
        "sudo": sum(1 for _, sudo in calls if sudo),
        "pending_after": pending,
    }


def print_load(results: dict[str, dict], crowd: int, window: float) -> None:
    say()
    say(f"B. Scheduler calls while {crowd} spawns are held pending (node full), {window:.0f} s window")
    head = " ".join(f"{name:>8s}" for name in SCHEDULER_COMMANDS)
    say(f"   {'variant':9s} {'calls':>6s} {'calls/s':>8s} {head} {'via sudo':>9s} {'pending':>8s}")
    for variant, r in results.items():
        cols = " ".join(f"{r['by_command'].get(name, 0):8d}" for name in SCHEDULER_COMMANDS)
        say(
            f"   {variant:9s} {r['calls']:6d} {r['per_s']:8.2f} {cols} {r['sudo']:9d} "
            f"{r['pending_after']:5d}/{crowd}"
        )
    if {"werkbank", "stock"} <= set(results):
        stock, werkbank = results["stock"]["per_s"], results["werkbank"]["per_s"]
        say(f"   stock/werkbank calls per second: {ratio(stock, werkbank)}")
    say("   (werkbank calls scontrol only to expand a node list of several nodes; stock never)")


# --------------------------------------------------------------------------- C: mass cancel


def start_running(hub: Hub, variant: str, users: list[str], batch: int, timeout: float = 300) -> None:
    for i in range(0, len(users), batch):
        group = users[i : i + batch]
        spawn_all(hub, group, SPAWN_BODY[variant])

        def ready(group=group):
            models = hub.servers()
            return all((models.get(u) or {}).get("ready") for u in group)

        try:
            wait_for(ready, timeout, f"{variant}: servers {group} to be ready", 1)
        except BenchError as e:
            raise BenchError(f"{e}\n--- {variant} hub log ---\n{hub.log_tail()}") from None
        say(f"  {variant}: {i + len(group)}/{len(users)} servers running")


def bench_mass_cancel(hub: Hub, variant: str, users: list[str], batch: int, timeout: float = 150) -> dict:
    start_running(hub, variant, users, batch)
    ids = list(jobs_of(users, "RUNNING", JOB_NAMES[variant]))
    if len(ids) != len(users):
        raise BenchError(f"{variant}: expected {len(users)} running jobs, squeue shows {len(ids)}")
    t0 = time.time()
    run("scancel", *ids)
    seen: dict[str, float] = {}
    deadline = t0 + timeout
    while len(seen) < len(users) and time.time() < deadline:
        models = hub.servers()
        now = time.time()
        for user in users:
            if user not in seen and models.get(user) is None:
                seen[user] = now - t0
        time.sleep(0.5)
    missing = [u for u in users if u not in seen]
    if missing:
        hub.stop_servers(missing, timeout=120)
    cancel_jobs_of(users)
    # The REST API polled every 0.5 s (slower while the hub is busy) rounds every time up to the
    # next answer; the hub's own log says when JupyterHub's stop handling of each server began.
    logged = {}
    for when, line in timestamped_lines(hub.log_path):
        match = STOPPED_LINE.search(line)
        if match and match.group(1) in users and when >= t0 and match.group(1) not in logged:
            logged[match.group(1)] = when - t0
    return {
        "times": sorted(seen.values()),
        "logged": sorted(logged.values()),
        "missing": len(missing),
        "timeout": timeout,
    }


#: JupyterHub's line as its poll callback (or a job's end report) starts to stop a server.
STOPPED_LINE = re.compile(r"User (\S+) server stopped, with exit code")


def print_cancel(results: dict[str, dict], crowd: int) -> None:
    say()
    say(f"C. Mass scancel of {crowd} running servers -> hub REST API reports them stopped")
    say("   (polled every 0.5 s; each variant at its default Spawner.poll_interval; 'hub log': when")
    say("   JupyterHub began to stop each server, from its log, without the polling's rounding)")
    head = f"{'variant':9s} {'median':>7s} {'max=all':>8s} {'min':>7s} {'missed':>7s}"
    say(f"   {head}   {'hub log: median':>15s} {'max':>6s}   (seconds after scancel)")
    for variant, r in results.items():
        times, logged = r["times"], r["logged"]
        med = statistics.median(times) if times else None
        last = max(times) if times and not r["missing"] else None
        log_med = statistics.median(logged) if logged else None
        log_last = max(logged) if len(logged) == len(times) + r["missing"] else None
        say(
            f"   {variant:9s} {fmt(med)}  {fmt(last)}  {fmt(min(times) if times else None)}"
            f" {r['missing']:7d}   {fmt(log_med):>15s} {fmt(log_last):>6s}"
            + (f"  (not seen within {r['timeout']:.0f} s)" if r["missing"] else "")
        )


# --------------------------------------------------------------------------- D: a busy queue

OTHER_USER = "bench-other"  # whose pending jobs fill the queue in D


def hub_cpu_seconds(hub: Hub) -> float:
    """CPU time of the hub and of the commands it ran and waited for (squeue, sudo, scancel)."""
    import psutil

    times = psutil.Process(hub.process.pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def measure_polling(hub: Hub, counter: CommandCounter, window: float) -> dict:
    cpu_before, start = hub_cpu_seconds(hub), time.time()
    time.sleep(window)
    cpu = hub_cpu_seconds(hub) - cpu_before
    calls = counter.calls(start, start + window)
    squeues = sum(1 for name, _ in calls if name == "squeue")
    return {
        "calls_per_s": len(calls) / window,
        "squeue_per_s": squeues / window,
        "cpu_ms_per_poll": 1000 * cpu / max(squeues, 1),
        "cpu_percent": 100 * cpu / window,
    }


def submit_other_jobs(count: int) -> None:
    """``count`` held one-core sleep jobs of :data:`OTHER_USER`: pending, never started."""
    loop = (
        f"for i in $(seq {count}); do sbatch --hold --parsable --job-name={OTHER_USER} --output=/dev/null "
        "--partition=cpu --wrap 'sleep 600' >/dev/null || exit 1; done"
    )
    run("sudo", "-n", "-u", OTHER_USER, "-H", "bash", "-c", loop, timeout=900)
    wait_for(lambda: len(jobs_of([OTHER_USER], "PENDING")) >= count, 120, f"{count} other jobs pending", 1)


def bench_busy_queue(
    hub: Hub, users: list[str], counter: CommandCounter, batch: int, window: float, others: int
) -> dict:
    start_running(hub, "werkbank", users, batch)
    time.sleep(5)  # the spawns' own calls die down
    quiet = measure_polling(hub, counter, window)
    say(
        f"  quiet queue: {quiet['squeue_per_s']:.2f} squeue/s, {quiet['cpu_ms_per_poll']:.1f} ms CPU per poll"
    )
    try:
        submit_other_jobs(others)
        busy = measure_polling(hub, counter, window)
    finally:
        run("scancel", f"--user={OTHER_USER}", check=False)
    hub.stop_servers(users, timeout=180)
    cancel_jobs_of(users)
    return {"quiet": quiet, "busy": busy}


def print_busy_queue(result: dict, crowd: int, others: int, window: float) -> None:
    say()
    say(f"D. werkbank's polling with {crowd} servers running, {window:.0f} s windows")
    say(f"   {'queue':24s} {'squeue/s':>9s} {'calls/s':>8s} {'hub CPU ms/poll':>16s} {'hub CPU %':>10s}")
    for label, r in ((f"{crowd} servers", result["quiet"]), (f"+ {others} held jobs", result["busy"])):
        say(
            f"   {label:24s} {r['squeue_per_s']:9.2f} {r['calls_per_s']:8.2f} "
            f"{r['cpu_ms_per_poll']:16.1f} {r['cpu_percent']:10.2f}"
        )
    quiet, busy = result["quiet"]["cpu_ms_per_poll"], result["busy"]["cpu_ms_per_poll"]
    say(f"   CPU per poll, busy/quiet: {ratio(busy, quiet)}")


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spawns", type=int, default=10, help="spawns per variant in A (default 10)")
    parser.add_argument("--crowd", type=int, default=30, help="servers in B and C (default 30)")
    parser.add_argument("--window", type=float, default=20, help="B's counting window in seconds")
    parser.add_argument("--settle", type=float, default=5, help="B's wait after all jobs are pending")
    parser.add_argument("--batch", type=int, default=5, help="C's servers started at once")
    parser.add_argument("--quick", action="store_true", help="3 spawns, crowd 6, 10 s window")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (hub logs)")
    parser.add_argument("--others", type=int, default=1000, help="D: held jobs of another user")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: A,B,C,D")
    parser.add_argument(
        "--variants", default="werkbank,stock", help="B and C: which hubs, e.g. werkbank (default both)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.spawns, args.crowd, args.window, args.others = 3, 6, 10, 200
    args.skip = {p.strip().upper() for p in args.skip.split(",") if p.strip()}
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or not set(args.variants) <= {"werkbank", "stock"}:
        parser.error("--variants: werkbank, stock or both")
    return args


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root (the hubs submit jobs as other users through sudo)")
    if shutil.which("configurable-http-proxy") is None:
        raise BenchError("configurable-http-proxy is not installed")
    ensure_slurm()


def cleanup(hubs: dict[str, Hub], users: list[str], blocker: str | None) -> None:
    """Best effort, each step bounded: servers, hubs, our jobs, the blocker."""
    if blocker:
        run("scancel", blocker, check=False)
    for hub in hubs.values():
        if hub.process is None or hub.process.exited():
            continue
        try:
            hub.stop_servers(users, 90)
        except Exception as e:  # cleanup goes on
            say(f"cleanup: {hub.name}: {e}")
        hub.stop()
    try:
        cancel_jobs_of(users, timeout=60)
    except Exception as e:
        say(f"cleanup: {e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    crowd = [f"bench{i:02d}" for i in range(1, args.crowd + 1)]
    all_users = [*SOLO_USERS.values(), *crowd]
    if "D" not in args.skip:
        ensure_users([OTHER_USER])
    preflight()
    ensure_users(all_users)
    root = Path(tempfile.mkdtemp(prefix="werkbank-bench-"))
    os.chmod(root, 0o755)
    counter = CommandCounter.create(root / "counter")
    hubs: dict[str, Hub] = {
        "werkbank": werkbank_hub(root, [SOLO_USERS["werkbank"], *crowd], counter),
        "stock": stock_hub(root, [SOLO_USERS["stock"], *crowd], counter),
        "local": local_hub(root, [SOLO_USERS["local"]]),
    }
    blocker = None
    ok = False
    started = time.monotonic()
    load = os.getloadavg()
    say(f"werkbank spawn benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPU cores")
    say(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; work directory {root}")
    others = foreign_jobs(all_users)
    say(f"other jobs in the Slurm queue at start: {len(others)}" + (f" {others}" if others else ""))
    try:
        cancel_jobs_of(all_users)  # leftovers of an earlier, interrupted run
        for hub in hubs.values():
            hub.start()
        report_handler_swap(hubs["stock"])
        if "A" not in args.skip:
            say(f"\nA: {args.spawns} interleaved rounds ...")
            spawns = bench_spawn_latency(hubs, args.spawns)
            print_latency(spawns)
            print_breakdown(spawns, hubs)
        hubs["local"].stop()
        if "B" not in args.skip:
            say(f"\nB: {args.crowd} pending spawns per variant ...")
            blocker = submit_blocker()
            load_results = {}
            for variant in args.variants:
                load_results[variant] = bench_scheduler_load(
                    hubs[variant], variant, crowd, counter, args.settle, args.window
                )
                say(f"  {variant}: {load_results[variant]['per_s']:.2f} calls/s")
            run("scancel", blocker, check=False)
            wait_for(lambda: not jobs_of(["root"], "RUNNING,COMPLETING", BLOCKER_NAME), 60, "blocker to end")
            blocker = None
            print_load(load_results, args.crowd, args.window)
        if "C" not in args.skip:
            say(f"\nC: {args.crowd} running servers per variant, then scancel ...")
            cancel_results = {}
            for variant in args.variants:
                cancel_results[variant] = bench_mass_cancel(hubs[variant], variant, crowd, args.batch)
            print_cancel(cancel_results, args.crowd)
        if "D" not in args.skip:
            say(f"\nD: {args.crowd} running servers, then {args.others} held jobs of {OTHER_USER} ...")
            busy = bench_busy_queue(hubs["werkbank"], crowd, counter, args.batch, args.window, args.others)
            print_busy_queue(busy, args.crowd, args.others, args.window)
        ok = True
    finally:
        cleanup(hubs, all_users, blocker)
        say(f"\ntotal time {time.monotonic() - started:.0f} s")
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"hub logs kept in {root}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        sys.exit(1)
