"""The multi-node test cluster: a hub host and two compute nodes on one machine, and how tests
drive it.

``deploy/multinode-up.sh`` builds it: network namespaces ``wb-hub``, ``wb-node1``, ``wb-node2`` on
a bridge, each with its own address and hostname; slurmctld in ``wb-hub``, ``slurmd -N node1`` and
``-N node2`` in theirs. It is a second Slurm cluster with a ``slurm.conf`` of its own, beside the
single-node one of :mod:`tests.cluster`, which it never touches (only munged is shared).

Clients run where the hub would: on ``wb-hub`` (its network, UTS and mount namespaces) with
``SLURM_CONF`` set (:meth:`Multinode.client`, :meth:`Multinode.as_user`). The session fixture
``multinode`` (:func:`multinode_cluster`) brings the cluster up once and down at the end; a
cluster that does not come up fails the tests with the daemons' logs, it never skips them.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster import DEPLOY, TEST_USERS, run

ENV_FILE = DEPLOY / "multinode" / "cluster.env"
NODES = ("node1", "node2")
HUB = "wb-hub"
#: States in which a node can run jobs (``sinfo %T``; a trailing ``*`` means "not responding").
READY = {"idle", "mixed", "allocated", "completing"}
#: Job states after which a job runs no more (``scontrol show job``'s ``JobState``).
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}

# A TCP probe for the jobs' steps and the hub namespace; stdlib only, run with the system python3
# as the job's user. `listen` serves until it has answered --count connections or --timeout passes,
# telling each client its own hostname and the peer address it saw; `connect` prints what each
# target answered (or the error) as one JSON line per target.
PROBE = r"""
import argparse, json, os, socket, sys, time

def listen(a):
    srv = socket.create_server((a.addr, 0))
    srv.settimeout(a.timeout)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.replace(tmp, a.port_file)
    for _ in range(a.count):
        try:
            conn, peer = srv.accept()
        except socket.timeout:
            sys.exit("no connection within the timeout")
        with conn:
            conn.sendall(json.dumps({"hostname": socket.gethostname(), "peer": peer[0]}).encode())

def connect(a):
    for target in a.targets:
        addr, _, port_file = target.partition("@")
        deadline = time.monotonic() + a.timeout
        while not os.path.exists(port_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        result = {"target": addr, "from": socket.gethostname()}
        try:
            port = int(open(port_file).read())
            with socket.create_connection((addr, port), timeout=5) as s:
                result["answer"] = json.loads(s.makefile().read())
        except OSError as e:
            result["error"] = type(e).__name__
        print(json.dumps(result), flush=True)

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="mode", required=True)
l = sub.add_parser("listen"); l.add_argument("addr"); l.add_argument("port_file")
l.add_argument("--count", type=int, default=1); l.add_argument("--timeout", type=float, default=30)
c = sub.add_parser("connect"); c.add_argument("targets", nargs="+", help="ADDR@PORT_FILE")
c.add_argument("--timeout", type=float, default=30)
a = p.parse_args()
listen(a) if a.mode == "listen" else connect(a)
"""


#: setns(2)'s flag for a network namespace (os.setns is Python 3.12+; the venv has 3.11).
_CLONE_NEWNET = 0x40000000
#: One worker thread per network namespace file (:meth:`Multinode.on_host`), kept for the session.
_HOST_THREADS: dict[str, ThreadPoolExecutor] = {}


def _enter_network_namespace(path: str) -> None:
    """Move the calling thread (only it: setns on a network namespace is per thread) into ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


