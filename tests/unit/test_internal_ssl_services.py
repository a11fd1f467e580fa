"""``hub.internal_ssl`` with the MLflow proxy and the workshops, without a hub: the site rules, the
services the site implies, the certificate the hub gives the proxy's account, the TLS the
services serve with, the trainer console's hub API calls, and the jobs' MLflow environment
(tests/integration/test_internal_ssl.py runs it all with a real hub and job)."""

from __future__ import annotations

import asyncio
import datetime
import os
import pwd
import ssl
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from certipy import Certipy
from cryptography import x509
from traitlets.config import Config

from tests.tls_server import TlsServer
from werkbank_spawner.server_certs import ServiceCertPath, ServiceCerts, fix_service_wait, serving_tls
from werkbank_spawner.site import SiteConfigError, apply, validate
from werkbank_spawner.spawner import WerkbankSlurmSpawner, mlflow_env
from werkbank_spawner.workshop.accounts import WorkshopError
from werkbank_spawner.workshop.hub import HubAPI, api_url, hub_tls

SERVICE_ACCOUNT = "werkbank-mlflow"


def site(internal_ssl: bool = True, **mlflow) -> dict:
    return {
        "hub": {"internal_ssl": internal_ssl, "hub_bind_url": "http://10.1.2.3:8081", "data_dir": "state"},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {"mlflow": {"manage": True, "proxy": True, **mlflow}},
        "workshops": {"enabled": True, "port": 8090},
    }


def service(c: Config, name: str) -> dict:
    (found,) = [s for s in c.JupyterHub.services if s["name"] == name]
    return found


# --- the site ------------------------------------------------------------------------------


def test_the_mlflow_proxy_and_workshops_run_with_internal_ssl(tmp_path):
    data = site(public_url="https://hub.cluster:5001/services/mlflow")
    c = Config()
    apply(c, validate(data), config_dir=tmp_path, site_file=tmp_path / "site.yaml")
    proxy = service(c, "mlflow")
    assert proxy["url"] == "https://10.1.2.3:5001"
    env = proxy["environment"]
    paths = {
        k: env[k] for k in ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA")
    }
    assert [p.key for p in paths.values()] == ["keyfile", "certfile", "cafile"]
    (certs,) = {p.certs for p in paths.values() if isinstance(p, ServiceCertPath)}
    # A folder of the proxy's own beside the hub's (private) data_dir, for its account.
    assert certs.folder == str(tmp_path / "service-certs" / "mlflow")
    assert certs.account == proxy.get("user", "") == (SERVICE_ACCOUNT if os.geteuid() == 0 else "")
    # The names the hub's proxy, the hub and jobs reach it at; nothing else.
    assert certs.alt_names == (
        "DNS:localhost",
        "IP:127.0.0.1",
        "IP:0:0:0:0:0:0:0:1",
        "IP:10.1.2.3",
        "DNS:hub.cluster",
    )
    # The MLflow server itself is unchanged: plain http on loopback, behind the proxy.
    assert "JUPYTERHUB_SSL_KEYFILE" not in service(c, "mlflow-server")["environment"]
    # The trainer console serves TLS with JupyterHub's own certificate for it.
    workshop = service(c, "werkbank-workshop")
    assert workshop["url"] == "https://127.0.0.1:8090"
    assert "JUPYTERHUB_SSL_KEYFILE" not in workshop.get("environment", {})
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "https://hub.cluster:5001/services/mlflow"
    # Applying the site again gives the same services (values that compare equal).
    again = Config()
    apply(again, validate(data), config_dir=tmp_path, site_file=tmp_path / "site.yaml")
    assert again.JupyterHub.services == c.JupyterHub.services


def test_the_hub_waits_for_tls_services_with_a_client_context(tmp_path):
    """JupyterHub hands start_service its server's TLS context: the fix passes None instead (for
    which JupyterHub makes its client context) and leaves any other context alone."""
    seen = []

    class App:
        async def start_service(self, service_name, service, ssl_context=None):
            seen.append(ssl_context)
            return True

    fix_service_wait(App)
    fix_service_wait(App)  # once only
    server, client = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for context in (server, client, None):
        assert asyncio.run(App().start_service("mlflow", object(), context)) is True
    assert seen == [None, client, None]
    # apply() fixes JupyterHub's own class with internal_ssl, and turns off its periodic check.
    from jupyterhub.app import JupyterHub

    c = Config()
    apply(c, validate(site()), config_dir=tmp_path)
    assert JupyterHub.start_service.werkbank_fixed
    assert c.JupyterHub.service_check_interval == 0
    assert "service_check_interval" not in apply_config(site(internal_ssl=False), tmp_path).JupyterHub


def apply_config(data: dict, tmp_path: Path) -> Config:
    c = Config()
    apply(c, validate(data), config_dir=tmp_path)
    return c


