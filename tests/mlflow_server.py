"""A real MLflow tracking server for tests, restartable on the same port and stores."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from tests.services import Process, answers
from werkbank_spawner.site import services as site_services
from werkbank_spawner.tracking import NO_TELEMETRY

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The ports of the shared test hub (tests/cluster.py), never handed out for a hub of a test's own.
TAKEN = {18000, 18001, 18081, 18082}


def free_port_pair() -> int:
    """A free port whose next port is free too, for a hub of a test's own: the hub's proxy puts
    its API there, and the hub API's next port is the trainer console's."""
    for _ in range(100):
        port = free_port()
        if port + 1 > 65535 or {port, port + 1} & TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free neighbouring ports")


class MlflowServer:
    """``mlflow server`` with a local artifact store under ``root`` and SQLite there, or the
    databases given.

        ``signing_key``: with MLflow's permission checks as the hub runs them (basic-auth app,
        werkbank's authorization function verifying assertions signed with the key).
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        cpus: set[int] | None = None,
        signing_key: str = "",
        backend_store_uri: str = "",
        auth_database_uri: str = "",
    ):
        self.root = Path(root)
        self.signing_key = signing_key
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root}/mlflow.db"
        self.auth_database_uri = auth_database_uri or f"sqlite:///{self.root}/auth.db"
        self.cpus = cpus  # pin the server to these CPUs (benchmarks keep it off the measured core)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "mlflow.log"
        self.process: Process | None = None

    def start(self, timeout: float = 120) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
            "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, **NO_TELEMETRY}  # as the hub starts it
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri  # as the hub passes it: not in ps
        if self.signing_key:
            ini = self.root / "auth.ini"
            ini.write_text(site_services.mlflow_auth_ini(self.auth_database_uri))
            argv += ["--app-name", "basic-auth"]
            env.update(site_services.mlflow_auth_env(ini, self.signing_key))
        env.pop("MLFLOW_TRACKING_URI", None)
        # The server's job runner (GenAI evaluation jobs) starts about a dozen worker processes
        # nothing here uses; on a 2-core machine they slow everything down.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        self.process = Process("mlflow server", argv, log_path=self.log_path, env=env, preexec_fn=pin).start()
        self.process.wait_until(lambda: answers(f"{self.url}/health"), timeout, "/health to answer")

    def stop(self) -> None:
        if self.process:
            self.process.stop(20, group=True)  # the server and its uvicorn worker

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else "(not started)"