def read_env(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``NAME=value`` lines of deploy/multinode/cluster.env."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


@dataclass
class Multinode:
    """The running multi-node cluster, as deploy/multinode/cluster.env describes it."""

    env: dict[str, str]

    @property
    def conf(self) -> str:
        return f"{self.env['MN_RUN_DIR']}/slurm.conf"

    @property
    def log_dir(self) -> Path:
        return Path(self.env["MN_LOG_DIR"])

    def namespace(self, host: str) -> str:
        return self.env["MN_HUB_NS"] if host == HUB else self.env[f"MN_{host.upper()}_NS"]

    def address(self, host: str) -> str:
        return self.env["MN_HUB_ADDR"] if host == HUB else self.env[f"MN_{host.upper()}_ADDR"]

    @property
    def slurmd_timeout(self) -> int:
        return int(self.env["MN_SLURMD_TIMEOUT"])

    def in_hub(self, *argv: str) -> list[str]:
        """``argv`` as run on the hub host, where JupyterHub would run it (:meth:`in_host`)."""
        return self.in_host(HUB, *argv)

    def in_host(self, host: str, *argv: str) -> list[str]:
        """``argv`` as run on ``host``: in its network, UTS and mount namespaces (its address, its
        name, and the cluster's /etc/hosts), as its slurmd or slurmctld runs, with this
        cluster's slurm.conf."""
        ns_dir = f"{self.env['MN_RUN_DIR']}/ns"
        ns = self.namespace(host)
        return [
            "nsenter",
            f"--net=/run/netns/{ns}",
            f"--uts={ns_dir}/{ns}.uts",
            f"--mount={ns_dir}/hosts.mnt",
            "env",
            f"SLURM_CONF={self.conf}",
            *argv,
        ]

    def on_host(self, host: str, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)`` in a thread of this process that has entered ``host``'s network
        namespace, and its result: the sockets it opens are ``host``'s, so that the tests (in the
        machine's namespace, which does not reach the cluster's addresses) can use an HTTP client
        there, e.g. ``on_host(HUB, httpx.get, url)``. One thread per host, for the session: after
        deploy/multinode-down.sh and -up.sh it would still be in the old namespace."""
        path = f"/run/netns/{self.namespace(host)}"
        if path not in _HOST_THREADS:
            _HOST_THREADS[path] = ThreadPoolExecutor(
                1, thread_name_prefix=f"netns-{host}", initializer=_enter_network_namespace, initargs=(path,)
            )
        return _HOST_THREADS[path].submit(fn, *args, **kwargs).result()

    def client(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A Slurm command (or any) as root on the hub host."""
        return run(*self.in_hub(*argv), check=check, timeout=timeout)

    def as_user(self, user: str, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """``argv`` as ``user`` on the hub host (sudo drops SLURM_CONF, so it is set after)."""
        return run(
            *self.in_hub("sudo", "-n", "-u", user, "-H", "env", f"SLURM_CONF={self.conf}", *argv),
            check=False,
            timeout=timeout,
        )

    def node_state(self, node: str) -> str:
        """``sinfo``'s state of ``node`` (e.g. ``idle``, ``down*``); "" if slurmctld does not answer."""
        result = self.client("sinfo", "--noheader", "-n", node, "-o", "%T", check=False, timeout=15)
        return result.stdout.strip() if result.returncode == 0 else ""

    def set_link(self, host: str, up: bool) -> None:
        """Plug ``host``'s cable in or out: its veth end on the bridge, up or down."""
        run("ip", "link", "set", f"v{self.namespace(host)}", "up" if up else "down")

    def resume(self, node: str) -> None:
        self.client("scontrol", "update", f"nodename={node}", "state=resume")

    def wait_state(self, node: str, wanted, timeout: float, what: str) -> tuple[str, float]:
        """Poll ``node``'s state (every 0.5 s) until ``wanted(state)``; returns the state and the
        seconds it took. Fails with the last state seen and the daemons' logs after ``timeout``."""
        started = time.monotonic()
        while not wanted(state := self.node_state(node)):
            if time.monotonic() - started > timeout:
                pytest.fail(f"{node} not {what} after {timeout:.0f} s (last state {state!r})\n{self.logs()}")
            time.sleep(0.5)
        return state, time.monotonic() - started

    def wait_ready(self, node: str, timeout: float = 20) -> str:
        return self.wait_state(node, lambda state: state in READY, timeout, "ready")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s ``Key=Value`` fields ({} once the job is forgotten)."""
        result = self.client("scontrol", "-o", "show", "job", job_id, check=False, timeout=15)
        return dict(token.split("=", 1) for token in result.stdout.split() if "=" in token)

    def sbatch(self, user: str, script: Path, *args: str, timeout: float = 60) -> str:
        """Submit ``script`` as ``user`` and wait until the job has ended; returns the job id.
        Fails with the job's output files (``*.out`` beside the script) and the daemons' logs if
        the job did not complete, or is cancelled and fails likewise after ``timeout`` seconds."""
        result = self.as_user(user, "sbatch", "--parsable", *args, str(script))
        if result.returncode != 0:
            pytest.fail(f"sbatch failed ({result.returncode}): {result.stderr}")
        job_id = result.stdout.strip().split(";")[0]
        started = time.monotonic()
        while (state := self.job(job_id).get("JobState", "")) not in FINISHED:
            if time.monotonic() - started > timeout:
                self.client("scancel", job_id, check=False)
                pytest.fail(f"job {job_id} still {state} after {timeout:.0f} s\n{self._outputs(script)}")
            time.sleep(0.5)
        if state != "COMPLETED":
            fields = self.job(job_id)
            pytest.fail(
                f"job {job_id} ended {state} (exit code {fields.get('ExitCode')}, reason "
                f"{fields.get('Reason')})\n{self._outputs(script)}"
            )
        return job_id

    def _outputs(self, script: Path) -> str:
        outputs = "\n".join(f"--- {p}\n{p.read_text()}" for p in sorted(script.parent.glob("*.out")))
        return f"{outputs}\n{self.logs()}"

    def logs(self, lines: int = 30) -> str:
        """The tails of this cluster's daemon logs."""
        parts = []
        for name in ("slurmctld", *(f"slurmd-{node}" for node in NODES)):
            path = self.log_dir / f"{name}.log"
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)


