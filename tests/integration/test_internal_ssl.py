"""``hub.internal_ssl``: a hub of its own on free ports with JupyterHub's internal TLS, and a
user's server as a real Slurm job (the ``slurm`` fixture's single-node cluster).

Shown end to end: the server starts (its job reports its port to the https hub API with the
server's certificate) and answers through the proxy; it speaks TLS only, asks for a client
certificate of the hub's CAs, and its certificate names the node's NodeAddr, NodeName and
NodeHostname but not localhost; the job's hub API URL is https and the hub API refuses plain
http; the key is the user's, 0600 in a 0700 folder in their home, and the hub keeps no copy;
the job's end report reaches the hub over TLS; after the stop the certificate folder is gone.
The idle culler runs with TLS too and does not fail. The MLflow proxy service serves TLS only,
with a certificate of the hub's CA that the job's MLflow client checks (a run logged from the
job's environment records its user; a client that trusts other CAs is refused), behind the
hub's proxy too; the trainer console creates, lists and ends a course through the hub API over
TLS. Inside alice's session (werkbank_lab): the session's MLflow UI proxy reaches the service over
TLS, the metric logger logs a run through it, and `werkbank submit` gets the job's token from the
https hub API with the server's certificate; the job logs its run after the server stopped and
its certificate folder went, with the job's own copy of the CA.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import socket
import ssl
import stat
import sys
import time
from pathlib import Path

import httpx
import nbformat
import pytest
import yaml

from tests.cluster import TEST_ADMIN, Hub, job_environ, job_field, make_hub, run
from tests.mlflow_server import free_port_pair
from tests.services import wait_for
from tests.workshops import write_course

pytestmark = pytest.mark.integration

USER = "alice"
#: Ports other tests use, whatever the operating system hands out.


class TlsHub:
    def __init__(self, hub: Hub, certs: Path, api_port: int, mlflow_port: int):
        self.hub, self.certs, self.api_port = hub, certs, api_port
        #: The MLflow proxy service's own port (jobs reach it there), after MLflow's.
        self.proxy_port = mlflow_port + 1
        self.jobs: list[str] = []
        #: `werkbank submit`'s job of the session and its notebook's folder ("job", "folder"),
        #: apart from ``jobs`` (servers: tests take the latest as alice's).
        self.batch: dict[str, str] = {}

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        """Trusts the hub's CAs only (all of them: hub-ca's trust bundle); shows the proxy's
        client certificate, as the proxy does when it forwards to a server."""
        context = ssl.create_default_context(cafile=str(self.certs / "hub-ca_trust.crt"))
        if with_certificate:
            client = self.certs / "proxy-client"
            context.load_cert_chain(client / "proxy-client.crt", client / "proxy-client.key")
        return context


@pytest.fixture(scope="module")
def tls(slurm, tmp_path_factory):
    # The hub's proxy API, the trainer console and the MLflow proxy service each at the port
    # after the hub's, the hub API's and MLflow's.
    port, api_port, mlflow_port = free_port_pair(), free_port_pair(), free_port_pair()
    hub = make_hub(
        tmp_path_factory.mktemp("tls-hub"),
        port=port,
        api_port=api_port,
        spawner="slurm",
        mlflow=True,
        mlflow_port=mlflow_port,
    )
    site_file = hub.workdir / "site.yaml"
    site = yaml.safe_load(site_file.read_text())
    site["hub"]["internal_ssl"] = True
    site["workshops"]["enabled"] = True
    # The culler asks the hub API at its start and every 10 s: over TLS, with the hub's certificate.
    site["culling"] = {"enabled": True, "timeout": 3600, "every": 10}
    site_file.write_text(yaml.safe_dump(site))
    state = TlsHub(hub, Path(site["hub"]["data_dir"]) / "internal-ssl", api_port, mlflow_port)
    hub.start()
    yield state
    hub.shut_down(USER, [*state.jobs, state.batch.get("job", "")])


def node_field(node: str, key: str) -> str:
    for token in run("scontrol", "show", "node", node).stdout.split():
        if token.startswith(key + "="):
            return token.split("=", 1)[1]
    raise KeyError(key)


def job_state(job: str) -> str:
    """The job's state in squeue, or "" once it has left the queue."""
    return run("squeue", "--noheader", "-j", job, "-o", "%T", check=False).stdout.strip()


