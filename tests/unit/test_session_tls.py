"""What a session asks of the hub under ``hub.internal_ssl`` (:mod:`werkbank_lab.tls`): the hub API
with the hub's CA and the server's certificate (a job token for ``werkbank submit``), the MLflow
service against ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (the metric logger, readable experiments),
and a batch job's own copy of that CA bundle. Real TLS servers on 127.0.0.1 with certificates as
JupyterHub's internal_ssl makes them (certipy); tests/integration/test_internal_ssl.py runs it all
with a hub and Slurm."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from certipy import Certipy

from tests.tls_server import TlsServer
from werkbank_core.policy import JobRequest
from werkbank_lab import batch, tracking
from werkbank_lab.tls import hub_ssl_context, mlflow_verify


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The hub's CAs, another CA, and certificates signed as internal_ssl signs them."""
    root = tmp_path_factory.mktemp("pki")
    certipy = Certipy(store_dir=str(root))
    for ca in ("hub-ca", "notebooks-ca", "other-ca"):
        certipy.create_ca(ca)
    hub = certipy.create_signed_pair("hub-internal", "hub-ca", alt_names=["IP:127.0.0.1"])
    server = certipy.create_signed_pair("user-alice", "notebooks-ca", alt_names=["DNS:node1"])
    stranger = certipy.create_signed_pair("stranger", "other-ca", alt_names=["IP:127.0.0.1"])
    bundle = root / "all-cas.crt"
    ca_file = {
        ca: certipy.store.get_record(ca)["files"]["cert"] for ca in ("hub-ca", "notebooks-ca", "other-ca")
    }
    bundle.write_text(Path(ca_file["hub-ca"]).read_text() + Path(ca_file["notebooks-ca"]).read_text())
    return SimpleNamespace(
        hub=hub["files"],
        server=server["files"],
        stranger=stranger["files"],
        other_ca=ca_file["other-ca"],
        bundle=str(bundle),
    )


@pytest.fixture
def hub_api(pki):
    server = TlsServer(
        pki.hub, {"/hub/api/werkbank/job-tokens": {"token": "job-t0ken"}}, client_cas=pki.bundle
    )
    yield server
    server.close()


@pytest.fixture
def mlflow_service(pki):
    """The hub's MLflow service: a certificate of hub-ca, no client certificate asked for."""
    server = TlsServer(
        pki.hub,
        {
            "/services/mlflow/api/2.0/mlflow/runs/log-batch": {},
            "/services/mlflow/werkbank/readable-experiments": {"experiment_ids": ["1"]},
        },
    )
    yield server
    server.close()


