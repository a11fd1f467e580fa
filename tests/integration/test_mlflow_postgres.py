"""The hub's MLflow service on PostgreSQL, as a production site runs it: a second JupyterHub whose
managed MLflow server keeps runs and permissions in a real PostgreSQL (Debian's, a private
cluster: tests/postgres.py), as an ordinary role whose password only a file holds
(``tracking.mlflow.db_password_file``). The same promises as on SQLite: a run logged from a
Slurm job records its user, other users can neither read nor delete it, requests without a token
are refused, and a killed MLflow server or a restarted hub brings it back with nothing lost. The
password reaches the MLflow server alone: no command line, log, site file, hub database or file
users can read holds it, only the password file and the server's secrets file, which the hub
writes at every start for the server's account alone; a wrong one stops the server with
PostgreSQL's own words."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cluster import TEST_USERS, VENV_BIN, Hub, make_hub, run
from tests.mlflow_server import free_port
from tests.services import wait_for
from werkbank_spawner.site import services, validate

from .test_mlflow_service import (
    assert_no_secret_in_the_hub_database,
    hub_data_dir,
    kill_mlflow_server,
    service_pids,
    service_secrets,
    wait_for_mlflow_restart,
)

pytestmark = pytest.mark.integration

PORT, API_PORT, MLFLOW_PORT = 18300, 18381, 15300
RUNS_DB, AUTH_DB = "hub_mlflow", "hub_mlflow_auth"
ROLE = "werkbank_mlflow"
#: Characters a URL would read as syntax (the URIs never see it, but a regression that put it
#: there should not quietly pass); no single quote: it goes into SQL.
#: Its random end survives any escaping (a URL's %40, SQLAlchemy's, an ini file's %%): where it
#: is, the password is.
SECRET_END = os.urandom(6).hex()
PASSWORD = "mlflow p@ss:w/rd?#%2F-" + SECRET_END


def holds_password(text: str | bytes) -> bool:
    return (SECRET_END.encode() if isinstance(text, bytes) else SECRET_END) in text


@pytest.fixture(scope="module")
def databases(postgres) -> tuple[str, str]:
    """MLflow's two databases, owned by a role that logs in with ``PASSWORD``; their URIs."""
    postgres.create_role(ROLE, PASSWORD)
    return postgres.create_database(RUNS_DB, ROLE), postgres.create_database(AUTH_DB, ROLE)


@pytest.fixture(scope="module")
def password_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pg-mlflow-secrets") / "mlflow-db-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pg_hub(slurm, databases, password_file, tmp_path_factory):
    runs, auth = databases
    hub = make_hub(
        tmp_path_factory.mktemp("pg-hub"),
        port=PORT,
        api_port=API_PORT,
        spawner="slurm",
        mlflow=True,
        mlflow_port=MLFLOW_PORT,
        backend_store_uri=runs,
        auth_database_uri=auth,
    )
    site_file = hub.workdir / "site.yaml"
    site = yaml.safe_load(site_file.read_text())
    site["tracking"]["mlflow"]["db_password_file"] = str(password_file)
    site_file.write_text(yaml.safe_dump(site))
    hub.start()
    for user in TEST_USERS:
        hub.api("POST", f"/users/{user}")
    hub.wait_for_mlflow()
    yield hub
    hub.stop()


def mlflow(hub: Hub, method: str, path: str, user: str | None, **kw) -> httpx.Response:
    """A request to the hub's MLflow service as jobs reach it, with ``user``'s token."""
    headers = {"Authorization": f"Bearer {hub.token_for(user)}"} if user else {}
    return httpx.request(method, f"{hub.mlflow_job_url}/{path}", headers=headers, timeout=30, **kw)


