"""The hub's MLflow service on PostgreSQL, as a production site runs it: a second JupyterHub whose
managed MLflow server keeps runs and permissions in a real PostgreSQL (Debian's, a private
cluster: tests/postgres.py). The same promises as on SQLite: a run logged from a Slurm job
records its user, other users can neither read nor delete it, requests without a token are
refused, and a killed MLflow server is restarted by the hub with nothing lost."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.cluster import TEST_USERS, VENV_BIN, Hub, make_hub, run

from .test_mlflow_service import kill_mlflow_server, wait_for_mlflow_restart

pytestmark = pytest.mark.integration

PORT, API_PORT, MLFLOW_PORT = 18300, 18381, 15300
RUNS_DB, AUTH_DB = "hub_mlflow", "hub_mlflow_auth"


@pytest.fixture(scope="module")
def pg_hub(slurm, postgres, tmp_path_factory):
    hub = make_hub(
        tmp_path_factory.mktemp("pg-hub"),
        port=PORT,
        api_port=API_PORT,
        spawner="slurm",
        mlflow=True,
        mlflow_port=MLFLOW_PORT,
        backend_store_uri=postgres.create_database(RUNS_DB),
        auth_database_uri=postgres.create_database(AUTH_DB),
    )
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