def test_without_internal_ssl_the_services_speak_http(tmp_path):
    c = Config()
    apply(c, validate(site(internal_ssl=False)), config_dir=tmp_path, site_file=tmp_path / "site.yaml")
    proxy = service(c, "mlflow")
    assert proxy["url"] == "http://10.1.2.3:5001"
    assert not any(k.startswith("JUPYTERHUB_SSL_") for k in proxy["environment"])
    assert service(c, "werkbank-workshop")["url"] == "http://127.0.0.1:8090"
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://10.1.2.3:5001/services/mlflow"


def test_jobs_reach_the_proxy_at_its_https_address_without_a_public_url(tmp_path):
    c = Config()
    apply(c, validate(site()), config_dir=tmp_path)
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "https://10.1.2.3:5001/services/mlflow"


def test_an_http_public_url_is_refused_with_internal_ssl():
    with pytest.raises(SiteConfigError) as info:
        validate(site(public_url="http://hub.cluster:5001/services/mlflow"))
    assert info.value.path == "tracking.mlflow.public_url"
    assert "https://" in info.value.message
    validate(site(internal_ssl=False, public_url="http://hub.cluster:5001/services/mlflow"))


# --- the certificate the hub gives the proxy's account --------------------------------------


@pytest.fixture
def store(tmp_path):
    """JupyterHub's certificates' folder as internal_ssl leaves it, and the service spawner as it
    is when JupyterHub starts the service: its own certificate (notebooks-ca) just made."""
    root = tmp_path / "internal-ssl"
    certipy = Certipy(store_dir=str(root))
    for ca in ("hub-ca", "notebooks-ca", "other-ca"):
        certipy.create_ca(ca)
    bundle = root / "notebooks-ca_trust.crt"
    bundle.write_text(Path(certipy.store.get_record("hub-ca")["files"]["cert"]).read_text())
    pair = certipy.create_signed_pair("user-werkbank-mlflow", "notebooks-ca", alt_names=["DNS:localhost"])

    def spawner():
        paths = {"keyfile": pair["files"]["key"], "certfile": pair["files"]["cert"], "cafile": str(bundle)}
        return SimpleNamespace(cert_paths=dict(paths), internal_certs_location=str(root))

    return SimpleNamespace(root=root, certipy=certipy, bundle=bundle, spawner=spawner)


