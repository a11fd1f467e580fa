"""The real cluster the integration and browser tests run against, and how they drive it.

- :func:`start_slurm`: the single-node cluster from ``deploy/slurm-up.sh`` (munge, slurmctld,
  slurmd, 2 fake GPUs) with the test users. Nothing here is mocked.
- :class:`Hub` / :func:`make_hub`: JupyterHub started from ``hub_config/jupyterhub_config.py``
  with a test site file, the real configurable-http-proxy and the hub-managed MLflow server.

The session fixtures ``slurm`` and ``hub`` (tests/conftest.py) start them once per test session,
for tests/integration and tests/browser alike. A service that does not come up fails the tests
with its log; it never skips them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

# wait_for: the suite's one wait (backoff; the failure names what was awaited). Re-exported here
# for the integration tests, which import their helpers from this module.
from tests.services import Process, answers, wait_for

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent
TEST_USERS = ("alice", "bob")
TEST_ADMIN = "werkbank-admin"
# Their Linux password, for the PAM login test (the demo site's shared password is separate).
TEST_PASSWORD = "werkbank-" + os.urandom(6).hex()
HUB_PORT = 18000
HUB_API_PORT = 18081
MLFLOW_PORT = 15000
MLFLOW_PROXY_PORT = 15001
SERVICE_TOKEN = "werkbank-tests-" + os.urandom(16).hex()


def run(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------- Slurm


def start_slurm() -> None:
    """The single-node Slurm cluster, running, with the test users; fails (never skips) if it
    cannot start."""
    result = run(str(DEPLOY / "slurm-up.sh"), check=False)
    if result.returncode != 0:
        pytest.fail(f"deploy/slurm-up.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    for user in TEST_USERS:
        run(str(DEPLOY / "users.sh"), user, TEST_PASSWORD)


def squeue(*args) -> str:
    return run("squeue", "--noheader", *args).stdout


def job_environ(job_id: str) -> dict[str, str]:
    """The environment of jupyterhub-singleuser in the job (read from /proc as root): the server's
    own token, what JupyterHub gave it."""
    for line in run("scontrol", "listpids", job_id).stdout.splitlines()[1:]:
        pid = line.split()[0]
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"jupyterhub-singleuser" in cmdline:
            return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    raise AssertionError(f"no jupyterhub-singleuser process in job {job_id}")


def job_field(job_id: str, key: str) -> str:
    """A ``Key=Value`` field from ``scontrol show job``."""
    out = run("scontrol", "show", "job", job_id).stdout
    for token in out.split():
        if token.startswith(key + "="):
            return token.split("=", 1)[1]
    raise KeyError(key)


# --------------------------------------------------------------------------- JupyterHub


def site_for_tests(
    data_dir: Path,
    port: int = HUB_PORT,
    api_port: int = HUB_API_PORT,
    mlflow: bool = True,
    *,
    mlflow_port: int = MLFLOW_PORT,
    backend_store_uri: str = "",
    auth_database_uri: str = "",
) -> dict:
    """The demo site with test ports and a private data directory; MLflow's stores in it
    (SQLite) unless database URIs are given."""
    site = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
    site["hub"].update(
        bind_url=f"http://127.0.0.1:{port}",
        hub_bind_url=f"http://127.0.0.1:{api_port}",
        data_dir=str(data_dir / "hub"),
        # A hub admin with no Linux account and no login: tests act as it with its API tokens.
        admin_users=[TEST_ADMIN],
    )
    site["auth"].update(allowed_users=[*TEST_USERS])
    site["slurm"] = dict(site.get("slurm") or {}, poll_interval=2.0, unreachable_grace=600)
    tracking = site.setdefault("tracking", {}).setdefault("mlflow", {})
    tracking.update(
        manage=mlflow,
        # Without MLflow no proxy either: a second hub must not claim the first one's proxy port.
        proxy=mlflow,
        port=mlflow_port,
        proxy_port=mlflow_port + 1,
        url=f"http://127.0.0.1:{mlflow_port}",
        backend_store_uri=backend_store_uri or f"sqlite:///{data_dir}/mlflow/mlflow.db",
        auth_database_uri=auth_database_uri,
        artifacts_destination=str(data_dir / "mlflow" / "artifacts"),
    )
    site["culling"] = {"enabled": False}
    # The trainer console beside the test hub's API port; its rounds often, for the culling test.
    site["workshops"] = {"port": api_port + 1, "check_every": 5}
    return site


# The test-only part of the hub config, through the documented escape hatch: a service
# token with admin rights for the tests to drive the REST API.
TEST_HUB_EXTRA = f"""
c.JupyterHub.services = list(c.JupyterHub.services) + [
    {{"name": "werkbank-tests", "api_token": {SERVICE_TOKEN!r}}}
]
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {{"name": "werkbank-tests", "services": ["werkbank-tests"],
      "scopes": ["admin:users", "admin:servers", "admin:server_state", "admin:groups",
                 "tokens", "list:users", "read:users", "read:shares"]}}
]
"""


@dataclass
class Hub:
    """A JupyterHub process we started; restartable in place."""

    workdir: Path
    env: dict
    url: str = f"http://127.0.0.1:{HUB_PORT}"
    mlflow_port: int = MLFLOW_PORT
    process: Process | None = None
    user_tokens: dict = field(default_factory=dict)
    log_path: Path = None

    def start(self):
        argv = [str(VENV_BIN / "jupyterhub"), "-f", str(self.workdir / "jupyterhub_config.py")]
        self.process = Process("JupyterHub", argv, log_path=self.log_path, env=self.env, cwd=self.workdir)
        self.process.start()
        self.process.wait_until(lambda: answers(f"{self.url}/hub/health"), 90, "/hub/health to answer")

    def stop(self):
        if self.process:
            self.process.stop(30)  # SIGTERM: JupyterHub stops its proxy and services itself

    def restart(self):
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def edit_site(self, change) -> dict:
        """Change this hub's site file before it (re)starts: ``change(site)`` edits the loaded
        site in place. Returns the site as written."""
        path = self.workdir / "site.yaml"
        site = yaml.safe_load(path.read_text())
        change(site)
        path.write_text(yaml.safe_dump(site))
        return site

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- REST API

    def api(self, method: str, path: str, token: str = SERVICE_TOKEN, **kw) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}/hub/api{path}", headers={"Authorization": f"token {token}"}, timeout=30, **kw
        )

    def token_for(self, user: str) -> str:
        """An API token of ``user``, the same for the whole session."""
        if user not in self.user_tokens:
            self.user_tokens[user] = self.new_token(user)
        return self.user_tokens[user]

    def new_token(self, user: str) -> str:
        """A token of ``user`` no service has seen: services cache what the hub says of a token."""
        r = self.api("POST", f"/users/{user}/tokens", json={"note": "werkbank tests", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def user_model(self, user: str) -> dict:
        r = self.api("GET", f"/users/{user}")
        assert r.status_code == 200, r.text
        return r.json()

    def server(self, user: str) -> dict | None:
        return self.user_model(user).get("servers", {}).get("")

    def spawn(self, user: str, options: dict) -> httpx.Response:
        return self.api("POST", f"/users/{user}/server", json=options)

    def wait_ready(self, user: str, timeout: float = 90) -> dict:
        def ready():
            server = self.server(user)
            return server if server and server.get("ready") else None

        return self.process.wait_until(ready, timeout, f"{user}'s server to be ready")

    def stop_server(self, user: str, timeout: float = 60):
        r = self.api("DELETE", f"/users/{user}/server")
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: self.server(user) is None, timeout, f"{user}'s server to stop")

    def shut_down(self, user: str, jobs: list[str]) -> None:
        """The end of a module's own hub: ``user``'s server stopped (if the hub still runs), the
        hub stopped, and ``jobs`` cancelled, this module's only: other hubs share the test
        cluster."""
        try:
            if self.process and self.process.proc.poll() is None and self.server(user) is not None:
                self.stop_server(user)
        finally:
            self.stop()
            for job in jobs:
                if job:
                    run("scancel", job, check=False)

    @property
    def mlflow_url(self) -> str:
        """The hub's MLflow service (the authenticating proxy) behind the hub's public proxy,
        as browsers reach it."""
        return f"{self.url}/services/mlflow"

    @property
    def mlflow_job_url(self) -> str:
        """The same service as jobs get it: its own port, where they reach the hub API."""
        return f"http://127.0.0.1:{self.mlflow_port + 1}/services/mlflow"

    def wait_for_mlflow(self, timeout: float = 150) -> None:
        """Until MLflow answers through the proxy (it takes 10-40 s to start, and starts again
        with every hub restart)."""

        up = f"{self.mlflow_url}/health"
        self.process.wait_until(lambda: answers(up, timeout=5), timeout, "MLflow behind the hub's proxy")

    def job_id(self, user: str) -> str:
        r = self.api("GET", f"/users/{user}?include_stopped_servers=1")
        state = r.json()["servers"][""].get("state") or {}
        return state.get("job_id", "")


def login(hub: Hub, user: str, password: str = "werkbank-demo") -> httpx.Client:
    """A browser-like client logged in to the hub's login form as ``user`` (the test site's
    shared password by default); it follows redirects and keeps cookies."""
    client = httpx.Client(base_url=hub.url, follow_redirects=True, timeout=60)
    client.get("/hub/login")
    r = client.post(
        "/hub/login", data={"username": user, "password": password, "_xsrf": client.cookies.get("_xsrf", "")}
    )
    assert r.status_code == 200, r.text[:500]
    return client


def make_hub(
    workdir: Path,
    *,
    port: int,
    api_port: int,
    spawner: str,
    mlflow: bool,
    auth: str = "shared-password",
    mlflow_port: int = MLFLOW_PORT,
    **databases: str,
) -> Hub:
    """A Hub (not started) in ``workdir`` with the repo's jupyterhub_config.py and a test site
    (``databases``: MLflow's ``backend_store_uri`` and ``auth_database_uri``)."""
    if shutil.which("configurable-http-proxy") is None:
        pytest.fail("configurable-http-proxy is not installed (deploy/install.sh installs it)")
    os.chmod(workdir, 0o755)
    # The hub runs MLflow as its service account, which must reach MLflow's folder: outside
    # pytest's tmp folders (private to root), like the folders a site gives the hub.
    data_dir = Path(tempfile.mkdtemp(prefix="werkbank-hub-data-"))
    os.chmod(data_dir, 0o755)
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    shutil.copy(REPO / "hub_config" / "jupyterhub_config.py", workdir / "jupyterhub_config.py")
    (workdir / "jupyterhub_config.d").mkdir()
    (workdir / "jupyterhub_config.d" / "90-tests.py").write_text(TEST_HUB_EXTRA)
    site = site_for_tests(
        data_dir, port=port, api_port=api_port, mlflow=mlflow, mlflow_port=mlflow_port, **databases
    )
    if auth == "pam":
        site["auth"] = {"type": "pam", "allowed_users": [*TEST_USERS]}
    (workdir / "site.yaml").write_text(yaml.safe_dump(site))
    env = dict(os.environ, WERKBANK_SITE_CONFIG=str(workdir / "site.yaml"), WERKBANK_SPAWNER=spawner)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return Hub(
        workdir=workdir,
        env=env,
        url=f"http://127.0.0.1:{port}",
        mlflow_port=mlflow_port,
        log_path=workdir / "jupyterhub.log",
    )