def test_a_run_from_a_slurm_job_records_its_user_in_postgresql(pg_hub, postgres):
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": "/home/bob",
        "MLFLOW_TRACKING_URI": pg_hub.mlflow_job_url,
        "MLFLOW_TRACKING_TOKEN": pg_hub.token_for("bob"),
        "MLFLOW_EXPERIMENT_NAME": "bob/default",
        # The client claims to be alice: MLflow's client takes its user from USER/LOGNAME.
        "USER": "alice",
        "LOGNAME": "alice",
    }
    code = (
        "import mlflow, os\n"
        "with mlflow.start_run(tags={'mlflow.user': 'alice'}) as run:\n"
        "    mlflow.log_param('job', os.environ['SLURM_JOB_ID'])\n"
        "    mlflow.log_metric('answer', 42)\n"
        "print(run.info.run_id)\n"
    )
    result = run(
        "sudo", "-u", "bob", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
        "srun", "--quiet", "--job-name=werkbank-pg-test", "--time=5", "python", "-c", code,
        cwd="/tmp",
    )  # fmt: skip
    run_id = result.stdout.strip().splitlines()[-1]

    r = mlflow(pg_hub, "GET", f"api/2.0/mlflow/runs/get?run_id={run_id}", "bob")
    assert r.status_code == 200, r.text
    stored = r.json()["run"]
    assert stored["info"]["user_id"] == "bob"
    assert {"key": "mlflow.user", "value": "bob"} in stored["data"]["tags"]
    assert stored["data"]["params"][0]["key"] == "job"
    # It is PostgreSQL that holds it.
    assert postgres.query(RUNS_DB, f"SELECT user_id FROM runs WHERE run_uuid = '{run_id}'") == [["bob"]]

    assert mlflow(pg_hub, "GET", f"api/2.0/mlflow/runs/get?run_id={run_id}", None).status_code == 401
    assert mlflow(pg_hub, "GET", f"api/2.0/mlflow/runs/get?run_id={run_id}", "alice").status_code == 403
    r = mlflow(pg_hub, "POST", "api/2.0/mlflow/runs/delete", "alice", json={"run_id": run_id})
    assert r.status_code == 403, r.text
    r = mlflow(pg_hub, "GET", f"api/2.0/mlflow/runs/get?run_id={run_id}", "bob")
    assert r.json()["run"]["info"]["lifecycle_stage"] == "active"


def test_a_killed_mlflow_server_comes_back_with_runs_and_permissions(pg_hub, postgres):
    name = f"alice/survives-{time.time()}"
    r = mlflow(pg_hub, "POST", "api/2.0/mlflow/experiments/create", "alice", json={"name": name})
    assert r.status_code == 200, r.text
    experiment_id = r.json()["experiment_id"]
    r = mlflow(pg_hub, "POST", "api/2.0/mlflow/runs/create", "alice", json={"experiment_id": experiment_id})
    run_id = r.json()["run"]["info"]["run_id"]

    server = kill_mlflow_server(MLFLOW_PORT)
    wait_for_mlflow_restart(pg_hub, MLFLOW_PORT, server)

    r = mlflow(pg_hub, "GET", f"api/2.0/mlflow/runs/get?run_id={run_id}", "alice")
    assert r.status_code == 200, r.text
    assert r.json()["run"]["info"]["experiment_id"] == experiment_id
    # The permissions came back too (from PostgreSQL): still alice's alone.
    assert (
        mlflow(
            pg_hub, "GET", f"api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", "bob"
        ).status_code
        == 403
    )
    owners = postgres.query(
        AUTH_DB,
        # MLflow 3.17 keeps a user's permissions in a role of their own.
        "SELECT u.username FROM role_permissions p JOIN user_role_assignments a ON a.role_id = p.role_id "
        "JOIN users u ON u.id = a.user_id "
        f"WHERE p.resource_type = 'experiment' AND p.resource_pattern = '{experiment_id}'",
    )
    assert owners == [["alice"]]


def test_the_password_is_needed_and_reaches_the_mlflow_server_alone(pg_hub, postgres, password_file):
    # PostgreSQL asks for it: without it, or with another, the role cannot log in.
    assert postgres.logs_in(ROLE, PASSWORD, RUNS_DB)
    assert not postgres.logs_in(ROLE, "", RUNS_DB)
    assert not postgres.logs_in(ROLE, PASSWORD + "x", AUTH_DB)
    # The MLflow server has it, as PGPASSWORD, in an environment that only its own account (and
    # root) may read: a user cannot.
    pg_hub.wait_for_mlflow()
    (server,) = service_pids(f"mlflow server --host 127.0.0.1 --port {MLFLOW_PORT} ")
    environ = Path(f"/proc/{server}/environ")
    assert f"PGPASSWORD={PASSWORD}".encode() in environ.read_bytes().split(b"\0")
    assert environ.stat().st_uid == pwd.getpwnam("werkbank-mlflow").pw_uid
    as_bob = run("sudo", "-u", "bob", "cat", str(environ), check=False)
    assert as_bob.returncode != 0
    assert PASSWORD not in as_bob.stdout
    # Nowhere else: no command line on the machine, the hub's log, the site file, no file in the
    # hub's or MLflow's folders (the hub's database included: JupyterHub keeps each managed
    # service's environment there) but the server's secrets file, which its launcher reads, and
    # which is the service account's alone.
    assert not holds_password(run("ps", "-eww", "-o", "args").stdout)
    assert not holds_password(pg_hub.log_text())
    site_file = pg_hub.workdir / "site.yaml"
    assert not holds_password(site_file.read_text())
    data_dir = hub_data_dir(pg_hub)
    files = [p for folder in (pg_hub.workdir, data_dir.parent) for p in folder.rglob("*") if p.is_file()]
    assert data_dir.parent / "mlflow" / "auth.ini" in files
    assert data_dir / "jupyterhub.sqlite" in files
    secrets = services.service_secrets_path(data_dir, services.MLFLOW_SERVER_SERVICE)
    assert [p for p in files if holds_password(p.read_bytes())] == [secrets]
    assert json.loads(secrets.read_text())["environment"]["PGPASSWORD"] == PASSWORD
    for path, mode in ((secrets, 0o600), (secrets.parent, 0o700)):
        info = path.lstat()
        assert (info.st_uid, info.st_mode & 0o777) == (pwd.getpwnam("werkbank-mlflow").pw_uid, mode), path
    as_bob = run("sudo", "-u", "bob", "cat", str(secrets), check=False)
    assert as_bob.returncode != 0
    assert "Permission denied" in as_bob.stderr
    assert_no_secret_in_the_hub_database(pg_hub, PASSWORD)