def certs_for(tmp_path: Path, account: str = SERVICE_ACCOUNT) -> ServiceCerts:
    return ServiceCerts(
        service="mlflow",
        folder=str(tmp_path / "service-certs" / "mlflow"),
        account=account,
        alt_names=("DNS:localhost", "IP:127.0.0.1", "DNS:hub.cluster"),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another account: needs root")
def test_the_proxy_gets_a_key_of_its_own_that_only_its_account_reads(tmp_path, store):
    certs = certs_for(tmp_path)
    spawner = store.spawner()
    env = {name: value(spawner) for name, value in certs.environment().items()}
    folder = Path(certs.folder)
    assert env == {
        "JUPYTERHUB_SSL_KEYFILE": str(folder / "server.key"),
        "JUPYTERHUB_SSL_CERTFILE": str(folder / "server.crt"),
        "JUPYTERHUB_SSL_CLIENT_CA": str(folder / "ca.crt"),
    }
    account = pwd.getpwnam(SERVICE_ACCOUNT)
    info = folder.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid)
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o755 and folder.parent.stat().st_uid == 0
    for name in ("server.key", "server.crt", "ca.crt"):
        info = (folder / name).lstat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, name
        assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid), name
    # Signed by the hub's CA for the names given, not JupyterHub's notebooks-ca pair.
    cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    hub_ca = x509.load_pem_x509_certificate(
        Path(store.certipy.store.get_record("hub-ca")["files"]["cert"]).read_bytes()
    )
    assert cert.issuer == hub_ca.subject
    cert.verify_directly_issued_by(hub_ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.cluster" in names.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    # The key matches the certificate, and the CA bundle is JupyterHub's for services.
    ssl.create_default_context().load_cert_chain(folder / "server.crt", folder / "server.key")
    assert (folder / "ca.crt").read_text() == store.bundle.read_text()
    # The hub keeps no copy of the new key.
    assert not (store.root / "service-mlflow" / "service-mlflow.key").exists()
    # JupyterHub asks once per variable: one certificate per start of the service ...
    first = (folder / "server.crt").read_text()
    assert certs.environment()["JUPYTERHUB_SSL_CERTFILE"](spawner) == str(folder / "server.crt")
    assert (folder / "server.crt").read_text() == first
    # ... and a new one at the next start.
    certs.environment()["JUPYTERHUB_SSL_KEYFILE"](store.spawner())
    assert (folder / "server.crt").read_text() != first


def test_the_hub_writes_no_file_through_a_link(tmp_path, store):
    certs = certs_for(tmp_path, account="")
    folder = Path(certs.folder)
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    (folder / "server.key").symlink_to(elsewhere)
    certs.install(store.spawner())
    assert elsewhere.read_text() == "untouched"
    assert not (folder / "server.key").is_symlink()
    # A folder that is a link is refused, not followed.
    other = ServiceCerts("other", str(tmp_path / "service-certs" / "other"), "", certs.alt_names)
    (tmp_path / "target").mkdir()
    Path(other.folder).symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        other.install(store.spawner())
    assert os.listdir(tmp_path / "target") == []


def test_services_serve_tls_only_with_their_certificate(tmp_path, store):
    assert serving_tls("http", {}) is None
    with pytest.raises(SystemExit):
        serving_tls("https", {})
    certs = certs_for(tmp_path, account="")
    paths = certs.install(store.spawner())
    context = serving_tls(
        "https", {"JUPYTERHUB_SSL_KEYFILE": paths["keyfile"], "JUPYTERHUB_SSL_CERTFILE": paths["certfile"]}
    )
    # MLflow's clients authenticate with tokens: no client certificate asked for.
    assert context.verify_mode == ssl.CERT_NONE


# --- the trainer console's hub API calls -----------------------------------------------------


def test_the_console_calls_the_hub_api_over_tls_and_checks_it(tmp_path, store):
    site_ = validate(site())
    assert api_url(site_) == "https://10.1.2.3:8081/hub/api"
    assert api_url(validate(site(internal_ssl=False))) == "http://10.1.2.3:8081/hub/api"
    hub = store.certipy.create_signed_pair("hub-internal", "hub-ca", alt_names=["IP:127.0.0.1"])["files"]
    hub_ca = store.certipy.store.get_record("hub-ca")["files"]["cert"]
    api = TlsServer(hub, {"/hub/api/users/alice": {"name": "alice"}}, hub_ca)
    try:
        # As the managed service: JupyterHub's certificate for it, from the environment.
        client = store.certipy.create_signed_pair("user-service", "hub-ca", alt_names=["DNS:x"])["files"]
        env = {
            "JUPYTERHUB_SSL_KEYFILE": client["key"],
            "JUPYTERHUB_SSL_CERTFILE": client["cert"],
            "JUPYTERHUB_SSL_CLIENT_CA": hub_ca,
        }
        answer = HubAPI(api.url + "/hub/api", "t0ken", tls=hub_tls(site_, tmp_path, env)).user("alice")
        assert answer == {"name": "alice"} and api.requests[-1][:2] == ("GET", "/hub/api/users/alice")
        # On the command line (root): the hub's own, from its certificates' folder.
        state = tmp_path / "state"
        (state / "internal-ssl" / "hub-internal").mkdir(parents=True)
        for kind, suffix in (("key", "key"), ("cert", "crt")):
            target = state / "internal-ssl" / "hub-internal" / f"hub-internal.{suffix}"
            target.write_text(Path(hub[kind]).read_text())
        (state / "internal-ssl" / "hub-ca_trust.crt").write_text(Path(hub_ca).read_text())
        assert (
            HubAPI(api.url + "/hub/api", "t0ken", tls=hub_tls(site_, state, {})).user("alice")["name"]
            == "alice"
        )
        # A hub whose certificate the internal CA did not sign is not talked to.
        other_ca = store.certipy.store.get_record("other-ca")["files"]["cert"]
        with pytest.raises(WorkshopError, match="did not answer"):
            HubAPI(
                api.url + "/hub/api",
                "t0ken",
                tls=hub_tls(site_, tmp_path, {**env, "JUPYTERHUB_SSL_CLIENT_CA": other_ca}),
            ).user("alice")
    finally:
        api.close()
    with pytest.raises(WorkshopError, match="TLS certificates"):
        hub_tls(site_, tmp_path / "nowhere", {})
    assert hub_tls(validate(site(internal_ssl=False)), tmp_path, {}) is None


# --- the jobs' MLflow environment -------------------------------------------------------------


@pytest.mark.parametrize(
    ("internal_ssl", "expected"), [(True, "/home/alice/.werkbank/certs/default/ca.crt"), (False, None)]
)
def test_jobs_check_the_proxy_with_the_hubs_ca(internal_ssl, expected):
    spawner = WerkbankSlurmSpawner(
        internal_ssl=internal_ssl,
        mlflow_tracking_uri="https://10.1.2.3:5001/services/mlflow",
        mlflow_send_token=True,
    )
    env = {
        "JUPYTERHUB_API_TOKEN": "t0ken",
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SSL_CLIENT_CA": "/home/alice/.werkbank/certs/default/ca.crt",
    }
    assert mlflow_env(spawner, env).get("MLFLOW_TRACKING_SERVER_CERT_PATH") == expected
