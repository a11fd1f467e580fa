"""The hub's own database on PostgreSQL, as a production site runs it (``hub.db_url`` and
``hub.db_password_file``): a second JupyterHub on free ports whose users, tokens, servers and
each server's Slurm job id live in a real PostgreSQL (Debian's, a private cluster:
tests/postgres.py), reached over TCP as an ordinary role with a password that only a file holds.

The hub is restarted with a user's server running as a Slurm job: the user, the login, the
server and its job id come back from PostgreSQL. ``jupyterhub upgrade-db`` upgrades a schema
two alembic revisions older, in place, with the server still found afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from jupyterhub.dbutil import write_alembic_ini
from sqlalchemy.engine import make_url

from tests.cluster import VENV_BIN, Hub, job_environ, login, make_hub, run, squeue
from tests.mlflow_server import free_port, free_port_pair
from tests.services import wait_for

pytestmark = pytest.mark.integration

ROLE = DATABASE = "werkbank_hub"
#: Characters a URL must escape (and %, which alembic's ini file escapes again): the password
#: must reach JupyterHub and alembic intact. No single quote: it goes into SQL below.
PASSWORD = "hub p@ss:w/rd?#%2F-" + os.urandom(4).hex()
#: JupyterHub 6.1's schema (alembic head) and the one two revisions before it (no
#: users.user_info, no spawners.display_name).
HEAD, OLDER = "f460b0348206", "afd65840b69e"
#: Ports other tests use, whatever the operating system hands out.


class PgHub:
    """The hub, its database, and what the tests learn on the way (shared in test order)."""

    def __init__(self, hub: Hub, postgres, url: str, data_dir: Path):
        self.hub, self.postgres, self.url, self.data_dir = hub, postgres, url, data_dir
        self.jobs: list[str] = []
        self.client: httpx.Client | None = None
        self.token = ""

    def sql(self, query: str) -> list[list[str]]:
        return self.postgres.query(DATABASE, query)

    def alembic_version(self) -> str:
        return self.sql("SELECT version_num FROM alembic_version")[0][0]

    def spawner_state(self, user: str) -> dict:
        rows = self.sql(
            "SELECT s.state FROM spawners s JOIN users u ON s.user_id = u.id "
            f"WHERE u.name = '{user}' AND s.name = ''"
        )
        assert len(rows) == 1, rows
        return json.loads(rows[0][0] or "{}")


@pytest.fixture(scope="module")
def pg(slurm, postgres, tmp_path_factory):
    postgres.query("postgres", f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    postgres.query("postgres", f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    secrets = tmp_path_factory.mktemp("pg-hub-secrets")
    password_file = secrets / "hub-db-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    url = f"postgresql+psycopg://{ROLE}@127.0.0.1:{postgres.port}/{DATABASE}"

    port, api_port = free_port_pair(), free_port_pair()
    hub = make_hub(
        tmp_path_factory.mktemp("pg-hub"),
        port=port,
        api_port=api_port,
        spawner="slurm",
        mlflow=False,
        mlflow_port=free_port(),
    )
    site = hub.edit_site(lambda site: site["hub"].update(db_url=url, db_password_file=str(password_file)))
    state = PgHub(hub, postgres, url, Path(site["hub"]["data_dir"]))
    hub.start()
    yield state
    try:
        hub.shut_down("alice", state.jobs)
    finally:
        if state.client:
            state.client.close()


def job_state(job: str) -> str:
    """The job's state in squeue, or "" once it has left the queue (squeue then fails)."""
    return run("squeue", "--noheader", "-j", job, "-o", "%T", check=False).stdout.strip()


def through_proxy(pg: PgHub, user: str) -> httpx.Response:
    return httpx.get(
        f"{pg.hub.url}/user/{user}/api/status", headers={"Authorization": f"token {pg.token}"}, timeout=10
    )