def session_environ(pki, hub_api: TlsServer, mlflow_service: TlsServer, folder: Path) -> dict[str, str]:
    """A session's environment as the spawner sets it under internal_ssl, its certificates in
    ``folder`` (the server's certificate folder, which goes when the server stops)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in (("server.key", pki.server["key"]), ("server.crt", pki.server["cert"])):
        shutil.copyfile(source, folder / name)
    shutil.copyfile(pki.bundle, folder / "ca.crt")
    return {
        "JUPYTERHUB_API_URL": f"{hub_api.url}/hub/api",
        "JUPYTERHUB_API_TOKEN": "server-t0ken",
        "JUPYTERHUB_SSL_KEYFILE": str(folder / "server.key"),
        "JUPYTERHUB_SSL_CERTFILE": str(folder / "server.crt"),
        "JUPYTERHUB_SSL_CLIENT_CA": str(folder / "ca.crt"),
        "MLFLOW_TRACKING_URI": f"{mlflow_service.url}/services/mlflow",
        "MLFLOW_TRACKING_TOKEN": "server-t0ken",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(folder / "ca.crt"),
        "PATH": "/usr/bin:/bin",
    }


def use_environ(monkeypatch, environ: dict[str, str]) -> None:
    for name in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_TOKEN", "JUPYTERHUB_SSL_CERTFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)


# --- the hub API ---------------------------------------------------------------------------


def test_the_hub_context_is_the_servers_certificate_and_the_hubs_cas(pki, hub_api, tmp_path):
    env = session_environ(pki, hub_api, hub_api, tmp_path / "certs")
    context = hub_ssl_context(env)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    url = f"{hub_api.url}/hub/api/werkbank/job-tokens"
    with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), context=context, timeout=10) as r:
        assert json.loads(r.read()) == {"token": "job-t0ken"}
    # The hub API asks for a client certificate: the hub's CAs alone do not get in.
    with pytest.raises(OSError):
        urllib.request.urlopen(url, context=ssl.create_default_context(cafile=pki.bundle), timeout=10)
    # Without internal_ssl: urllib's default (the system's CAs), which do not trust hub-ca.
    assert hub_ssl_context({k: v for k, v in env.items() if "SSL" not in k}) is None
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, timeout=10)


def test_a_job_token_is_asked_for_over_internal_ssl(pki, hub_api, tmp_path):
    env = session_environ(pki, hub_api, hub_api, tmp_path / "certs")
    assert batch.request_job_token(env, 3600, "nb.ipynb") == "job-t0ken"
    ((method, path, headers, body),) = hub_api.requests
    assert (method, path) == ("POST", "/hub/api/werkbank/job-tokens")
    assert headers["Authorization"] == "token server-t0ken"
    assert json.loads(body) == {"expires_in": 3600, "note": "nb.ipynb"}
    # A hub whose certificate the session's CAs did not sign gets no token (no unchecked fallback).
    stranger = TlsServer(pki.stranger, {"/hub/api/werkbank/job-tokens": {"token": "x"}})
    try:
        with pytest.raises(batch.SubmitError, match="CERTIFICATE_VERIFY_FAILED"):
            batch.request_job_token({**env, "JUPYTERHUB_API_URL": f"{stranger.url}/hub/api"}, 3600, "nb")
        assert stranger.requests == []
    finally:
        stranger.close()


# --- the MLflow service ----------------------------------------------------------------------


def test_mlflow_is_checked_against_the_cert_path_only(pki):
    assert mlflow_verify({}) is True
    context = mlflow_verify({"MLFLOW_TRACKING_SERVER_CERT_PATH": pki.bundle})
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    # That bundle only, as MLflow's client (requests' verify=<path>): no system CAs besides.
    assert len(context.get_ca_certs()) == 2


def test_the_metric_logger_logs_over_tls_with_the_cert_path(
    pki, hub_api, mlflow_service, tmp_path, monkeypatch
):
    env = session_environ(pki, hub_api, mlflow_service, tmp_path / "certs")
    use_environ(monkeypatch, env)
    logger = tracking.MetricLogger(
        "run1", spool_dir=tmp_path / "spool", flush_interval=0.05, retry_interval=60
    )
    logger.log("loss", 0.5, step=1)
    assert logger.close(timeout=20), "the metric was spooled, not sent"
    (method, path, headers, body), *_ = mlflow_service.requests
    assert (method, path) == ("POST", "/services/mlflow/api/2.0/mlflow/runs/log-batch")
    assert headers["Authorization"] == "Bearer server-t0ken"
    assert json.loads(body)["metrics"][0]["value"] == 0.5
    # Another CA bundle: the service is not trusted, the metric waits in the spool.
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", pki.other_ca)
    logger = tracking.MetricLogger(
        "run2", spool_dir=tmp_path / "spool", flush_interval=0.05, retry_interval=60
    )
    logger.log("loss", 0.25, step=1)
    assert not logger.close(timeout=20)
    assert (tmp_path / "spool" / "run2.jsonl").exists() and len(mlflow_service.requests) == 1


def test_readable_experiments_are_asked_over_tls(pki, hub_api, mlflow_service, tmp_path, monkeypatch):
    use_environ(monkeypatch, session_environ(pki, hub_api, mlflow_service, tmp_path / "certs"))
    assert tracking.readable_experiments(["1", "2"], "bob") == {"1"}
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")  # the system's CAs: not hub-ca
    with pytest.raises(RuntimeError, match="CERTIFICATE_VERIFY_FAILED"):
        tracking.readable_experiments(["1"], "bob")


# --- a batch job's own CA --------------------------------------------------------------------


def test_a_batch_job_keeps_its_own_ca_when_the_server_goes(
    pki, hub_api, mlflow_service, tmp_path, monkeypatch
):
    monkeypatch.setattr(batch, "JOBS_DIR", tmp_path / "jobs")
    folder = tmp_path / "certs" / "default"
    environ = session_environ(pki, hub_api, mlflow_service, folder)
    sub = batch.Submission(tmp_path / "nb.ipynb", {}, JobRequest("cpu", "cpu", 1, 1024, 10))
    env = batch.job_environment(sub, environ)

    assert env["MLFLOW_TRACKING_TOKEN"] == "job-t0ken"
    assert "JUPYTERHUB_API_TOKEN" not in env
    ca = Path(env["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    assert ca == tmp_path / "jobs" / f"ca-{sub.spec_id}.crt"
    assert ca.read_bytes() == Path(pki.bundle).read_bytes()  # the public bundle, no key
    assert env["JUPYTERHUB_SSL_CLIENT_CA"] == str(ca)
    # The job is not the server: it gets neither the server's key nor its certificate.
    assert "JUPYTERHUB_SSL_KEYFILE" not in env and "JUPYTERHUB_SSL_CERTFILE" not in env
    assert not any(str(folder) in value for value in env.values()), env

    shutil.rmtree(folder)  # the server stopped (werkbank_spawner.server_certs)
    r = httpx.get(
        f"{env['MLFLOW_TRACKING_URI']}/werkbank/readable-experiments",
        params={"viewer": "bob", "experiment_id": "1"},
        verify=mlflow_verify(env),
        timeout=10,
    )
    assert r.status_code == 200 and r.json() == {"experiment_ids": ["1"]}


def test_a_session_without_a_cert_path_gives_the_job_none(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "JOBS_DIR", tmp_path / "jobs")
    sub = batch.Submission(tmp_path / "nb.ipynb", {}, JobRequest("cpu", "cpu", 1, 1024, 10))
    env = batch.job_environment(sub, {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "PATH": "/bin"})
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "PATH": "/bin"}
    assert not list((tmp_path / "jobs").glob("ca-*"))


# --- the session's MLflow UI -------------------------------------------------------------------


def test_the_ui_of_an_internal_https_service_is_proxied_and_checked(pki):
    from werkbank_lab.mlflow_ui import mlflow_route

    environ = {"MLFLOW_TRACKING_SERVER_CERT_PATH": pki.bundle, "MLFLOW_TRACKING_TOKEN": "t0ken"}
    route = mlflow_route("https://127.0.0.1:8443/services/mlflow", "", environ)
    # A browser cannot be sent to an address checked against the hub's internal CA: the session
    # proxies it, over https, trusting that bundle alone.
    assert route.kind == "proxy", route
    target = route.target
    assert (target.scheme, target.host, target.port, target.prefix) == (
        "https",
        "127.0.0.1",
        8443,
        "/services/mlflow",
    )
    assert target.ca_file == pki.bundle and target.origin == "https://127.0.0.1:8443"
    assert target.authorization == "Bearer t0ken"
    assert mlflow_route("https://mlflow.internal/", "", environ).target.port == 443
    # An https server browsers trust (no bundle of its own): redirected, as before.
    assert mlflow_route("https://mlflow.example.org", "", {}).url == "https://mlflow.example.org/"
    # The admin's choice of UI address wins.
    assert (
        mlflow_route("https://127.0.0.1:8443/services/mlflow", "/services/mlflow/", environ).kind
        == "redirect"
    )
    # http never takes a CA bundle.
    assert mlflow_route("http://127.0.0.1:5000", "", environ).target.ca_file == ""