def test_a_hub_restart_brings_new_secrets_and_mlflow_keeps_its_runs_and_permissions(pg_hub):
    """The hub stops its services with itself and starts them again with secrets new at its
    start, which it writes before: the proxy and the server agree on the new key, the old one is
    worth nothing, the database password still works, and the hub's database holds none."""
    name = f"alice/across-a-restart-{time.time()}"
    r = mlflow(pg_hub, "POST", "api/2.0/mlflow/experiments/create", "alice", json={"name": name})
    assert r.status_code == 200, r.text
    experiment_id = r.json()["experiment_id"]
    before = service_secrets(pg_hub)

    pg_hub.restart()
    pg_hub.wait_for_mlflow()

    after = service_secrets(pg_hub)
    assert after["mlflow"]["signing_key"] == after["mlflow-server"]["signing_key"]
    assert after["mlflow"]["signing_key"] != before["mlflow"]["signing_key"]
    assert after["mlflow-server"]["environment"]["PGPASSWORD"] == PASSWORD
    get = f"api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
    r = mlflow(pg_hub, "GET", get, "alice")
    assert r.status_code == 200, r.text
    assert r.json()["experiment"]["name"] == name
    assert mlflow(pg_hub, "GET", get, "bob").status_code == 403
    # Neither the new secrets nor the old ones are in the hub's database.
    assert_no_secret_in_the_hub_database(pg_hub, before["mlflow"]["signing_key"], PASSWORD)


def test_a_wrong_password_stops_mlflow_with_postgresqls_words(databases, tmp_path):
    """The managed server's command and environment as the hub builds them, with a password file
    that holds another password: MLflow says at once what PostgreSQL said (the hub's log shows the
    services' output), and never the password. Cheaper than a hub: no restart, no proxy."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not " + PASSWORD + "\n")
    wrong.chmod(0o600)
    runs, _ = databases
    site = validate(
        {
            "profiles": [{"name": "cpu", "partition": "cpu"}],
            "limits": {"default": {"partitions": ["cpu"]}},
            "tracking": {
                "mlflow": {"proxy": False, "backend_store_uri": runs, "db_password_file": str(wrong)}
            },
        }
    )
    data_dir = tmp_path / "hub"
    (data_dir.parent / "mlflow").mkdir()
    port = free_port()
    mlflow = site.tracking.mlflow.model_copy(update={"port": port})
    server = services.mlflow_server_service(mlflow, data_dir, prefix="", signing_key="")
    # The server's secrets file, as the hub writes it at its start (apply.write_service_secrets).
    secrets = services.service_secrets_path(data_dir, services.MLFLOW_SERVER_SERVICE)
    secrets.parent.mkdir(mode=0o700, parents=True)
    secrets.write_text(services.secrets_text(services.mlflow_server_secrets(mlflow, signing_key="")))
    secrets.chmod(0o600)
    assert server["command"][server["command"].index("--") - 1] == str(secrets)
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "PGPASSFILE": "/nonexistent"}
    log = tmp_path / "mlflow.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            server["command"],
            env={**env, **server["environment"]},
            cwd=server["cwd"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # MLflow's first failed connection (it retries for ~100 s, then exits; the hub restarts it).
        failed = "SQLAlchemy engine could not be created"
        wait_for(lambda: failed in log.read_text() or process.poll() is not None, 120, "MLflow's complaint")
        assert f'password authentication failed for user "{ROLE}"' in log.read_text(), log.read_text()[-3000:]
        assert not holds_password(log.read_text())
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