def test_a_login_a_server_and_its_job_id_are_kept_in_postgresql(pg):
    pg.client = login(pg.hub, "alice")
    assert pg.sql("SELECT name FROM users WHERE name = 'alice'") == [["alice"]]

    r = pg.hub.spawn("alice", {"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    pg.hub.wait_ready("alice", 120)
    job = pg.hub.job_id("alice")
    assert job
    pg.jobs.append(job)
    assert squeue("-j", job, "-o", "%u %T").split() == ["alice", "RUNNING"]
    # The spawner's state, with the job id, is PostgreSQL's; the hub made no SQLite database.
    assert pg.spawner_state("alice")["job_id"] == job
    assert not (pg.data_dir / "jupyterhub.sqlite").exists()
    assert pg.alembic_version() == HEAD
    # A token made now is kept there too (hashed), and the password never reached the log.
    pg.token = pg.hub.new_token("alice")
    assert through_proxy(pg, "alice").status_code == 200
    assert PASSWORD not in pg.hub.log_text()


def test_the_user_the_login_and_the_server_survive_a_hub_restart(pg):
    job = pg.jobs[-1]
    pg.hub.restart()
    r = wait_for(lambda: (r := through_proxy(pg, "alice")).status_code == 200 and r, 60, "the server again")
    assert r.json()["started"]
    server = pg.hub.server("alice")
    assert server is not None and server["ready"]
    assert pg.hub.job_id("alice") == job
    assert job_state(job) == "RUNNING"
    # The browser's login cookie still names a session the hub knows.
    home = pg.client.get("/hub/home")
    assert home.status_code == 200
    assert home.url.path == "/hub/home", home.url
    assert pg.hub.api("GET", "/user", token=pg.token).json()["name"] == "alice"
    # The server's own token still counts as the server's (JupyterHub forgot the token itself,
    # the spawner's state keeps its id): the job's end report is heard (a report of another job
    # changes nothing), `werkbank submit` is answered (this hub has no MLflow service to give a
    # job token for). Another token of alice's is neither.
    server_token = job_environ(job)["JUPYTERHUB_API_TOKEN"]
    report = {"job_id": "1", "how": "exit", "status": 0}
    r = pg.hub.api("POST", "/werkbank/server-ended", token=server_token, json=report)
    assert r.status_code == 200 and r.json() == {"outcome": "not this job"}, r.text
    r = pg.hub.api("POST", "/werkbank/job-tokens", token=server_token, json={"expires_in": 600, "note": "t"})
    assert r.status_code == 409 and "no MLflow service" in r.text, r.text
    assert pg.hub.api("POST", "/werkbank/server-ended", token=pg.token, json=report).status_code == 403


def test_jupyterhub_upgrade_db_upgrades_an_older_schema_in_place(pg):
    job = pg.jobs[-1]
    pg.hub.stop()
    # The schema two revisions older, with the users, tokens and servers in it.
    with tempfile.TemporaryDirectory() as folder:
        ini = Path(folder) / "alembic.ini"
        write_alembic_ini(str(ini), make_url(pg.url).set(password=PASSWORD).render_as_string(False))
        run(str(VENV_BIN / "alembic"), "-c", str(ini), "downgrade", OLDER)
    assert pg.alembic_version() == OLDER
    assert pg.sql("SELECT column_name FROM information_schema.columns WHERE column_name = 'user_info'") == []

    config = str(pg.hub.workdir / "jupyterhub_config.py")
    hub = [str(VENV_BIN / "jupyterhub"), "-f", config]
    refused = subprocess.run(
        hub, env=pg.hub.env, cwd=pg.hub.workdir, capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode != 0
    assert "jupyterhub upgrade-db" in refused.stderr + refused.stdout

    upgraded = subprocess.run(
        [str(VENV_BIN / "jupyterhub"), "upgrade-db", "-f", config],
        env=pg.hub.env,
        cwd=pg.hub.workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert pg.alembic_version() == HEAD
    assert PASSWORD not in upgraded.stderr + upgraded.stdout

    pg.hub.start()
    wait_for(lambda: through_proxy(pg, "alice").status_code == 200, 60, "the server after the upgrade")
    assert pg.hub.job_id("alice") == job


def test_stopping_the_server_cancels_its_job_and_clears_the_state(pg):
    job = pg.jobs[-1]
    server_token = job_environ(job)["JUPYTERHUB_API_TOKEN"]
    pg.hub.stop_server("alice")
    wait_for(lambda: job_state(job) in ("", "COMPLETING"), 60, f"job {job} to end")
    assert "job_id" not in pg.spawner_state("alice")
    # The server started before the hub's restarts: its token is deleted all the same.
    assert pg.hub.api("GET", "/user", token=server_token).status_code == 403
    assert through_proxy(pg, "alice").status_code != 200
