"""A private PostgreSQL cluster for tests: Debian's ``postgresql`` binaries, its own data folder
and port, password logins over TCP as a production database would have them (``initdb
--auth-host=scram-sha-256``: every role, the superuser and :meth:`Postgres.create_role`'s, needs
its password on 127.0.0.1; peer authentication only over the cluster's own Unix socket).

Started once per session (``postgres`` fixture in tests/conftest.py); the system's own cluster,
if any, is left alone. Runs as the ``postgres`` system user (the Debian package creates it;
PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.mlflow_server import free_port


def postgres_bin() -> Path:
    """The newest installed ``/usr/lib/postgresql/<version>/bin``."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (deploy/install.sh --dev installs it)")
    return found[-1].parent


class Postgres:
    """``initdb`` + ``pg_ctl start`` in a fresh folder; :meth:`create_database` for each user."""

    def __init__(self):
        self.bin = postgres_bin()
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        # Outside pytest's private tmp folders, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="werkbank-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"

    def _as_postgres(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sudo", "-u", "postgres", *argv], check=True, capture_output=True, text=True, cwd="/", **kw
        )

    def start(self) -> None:
        owner = pwd.getpwnam("postgres")
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        pwfile.chmod(0o600)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
            "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
        )  # fmt: skip
        pwfile.unlink()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = str(self.bin / "pg_ctl")
        log = str(self.log_path)
        self._as_postgres(pg_ctl, "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        deadline = time.monotonic() + 30
        while self._psql("SELECT 1", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not answer:\n{self.log_path.read_text()}")
            time.sleep(0.2)

    def _psql(self, sql: str, check: bool = True, database: str = "postgres") -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-Atc",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True,
            text=True,
            check=check,
        )

    def create_role(self, name: str, password: str) -> None:
        """A role that may log in with ``password`` (no single quote: it goes into SQL)."""
        if "'" in password:
            raise ValueError("a test password without single quotes, please")
        self._psql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")

    def create_database(self, name: str, owner: str = "") -> str:
        """A new, empty database that ``owner`` (a :meth:`create_role`) owns; returns its URI over
        TCP, without a password (as a site file has it: the password goes in a file). Without an
        ``owner``, the superuser's, whose password the URI holds: for tests that start ``mlflow
        server`` themselves, with no site file."""
        if not owner:
            self._psql(f'CREATE DATABASE "{name}"')
            return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{name}"
        self._psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return f"postgresql://{owner}@127.0.0.1:{self.port}/{name}"

    def logs_in(self, user: str, password: str, database: str = "postgres") -> bool:
        """Whether ``user`` may connect over TCP with ``password`` (libpq's PGPASSWORD; ""
        for none). No ~/.pgpass gets a say: PGPASSFILE points nowhere."""
        env = {**os.environ, "PGPASSWORD": password, "PGPASSFILE": "/nonexistent"}
        if not password:
            del env["PGPASSWORD"]
        argv = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", database]
        result = subprocess.run(
            [*argv, "-w", "-Atc", "SELECT 1"], env=env, capture_output=True, text=True, check=False
        )
        return result.returncode == 0 and result.stdout.strip() == "1"

    def query(self, database: str, sql: str) -> list[list[str]]:
        """Rows of a query, as psql prints them (each a list of column texts)."""
        out = self._psql(sql, database=database).stdout
        return [line.split("|") for line in out.splitlines()]

    def stop(self) -> None:
        if self.data.exists():
            pg_ctl = str(self.bin / "pg_ctl")
            subprocess.run(
                ["sudo", "-u", "postgres", pg_ctl, "-D", str(self.data), "-m", "fast", "stop"],
                capture_output=True,
                cwd="/",
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)
