"""MLflow as a hub service: the authenticating proxy at /services/mlflow/ in front of an MLflow
server that only listens on loopback, both started and restarted by the real JupyterHub."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cluster import MLFLOW_PORT, MLFLOW_PROXY_PORT, SERVICE_TOKEN, Hub, login, run, wait_for
from werkbank_spawner.site import services

from .other_users_data import assert_out_of_reach, assert_unchanged, create_own_data

pytestmark = pytest.mark.integration


def api(hub: Hub, path: str, token: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        kw.pop("method", "GET"), f"{hub.mlflow_url}/{path}", headers=headers, timeout=30, **kw
    )


def test_only_hub_users_get_through(hub):
    hub.wait_for_mlflow()
    r = api(hub, "api/2.0/mlflow/experiments/search?max_results=5")
    assert r.status_code == 401, r.text
    assert r.json()["error_code"] == "UNAUTHENTICATED"
    assert api(hub, "api/2.0/mlflow/experiments/search?max_results=5", "not-a-token").status_code == 401
    r = api(hub, "api/2.0/mlflow/experiments/search?max_results=5", hub.token_for("alice"))
    assert r.status_code == 200, r.text
    # Only her own experiments: not even MLflow's shared Default (id 0), closed to non-admins.
    assert "0" not in {e["experiment_id"] for e in r.json().get("experiments", [])}
    # The tests' admin service has many scopes, but not access to this service.
    assert api(hub, "api/2.0/mlflow/experiments/search", SERVICE_TOKEN).status_code == 403


def listening(port: int) -> list[str]:
    """Local addresses something listens on at ``port`` (from ss)."""
    out = run("ss", "-Hltn", f"sport = :{port}").stdout
    return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]


def non_loopback_address() -> str:
    for address in run("hostname", "-I").stdout.split():
        if ":" not in address and not address.startswith("127."):
            return address
    pytest.fail("this machine has no non-loopback IPv4 address to try")


def test_mlflow_and_the_proxy_listen_on_loopback_only(hub):
    hub.wait_for_mlflow()
    assert listening(MLFLOW_PORT) == ["127.0.0.1"]
    assert listening(MLFLOW_PROXY_PORT) == ["127.0.0.1"]
    address = non_loopback_address()
    for port in (MLFLOW_PORT, MLFLOW_PROXY_PORT):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


def uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("Uid:"):
            return {int(uid) for uid in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


def test_mlflow_and_the_proxy_run_as_their_service_account_never_root(hub):
    hub.wait_for_mlflow()
    account = pwd.getpwnam("werkbank-mlflow")
    (server,) = service_pids(f"mlflow server --host 127.0.0.1 --port {MLFLOW_PORT} ")
    (proxy,) = service_pids(f"werkbank_spawner.tracking.proxy --upstream http://127.0.0.1:{MLFLOW_PORT}")
    # The server and every worker it started (its process group), and the proxy.
    group = [int(pid) for pid in run("pgrep", "-g", str(server)).stdout.split()]
    assert len(group) >= 2
    for pid in [*group, proxy]:
        assert uids(pid) == {account.pw_uid}, pid
    # What MLflow keeps is the account's, the permission file readable by it alone.
    site = yaml.safe_load(Path(hub.env["WERKBANK_SITE_CONFIG"]).read_text())
    folder = Path(site["hub"]["data_dir"]).parent / "mlflow"
    assert folder.stat().st_uid == account.pw_uid
    assert folder.stat().st_mode & 0o777 == 0o700
    ini = (folder / "auth.ini").stat()
    assert (ini.st_uid, ini.st_mode & 0o777) == (account.pw_uid, 0o600)
    assert (folder / "mlflow.db").stat().st_uid == account.pw_uid


def test_another_users_data_is_out_of_reach_on_every_path(hub):
    """Alice's experiment, run, metric, artifact and registered model: bob can neither read nor
    change them on the jobs' port or through the hub's proxy (his session's path: test_spawn),
    nobody can without a token, and MLflow itself answers nobody who lacks the proxy's
    signed assertion, whatever they claim."""
    hub.wait_for_mlflow()
    alice = hub.token_for("alice")
    data = create_own_data(hub.mlflow_job_url, alice, "alice")
    bob = {"Authorization": f"Bearer {hub.token_for('bob')}"}
    for base in (hub.mlflow_job_url, hub.mlflow_url):
        assert_out_of_reach(data, base, bob)
        assert_out_of_reach(data, base, {}, expected=401)
    direct = f"http://127.0.0.1:{MLFLOW_PORT}/services/mlflow"
    claims = {"X_Werkbank_User": "bob", "X_Werkbank_Admin": "1", "Authorization": "Basic Ym9iOmJvYg=="}
    assert_out_of_reach(data, direct, claims, expected=401)
    assert_unchanged(data, hub.mlflow_job_url, alice)


def test_browser_login_reaches_the_ui_and_same_origin_requests(hub):
    hub.wait_for_mlflow()
    with closing(login(hub, "alice")) as client:
        page = client.get("/services/mlflow/")
        assert page.status_code == 200, page.text[:500]
        assert "<title>MLflow</title>" in page.text
        # It went through the hub's OAuth (no confirmation page) and set this service's cookie.
        assert any("/hub/api/oauth2/authorize" in str(r.url) for r in page.history)
        assert client.cookies.get("service-mlflow", path="/services/mlflow/")
        # The page loads the script that sends JupyterHub's XSRF token with the UI's requests.
        assert '<script src="werkbank-xsrf.js"></script>' in page.text
        xsrf = client.cookies.get("_xsrf", path="/services/mlflow/")
        assert xsrf
        search = "/services/mlflow/ajax-api/2.0/mlflow/experiments/search"
        body = {"max_results": 5}
        cors = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
        r = client.post(search, json=body, headers={**cors, "X-XSRFToken": xsrf})
        assert r.status_code == 200, r.text
        # Without the token the cookie counts for nothing, from this origin too: every user's
        # server shares it, and a page from /user/bob/ must not write as alice.
        r = client.post(search, json=body, headers=cors)
        assert r.status_code == 403, r.text
        assert "XSRF" in r.json()["message"]
        r = client.post(search, json=body, headers={**cors, "X-XSRFToken": xsrf + "x"})
        assert r.status_code == 403
        # Another site's page cannot use the cookie to change or read anything.
        r = client.post(search, json=body, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"})
        assert r.status_code in (401, 403)
        r = client.get(
            search + "?max_results=5", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
        )
        assert r.status_code in (401, 403)
        # Read-only navigation with the cookie is fine.
        r = client.get("/services/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=5")
        assert r.status_code == 200


def test_a_user_token_cannot_claim_another_user(hub):
    hub.wait_for_mlflow()
    token = hub.token_for("alice")
    r = api(
        hub, "api/2.0/mlflow/experiments/create", token, method="POST", json={"name": f"claims-{time.time()}"}
    )
    assert r.status_code == 200, r.text
    experiment_id = r.json()["experiment_id"]
    r = api(
        hub,
        "api/2.0/mlflow/runs/create",
        token,
        method="POST",
        json={
            "experiment_id": experiment_id,
            "user_id": "bob",
            "tags": [{"key": "mlflow.user", "value": "bob"}],
        },
    )
    assert r.status_code == 200, r.text
    info = r.json()["run"]["info"]
    assert info["user_id"] == "alice"
    r = api(hub, f"api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", token)
    assert {"key": "werkbank.owner", "value": "alice"} in r.json()["experiment"]["tags"]
    r = api(
        hub,
        "api/2.0/mlflow/runs/set-tag",
        token,
        method="POST",
        json={"run_id": info["run_id"], "key": "mlflow.user", "value": "bob"},
    )
    assert r.status_code == 403


def test_users_see_their_own_and_their_groups_experiments(hub):
    """Permissions from the hub's users and groups: alice's own experiment is hers alone; an
    experiment of the group's project (``<group>/...``) is shared with its members."""
    hub.wait_for_mlflow()
    group = "werkbank-project"
    assert hub.api("POST", f"/groups/{group}", json={"users": ["alice", "bob"]}).status_code == 201
    try:
        # New tokens: the proxy caches what the hub says about a token (groups included) for a minute.
        alice, bob = hub.new_token("alice"), hub.new_token("bob")
        stamp = time.time()
        create = "api/2.0/mlflow/experiments/create"
        r = api(hub, create, alice, method="POST", json={"name": f"alice/{stamp}"})
        assert r.status_code == 200, r.text
        private = r.json()["experiment_id"]
        assert api(hub, f"api/2.0/mlflow/experiments/get?experiment_id={private}", bob).status_code == 403
        r = api(hub, "api/2.0/mlflow/experiments/delete", bob, method="POST", json={"experiment_id": private})
        assert r.status_code == 403
        assert api(hub, f"api/2.0/mlflow/experiments/get?experiment_id={private}", alice).status_code == 200

        name = f"{group}/{stamp}"
        r = api(hub, create, alice, method="POST", json={"name": name})
        assert r.status_code == 200, r.text
        shared = r.json()["experiment_id"]
        r = api(hub, "api/2.0/mlflow/runs/create", bob, method="POST", json={"experiment_id": shared})
        assert r.status_code == 200, r.text
        assert r.json()["run"]["info"]["user_id"] == "bob"
        r = api(hub, f"api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", alice)
        assert r.json()["experiment"]["experiment_id"] == shared
    finally:
        hub.api("DELETE", f"/groups/{group}")


PROXY_PATTERN = f"werkbank_spawner.tracking.proxy --upstream http://127.0.0.1:{MLFLOW_PORT}"


def service_pids(pattern: str) -> list[int]:
    out = run("pgrep", "-f", pattern, check=False).stdout
    return [int(pid) for pid in out.split()]


def kill_mlflow_server(port: int) -> int:
    """Kill the hub's MLflow server on ``port``, all of it (the `mlflow server` process and its
    uvicorn worker); return its pid once it is gone."""
    (server,) = service_pids(f"mlflow server --host 127.0.0.1 --port {port} ")
    os.killpg(server, signal.SIGKILL)
    wait_for(lambda: not service_pids(f"--port {port} "), 10, "the MLflow server to be gone")
    return server


def wait_for_mlflow_restart(hub: Hub, port: int, killed: int) -> None:
    """Until the hub has noticed the killed server and a new one answers through the proxy."""
    wait_for(lambda: "Service mlflow-server exited" in hub.log_text(), 60, "the hub to notice", interval=1)
    hub.wait_for_mlflow(timeout=150)
    assert service_pids(f"mlflow server --host 127.0.0.1 --port {port} ") not in ([], [killed])


def test_the_hub_restarts_mlflow_and_the_proxy_and_nothing_is_lost(hub):
    hub.wait_for_mlflow()
    token = hub.token_for("alice")
    name = f"survives-{time.time()}"
    r = api(hub, "api/2.0/mlflow/experiments/create", token, method="POST", json={"name": name})
    assert r.status_code == 200, r.text
    experiment_id = r.json()["experiment_id"]

    # The MLflow server dies.
    server = kill_mlflow_server(MLFLOW_PORT)
    r = api(hub, "api/2.0/mlflow/experiments/search", token)
    # The proxy says so (a kept-alive connection reset under this GET is retried on a new one,
    # which is refused: 503; or, when the hub's new server has bound the port but is not yet
    # serving, reset again: 502, seen once in CI), and MLflow's client retries on both.
    assert r.status_code in (502, 503), r.text
    assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    wait_for_mlflow_restart(hub, MLFLOW_PORT, server)
    r = api(hub, f"api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", token)
    assert r.status_code == 200, r.text
    assert r.json()["experiment"]["name"] == name

    # The proxy dies.
    (proxy,) = service_pids(PROXY_PATTERN)
    os.kill(proxy, signal.SIGKILL)
    wait_for(lambda: "Service mlflow exited" in hub.log_text(), 60, "the hub to notice the proxy", interval=1)

    def answers():
        try:
            return (
                api(hub, f"api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", token).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    wait_for(answers, 60, "the proxy to answer again", interval=1)
    assert service_pids(PROXY_PATTERN) not in ([], [proxy])


def test_the_mlflow_server_serves_under_the_service_path_and_only_to_the_proxy(hub):
    hub.wait_for_mlflow()
    direct = f"http://127.0.0.1:{MLFLOW_PORT}"
    # What the proxy forwards to: the REST API and the UI live under the prefix ...
    assert httpx.get(f"{direct}/services/mlflow/health", timeout=10).text == "OK"
    assert httpx.get(f"{direct}/api/2.0/mlflow/experiments/search", timeout=10).status_code in (401, 404)
    # ... and answer only the proxy (a job on this machine reaches loopback too), whatever
    # user a request claims to be.
    claims = {"X-Werkbank-User": "alice", "X-Werkbank-Admin": "1"}
    for path in ("services/mlflow/", "services/mlflow/api/2.0/mlflow/experiments/search?max_results=5"):
        r = httpx.get(f"{direct}/{path}", headers=claims, timeout=10)
        assert r.status_code == 401, r.text
        assert "reached through the hub" in r.text


def hub_data_dir(hub: Hub) -> Path:
    return Path(yaml.safe_load(Path(hub.env["WERKBANK_SITE_CONFIG"]).read_text())["hub"]["data_dir"])


def service_secrets(hub: Hub) -> dict[str, dict]:
    """What the hub wrote into its services' secrets files at its start (read as root)."""
    folder = services.service_secrets_dir(hub_data_dir(hub))
    return {
        path.parent.name: json.loads(path.read_text()) for path in folder.glob(f"*/{services.SECRETS_FILE}")
    }


def secret_values(secrets: dict) -> set[str]:
    return {secrets.get("signing_key", ""), *secrets.get("environment", {}).values()} - {""}


def assert_no_secret_in_the_hub_database(hub: Hub, *also: str) -> None:
    """No value of the services' secrets files (and none of ``also``) in the hub's SQLite database
    (its journal files too), and each service's stored environment names files, never secrets."""
    values = {v for s in service_secrets(hub).values() for v in secret_values(s)} | set(also)
    assert values, "the hub wrote no secrets: nothing to look for"
    database = hub_data_dir(hub) / "jupyterhub.sqlite"
    for path in database.parent.glob("jupyterhub.sqlite*"):
        content = path.read_bytes()
        found = sum(value.encode() in content for value in values)  # never the values in a report
        assert found == 0, f"{found} of the services' {len(values)} secrets in {path}"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        stored = dict(db.execute("SELECT name, environment FROM services"))
    assert "WERKBANK_MLFLOW_SECRETS" in json.loads(stored["mlflow-server"])
    for name, environment in stored.items():
        for variable, value in json.loads(environment or "{}").items():
            if re.search("PASSWORD|SECRET|KEY|TOKEN", variable):
                assert value.startswith("/"), (name, variable)


def test_the_services_secrets_are_in_their_files_not_in_the_hubs_database(hub):
    hub.wait_for_mlflow()
    secrets = service_secrets(hub)
    key = secrets["mlflow"]["signing_key"]
    assert secrets["mlflow-server"]["signing_key"] == key
    assert set(secrets["mlflow-server"]["environment"]) == {
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
    }
    assert_no_secret_in_the_hub_database(hub)
    # Each file is its service account's alone, and the services work with what is in them:
    # MLflow's own permission checks, on the proxy's signed word.
    account = pwd.getpwnam("werkbank-mlflow")
    for name in secrets:
        path = services.service_secrets_path(hub_data_dir(hub), name)
        for p, mode in ((path, 0o600), (path.parent, 0o700)):
            info = p.lstat()
            assert (info.st_uid, info.st_mode & 0o777) == (account.pw_uid, mode), p
        assert run("sudo", "-u", "bob", "cat", str(path), check=False).returncode != 0
    alice, bob = hub.token_for("alice"), hub.token_for("bob")
    name = f"alice/secrets-{time.time()}"
    r = api(hub, "api/2.0/mlflow/experiments/create", alice, method="POST", json={"name": name})
    assert r.status_code == 200, r.text
    get = f"api/2.0/mlflow/experiments/get?experiment_id={r.json()['experiment_id']}"
    assert api(hub, get, alice).status_code == 200
    assert api(hub, get, bob).status_code == 403
    # No secret on a command line (ps) or in a process's environment but in the MLflow server's
    # (its launcher sets what MLflow reads from there): not the signing key, not in the proxy's.
    (server,) = service_pids(f"mlflow server --host 127.0.0.1 --port {MLFLOW_PORT} ")
    (proxy,) = service_pids(PROXY_PATTERN)
    assert key not in run("ps", "-eww", "-o", "args").stdout
    for pid in (server, proxy):
        assert key.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid
    environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
    for variable, value in secrets["mlflow-server"]["environment"].items():
        assert f"{variable}={value}".encode() in environ