def test_a_server_speaks_tls_only_with_the_hubs_certificates(tls, report_figure):
    hub = tls.hub
    started = time.monotonic()
    r = hub.spawn(USER, {"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(USER, timeout=120)
    report_figure("internal_ssl: spawn until ready (cpu profile)", f"{time.monotonic() - started:.1f} s")
    job = hub.job_id(USER)
    assert job
    tls.jobs.append(job)

    # Through the public proxy (plain http outside), which reaches the server over TLS.
    token = hub.token_for(USER)
    r = httpx.get(
        f"{hub.url}/user/{USER}/api/status", headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert r.status_code == 200, r.text

    # The job got https URLs and its certificate in the user's home.
    env = job_environ(job)
    assert env["JUPYTERHUB_API_URL"].startswith(f"https://127.0.0.1:{tls.api_port}/"), env[
        "JUPYTERHUB_API_URL"
    ]
    assert env["JUPYTERHUB_SERVICE_URL"].startswith("https://"), env["JUPYTERHUB_SERVICE_URL"]
    account = pwd.getpwnam(USER)
    folder = Path(account.pw_dir) / ".werkbank" / "certs" / "default"
    assert env["JUPYTERHUB_SSL_KEYFILE"] == str(folder / "server.key")
    assert env["JUPYTERHUB_SSL_CERTFILE"] == str(folder / "server.crt")
    assert env["JUPYTERHUB_SSL_CLIENT_CA"] == str(folder / "ca.crt")
    info = folder.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == account.pw_uid
    for name in ("server.key", "server.crt", "ca.crt"):
        info = (folder / name).lstat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, name
        assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid), name
    # The hub kept no copy of the server's key (JupyterHub signs it in its own folder first).
    assert not (tls.certs / f"user-{USER}" / f"user-{USER}.key").exists()

    # The server listens at the node's NodeAddr, at the port the job reported.
    node = job_field(job, "NodeList")
    address = node_field(node, "NodeAddr")
    port = int(env["JUPYTERHUB_SERVICE_URL"].split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    url = f"https://{address}:{port}/user/{USER}/api/status"
    headers = {"Authorization": f"token {token}"}

    # Plain http to the server: no answer (the TLS server drops it).
    plain = None
    try:
        plain = httpx.get(url.replace("https://", "http://"), headers=headers, timeout=10)
    except httpx.HTTPError:
        pass
    assert plain is None or plain.status_code != 200, plain and plain.text

    # TLS with the hub's CAs and a client certificate of theirs: the server's certificate is
    # valid for the node's address, and the server answers.
    with socket.create_connection((address, port), timeout=10) as raw:
        with tls.client_context().wrap_socket(raw, server_hostname=address) as conn:
            names = set(conn.getpeercert()["subjectAltName"])
    try:
        kind = "IP Address" if ipaddress.ip_address(address) else "DNS"
    except ValueError:
        kind = "DNS"
    assert (kind, address) in names, names
    assert ("DNS", node) in names, names  # NodeName
    assert ("DNS", node_field(node, "NodeHostName")) in names, names
    assert ("DNS", "localhost") not in names, names
    assert httpx.get(url, headers=headers, verify=tls.client_context(), timeout=10).status_code == 200

    # Without a client certificate the server refuses (it asks for one of the hub's CAs).
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, headers=headers, verify=tls.client_context(with_certificate=False), timeout=10)
    # Nor does a client that trusts only the system's CAs get in.
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, headers=headers, timeout=10)

    # The hub API: TLS only, with the hub's certificate for the address jobs use.
    try:
        plain = httpx.get(f"http://127.0.0.1:{tls.api_port}/hub/api/", timeout=10)
    except httpx.HTTPError:
        plain = None
    assert plain is None or plain.status_code != 200, plain and plain.text
    r = httpx.get(f"https://127.0.0.1:{tls.api_port}/hub/api/", verify=tls.client_context(), timeout=10)
    assert r.status_code == 200 and "version" in r.json(), r.text

    # The culler listed the users over TLS, with the hub's certificate (it asks at its start).
    culled = re.compile(r"200 GET /hub/api/users\S* \(idle-culler@")
    wait_for(lambda: culled.search(hub.log_text()), 30, "the culler's request in the hub log")


#: What the job's MLflow client runs (as the user, with the job's environment): a run logged
#: through the proxy service, then the same client with another CA bundle, which must fail.
MLFLOW_CLIENT = """\
import os, mlflow
with mlflow.start_run() as run:
    mlflow.log_metric("answer", 42)
print("run", run.info.run_id)
os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = "/etc/ssl/certs/ca-certificates.crt"
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
try:
    mlflow.MlflowClient().get_run(run.info.run_id)
    print("other CAs: accepted")
except Exception as e:
    print("other CAs:", repr(e)[:2000])
"""


def test_a_job_logs_to_mlflow_through_the_proxy_over_tls(tls, report_figure):
    """alice's server (still running from the first test): its MLflow client reaches the proxy
    service at https with the hub's CA, the run records alice whatever the client claims; the
    browsers' path through the hub's proxy answers; plain http to the service does not."""
    hub, job = tls.hub, tls.jobs[-1]
    env = job_environ(job)
    uri = env["MLFLOW_TRACKING_URI"]
    assert uri == f"https://127.0.0.1:{tls.proxy_port}/services/mlflow", uri
    # The job checks the service with the CA bundle it checks the hub API with, and nothing else.
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == env["JUPYTERHUB_SSL_CLIENT_CA"]
    assert "MLFLOW_TRACKING_INSECURE_TLS" not in env
    started = time.monotonic()
    hub.wait_for_mlflow()
    waited = time.monotonic() - started
    # The browsers' path: the hub's proxy (plain http outside here) reaches the service over TLS.
    alice = {"Authorization": f"Bearer {hub.token_for(USER)}"}

    def default_experiment() -> httpx.Response | None:
        r = httpx.get(
            f"{hub.url}/services/mlflow/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": f"{USER}/default"},
            headers=alice,
            timeout=10,
        )
        return r if r.status_code != 404 else None

    # The spawner creates alice's default experiment alongside the spawn, trying again with
    # backoff while MLflow starts: it may come a few seconds after MLflow first answers.
    r = wait_for(default_experiment, 60, f"MLflow's experiment {USER}/default")
    assert r.status_code == 200, r.text
    r = httpx.get(f"{hub.url}/services/mlflow/", timeout=10)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"], r.headers

    keep = {k: v for k, v in env.items() if k.startswith("MLFLOW_") or k in ("PATH", "HOME")}
    claims = {"USER": "bob", "LOGNAME": "bob"}  # MLflow's client takes its user from these
    # MLflow's client retries a failed TLS handshake for minutes: once is enough here.
    claims["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    started = time.monotonic()
    result = run(
        "sudo", "-u", USER, "env", "-i", *(f"{k}={v}" for k, v in {**keep, **claims}.items()),
        "python3", "-c", MLFLOW_CLIENT,
    )  # fmt: skip
    report_figure(
        "internal_ssl: a job's MLflow run over TLS (python, import mlflow included)",
        f"{time.monotonic() - started:.1f} s (after {waited:.1f} s waiting for MLflow)",
    )
    lines = dict(
        line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("run ", "other"))
    )
    run_id = lines["run"]
    assert "CERTIFICATE_VERIFY_FAILED" in lines["other"], result.stdout

    # Read back as alice, checked against the job's CA file: her run, recorded as hers.
    verify = ssl.create_default_context(cafile=env["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    r = httpx.get(
        f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=alice, verify=verify, timeout=10
    )
    assert r.status_code == 200, r.text
    stored = r.json()["run"]
    assert stored["info"]["user_id"] == USER
    assert {"key": "mlflow.user", "value": USER} in stored["data"]["tags"]
    assert {"key": "answer", "value": 42.0} in [
        {"key": m["key"], "value": m["value"]} for m in stored["data"]["metrics"]
    ]
    # The proxy's own question to the hub API (who a dashboard's viewer is), over TLS too.
    experiment = stored["info"]["experiment_id"]
    r = httpx.get(
        f"{uri}/werkbank/readable-experiments",
        params={"viewer": USER, "experiment_id": experiment},
        headers=alice,
        verify=verify,
        timeout=10,
    )
    assert r.status_code == 200 and r.json() == {"experiment_ids": [experiment]}, r.text
    # A client that trusts the system's CAs only is refused: the hub's CA signed the certificate.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=alice, timeout=10)

    # Plain http to the service's own port: no answer (the TLS server drops it).
    try:
        plain = httpx.get(f"http://127.0.0.1:{tls.proxy_port}/services/mlflow/health", timeout=10)
    except httpx.HTTPError:
        plain = None
    assert plain is None or plain.status_code != 200, plain and plain.text

    # The service's key is its account's alone, in a folder of its own outside the hub's.
    account = pwd.getpwnam("werkbank-mlflow")
    folder = tls.certs.parent.parent / "service-certs" / "mlflow"
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700 and folder.lstat().st_uid == account.pw_uid
    key = (folder / "server.key").lstat()
    assert stat.S_IMODE(key.st_mode) == 0o600 and key.st_uid == account.pw_uid


#: What alice's session runs (her server's environment): the metric logger of werkbank_lab over
#: TLS to the MLflow service, and the question a shared dashboard asks it.
SESSION_TRACKING = """\
import mlflow
from werkbank_lab import tracking
experiment = tracking.configure("tls-session")
run = mlflow.MlflowClient().create_run(experiment)
logger = tracking.MetricLogger(run.info.run_id, flush_interval=0.05)
for step in range(3):
    logger.log("loss", 1 / (step + 1), step)
print("delivered", logger.close(timeout=30))
print("run", run.info.run_id)
print("readable", sorted(tracking.readable_experiments([experiment], "alice")) == [experiment])
"""

#: A notebook `werkbank submit` runs: it waits until the server that submitted it has stopped
#: (its certificate folder gone), then logs a run with MLflow's client and the metric logger.
BATCH_NOTEBOOK = """\
import os, time
from pathlib import Path
import mlflow
from werkbank_lab import tracking
certs = Path.home() / ".werkbank" / "certs" / "default"
deadline = time.monotonic() + 120
while certs.exists() and time.monotonic() < deadline:
    time.sleep(0.2)
tracking.configure("tls-batch")
with mlflow.start_run(tags={"werkbank.slurm_job_id": os.environ["SLURM_JOB_ID"]}) as run:
    mlflow.log_params({
        "server_certs_gone": not certs.exists(),
        "cert_path": os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", ""),
        "server_key": os.environ.get("JUPYTERHUB_SSL_KEYFILE", ""),
    })
    logger = tracking.MetricLogger(run.info.run_id)
    logger.log("answer", 42)
    assert logger.close(timeout=30), "the metric was spooled, not sent"
"""


def session_run(env: dict[str, str], *argv: str):
    """``argv`` as alice with her session's werkbank, hub and MLflow variables (no shell)."""
    keep = {k: v for k, v in env.items() if k.startswith(("MLFLOW_", "JUPYTERHUB_", "WERKBANK_"))}
    keep["PATH"] = env["PATH"]
    return run(
        "sudo", "-n", "-u", USER, "-H", "env", *(f"{k}={v}" for k, v in keep.items()), *argv, check=False
    )


def test_a_session_tracks_and_submits_over_tls(tls, report_figure):
    """alice's session (werkbank_lab) under internal_ssl: its MLflow UI proxy, the metric logger and
    `werkbank submit`, whose job token comes from the https hub API (the server's certificate).

    Before the hub's restart (below): after one the hub no longer knows a running server's token
    and refuses it job tokens (werkbank_spawner.server_tokens), TLS or not."""
    hub, job = tls.hub, tls.jobs[-1]
    env = job_environ(job)
    alice = {"Authorization": f"token {hub.token_for(USER)}"}
    hub.wait_for_mlflow()
    started = time.monotonic()
    result = session_run(env, "python3", "-c", SESSION_TRACKING)
    report_figure(
        "internal_ssl: metric logger run from a session (python, imports included)",
        f"{time.monotonic() - started:.1f} s",
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines.get("delivered") == "True" and lines.get("readable") == "True", result.stdout + result.stderr
    r = httpx.get(
        f"{hub.url}/services/mlflow/api/2.0/mlflow/metrics/get-history",
        params={"run_id": lines["run"], "metric_key": "loss"},
        headers=alice,
        timeout=10,
    )
    assert r.status_code == 200 and [m["step"] for m in r.json()["metrics"]] == [0, 1, 2], r.text
    # The session's MLflow UI (/werkbank/mlflow/): proxied to the service over TLS, checked against
    # the hub's CA, with the session's token (the service's https address is not one a browser
    # could be sent to).
    r = httpx.get(
        f"{hub.url}/user/{USER}/werkbank/mlflow/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": f"{USER}/tls-session"},
        headers=alice,
        timeout=30,
    )
    assert r.status_code == 200, (r.status_code, r.headers, r.text[:500])
    assert r.json()["experiment"]["name"] == f"{USER}/tls-session", r.text

    # `werkbank submit` from the session: a notebook that logs to MLflow once the server is gone.
    home = Path(pwd.getpwnam(USER).pw_dir)
    folder = home / "tls-submit"
    run("sudo", "-n", "-u", USER, "mkdir", "-p", str(folder))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(BATCH_NOTEBOOK)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = folder / "tls-batch.ipynb"
    run("sudo", "-n", "-u", USER, "tee", str(notebook), input=nbformat.writes(nb))
    werkbank = str(Path(sys.executable).parent / "werkbank")  # the session's, as in test_submit
    result = session_run(env, werkbank, "submit", str(notebook), "--profile", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    batch_job = re.search(r"Submitted job (\d+)", result.stdout).group(1)
    tls.batch = {"job": batch_job, "folder": str(folder)}
    # The job's token came from the hub API, which speaks TLS only.
    assert re.search(r"201 POST /hub/api/werkbank/job-tokens \S* *\(alice@", hub.log_text()), hub.log_tail()


def test_the_trainer_console_works_over_tls(tls, tmp_path):
    """A course of existing accounts created, listed and ended through the console's REST API
    (behind the hub's proxy): each step asks the hub API, over TLS, with the console's
    certificate."""
    hub = tls.hub
    admin, trainer = hub.token_for(TEST_ADMIN), hub.token_for(USER)

    def console(method: str, path: str, token: str, **kw) -> httpx.Response:
        url = f"{hub.url}/services/werkbank-workshop/api/{path}"
        return httpx.request(method, url, headers={"Authorization": f"token {token}"}, timeout=60, **kw)

    def answers() -> bool:
        try:
            return console("GET", "courses", admin).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 60, "the trainer console")
    _, course = write_course(
        tmp_path, participants=["bob"], accounts="existing", login="sheet", reservation=False
    )
    del course["account_prefix"]
    r = console("POST", "courses", admin, json={"course": course})
    assert r.status_code == 201, r.text
    group = hub.api("GET", f"/groups/course-{course['name']}")
    assert group.status_code == 200 and group.json()["users"] == ["bob"], group.text
    mine = console("GET", "courses", trainer)
    assert mine.status_code == 200 and [c["name"] for c in mine.json()] == [course["name"]], mine.text
    r = console("POST", f"courses/{course['name']}/end", admin)
    assert r.status_code == 200, r.text
    assert hub.api("GET", f"/groups/course-{course['name']}").status_code == 404


def test_the_hub_restarts_with_the_server_running(tls):
    """The CAs stay in the hub's data_dir: after a restart the hub, the proxy and the server,
    still running as the same job with the certificate it got, trust each other."""
    hub, job = tls.hub, tls.jobs[-1]
    hub.restart()
    assert hub.job_id(USER) == job
    token = hub.token_for(USER)
    r = httpx.get(
        f"{hub.url}/user/{USER}/api/status", headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    assert "Using existing hub-internal CA" in hub.log_text()
    # The proxy service's new certificate (signed again at its start) is one the running job
    # still checks with the CA file it got: the service answers it over TLS (401: no token).
    env = job_environ(job)
    verify = ssl.create_default_context(cafile=env["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"

    def answers():
        try:
            return httpx.get(url, verify=verify, timeout=5).status_code
        except httpx.ConnectError:
            return None

    assert wait_for(answers, 30, "the MLflow proxy service after the restart") == 401


def test_stopping_the_server_removes_its_certificate(tls):
    hub = tls.hub
    folder = Path(pwd.getpwnam(USER).pw_dir) / ".werkbank" / "certs" / "default"
    assert (folder / "server.key").exists()
    hub.stop_server(USER)
    assert not folder.exists(), sorted(os.listdir(folder))


def test_a_batch_job_logs_over_tls_after_its_server_stopped(tls, report_figure):
    """The job `werkbank submit` queued (above) outlives alice's server: it checks the MLflow
    service with its own copy of the CA bundle, not the server's removed one, and has no key."""
    hub, batch_job = tls.hub, tls.batch["job"]
    jobs = Path(pwd.getpwnam(USER).pw_dir) / ".werkbank" / "jobs"
    status_file = jobs / f"{batch_job}.status.json"
    started = time.monotonic()
    wait_for(status_file.exists, 180, f"batch job {batch_job} to finish")
    report_figure(
        "internal_ssl: batch job's end after the server stopped", f"{time.monotonic() - started:.1f} s"
    )
    status = json.loads(status_file.read_text())
    log = Path(tls.batch["folder"]) / f"tls-batch-{batch_job}.log"
    assert status["state"] == "COMPLETED", (
        status,
        log.read_text(errors="replace")[-3000:] if log.exists() else "",
    )

    alice = {"Authorization": f"token {hub.token_for(USER)}"}
    base = f"{hub.url}/services/mlflow/api/2.0/mlflow"
    name = {"experiment_name": f"{USER}/tls-batch"}
    r = httpx.get(f"{base}/experiments/get-by-name", params=name, headers=alice, timeout=10)
    assert r.status_code == 200, r.text
    search = {"experiment_ids": [r.json()["experiment"]["experiment_id"]]}
    r = httpx.post(f"{base}/runs/search", json=search, headers=alice, timeout=10)
    tag = {"key": "werkbank.slurm_job_id", "value": batch_job}
    (stored,) = [found for found in r.json()["runs"] if tag in found["data"]["tags"]]
    params = {p["key"]: p["value"] for p in stored["data"]["params"]}
    assert params["server_certs_gone"] == "True", params
    ca = Path(params["cert_path"])
    assert ca.parent == jobs and ca.name.startswith("ca-"), params
    assert "PRIVATE KEY" not in ca.read_text()
    assert params["server_key"] == "", params
    assert stored["info"]["user_id"] == USER
    assert {"key": "answer", "value": 42.0} in [
        {"key": m["key"], "value": m["value"]} for m in stored["data"]["metrics"]
    ]


def test_a_job_that_ends_tells_the_hub_over_tls(tls, report_figure):
    """scancel from outside the hub: the job's end report (https, the server's certificate)
    reaches the hub, which stops the server at once and removes its certificate."""
    hub = tls.hub
    assert hub.spawn(USER, {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready(USER, timeout=120)
    job = hub.job_id(USER)
    tls.jobs.append(job)
    folder = Path(pwd.getpwnam(USER).pw_dir) / ".werkbank" / "certs" / "default"
    assert (folder / "server.key").exists()
    run("scancel", job)
    started = time.monotonic()
    wait_for(lambda: hub.server(USER) is None, 30, f"the hub to notice that job {job} ended")
    noticed = time.monotonic() - started
    ended = re.compile(r"20[02] POST /hub/api/werkbank/server-ended \(alice@")
    assert ended.search(hub.log_text()), hub.log_tail()
    report_figure("internal_ssl: scancel until the hub stopped the server", f"{noticed:.1f} s")
    # Noticed by the job's report (the spawner says so), not by the hub's next poll.
    assert f"alice's server ended: Slurm ended job {job}" in hub.log_text(), hub.log_tail()
    wait_for(lambda: not folder.exists(), 10, "the certificate folder to go")
    wait_for(lambda: job_state(job) not in ("RUNNING", "COMPLETING"), 30, f"job {job} to end")
    log = Path(pwd.getpwnam(USER).pw_dir) / ".werkbank" / "logs" / f"jupyter-{job}.log"
    text = log.read_text(errors="replace")
    assert "could not tell the hub" not in text, text[-2000:]