def user_workdir(user: str) -> Path:
    """A fresh folder owned by ``user`` that every namespace sees (they share the file system);
    not pytest's tmp folders, which are private to root."""
    folder = Path(tempfile.mkdtemp(prefix="werkbank-multinode-"))
    account = pwd.getpwnam(user)
    os.chown(folder, account.pw_uid, account.pw_gid)
    return folder


def write_as(user: str, path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    account = pwd.getpwnam(user)
    os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(mode)
    return path


def start_multinode() -> tuple[Multinode, float]:
    """Bring the cluster up (and the test users); returns it and the seconds that took. Fails
    (never skips) with the script's output and the daemons' logs."""
    cluster = Multinode(read_env())
    for user in TEST_USERS:
        run(str(DEPLOY / "users.sh"), user)
    started = time.monotonic()
    result = run(str(DEPLOY / "multinode-up.sh"), check=False, timeout=120)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(
            f"deploy/multinode-up.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
            + cluster.logs()
        )
    return cluster, seconds


def stop_multinode() -> float:
    """Take the cluster down; returns the seconds that took. Raises if the script fails."""
    started = time.monotonic()
    result = run(str(DEPLOY / "multinode-down.sh"), check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"deploy/multinode-down.sh failed:\n{result.stdout}\n{result.stderr}")
    return time.monotonic() - started


@pytest.fixture(scope="session", name="multinode")
def multinode_cluster(report_figure):
    """The multi-node cluster, up for the session and down at its end (whoever started it)."""
    if shutil.which("nsenter") is None:
        pytest.fail("nsenter is not installed (util-linux)")
    cluster, up = start_multinode()
    report_figure("multinode cluster up", f"{up:.1f} s")
    yield cluster
    report_figure("multinode cluster down", f"{stop_multinode():.1f} s")
