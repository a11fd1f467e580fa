"""TLS where users connect: ``hub.tls_cert_file`` and ``hub.tls_key_file`` (configurable-http-proxy
serves ``hub.bind_url`` over TLS), and ``hub.public_url`` (TLS ends in front of the hub).

The same keys on a running hub, its proxy speaking TLS with a certificate made for the test, are
tests/integration/test_proxy_tls.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from jupyterhub.app import JupyterHub
from traitlets.config import Config

from tests.certificates import Certificates, make_certificates
from werkbank_spawner.site import SiteConfigError, apply, validate
from werkbank_spawner.site.cli import main

HTTPS = "https://hub.example.org:8443"


def site(tmp_path: Path, auth: dict | None = None, **hub: str) -> dict:
    """A valid site with ``hub`` keys; no MLflow and no courses, so that applying it needs no
    service account and reads no course store."""
    return {
        "hub": {"data_dir": str(tmp_path / "hub"), **hub},
        "auth": auth or {"type": "pam"},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {"mlflow": {"manage": False, "proxy": False}},
        "workshops": {"enabled": False},
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def with_tls(tmp_path: Path, certs: Certificates, bind_url: str = HTTPS, **hub: str) -> dict:
    return site(
        tmp_path,
        bind_url=bind_url,
        tls_cert_file=str(certs.cert_file),
        tls_key_file=str(certs.key_file),
        **hub,
    )


def applied(data: dict) -> Config:
    c = Config()
    apply(c, validate(data), config_dir="/etc/werkbank")
    return c


def rule_error(data: dict) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as info:
        validate(data)
    return info.value


def start_error(data: dict) -> SiteConfigError:
    """What stops the hub at start (and ``werkbank-site check``): the files, read by apply."""
    with pytest.raises(SiteConfigError) as info:
        applied(data)
    return info.value


# --- the rules -----------------------------------------------------------------------------------


def test_the_proxy_gets_the_certificate_and_its_key(tmp_path, certs):
    c = applied(with_tls(tmp_path, certs))
    assert c.JupyterHub.bind_url == HTTPS
    assert c.JupyterHub.ssl_cert == str(certs.cert_file)
    assert c.JupyterHub.ssl_key == str(certs.key_file)
    # The proxy's own API stays on loopback, plain HTTP (only the hub talks to it).
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8444"
    # JupyterHub keeps the https bind_url, and hands the files to the proxy it starts.
    app = JupyterHub(config=c)
    assert (app.bind_url, app.ssl_cert, app.ssl_key) == (HTTPS, str(certs.cert_file), str(certs.key_file))


def test_without_the_keys_jupyterhub_would_quietly_serve_plain_http():
    """Why an https bind_url without the files is refused: JupyterHub itself rewrites it."""
    c = Config()
    c.JupyterHub.bind_url = HTTPS
    assert JupyterHub(config=c).bind_url == "http://hub.example.org:8443"


def test_no_tls_keys_no_tls(tmp_path):
    c = applied(site(tmp_path, bind_url="http://127.0.0.1:8000"))
    assert "ssl_cert" not in c.JupyterHub and "ssl_key" not in c.JupyterHub
    assert "public_url" not in c.JupyterHub


@pytest.mark.parametrize(
    ("given", "missing"), [("tls_cert_file", "tls_key_file"), ("tls_key_file", "tls_cert_file")]
)
def test_certificate_and_key_come_together(tmp_path, given, missing):
    error = rule_error(site(tmp_path, bind_url=HTTPS, **{given: "/etc/werkbank/tls/x.pem"}))
    assert error.path == f"hub.{missing}"
    assert f"required with hub.{given}" in error.message


@pytest.mark.parametrize("key", ["tls_cert_file", "tls_key_file"])
def test_tls_files_are_absolute_paths(tmp_path, key):
    files = {"tls_cert_file": "/etc/werkbank/tls/hub.crt", "tls_key_file": "/etc/werkbank/tls/hub.key"}
    files[key] = "tls/hub.pem"
    error = rule_error(site(tmp_path, bind_url=HTTPS, **files))
    assert error.path == f"hub.{key}"
    assert "absolute path" in error.message


def test_tls_files_need_an_https_bind_url(tmp_path, certs):
    error = rule_error(with_tls(tmp_path, certs, bind_url="http://0.0.0.0:8000"))
    assert error.path == "hub.bind_url"
    assert "must be https://" in error.message


def test_an_https_bind_url_needs_the_files_or_a_front_end(tmp_path):
    error = rule_error(site(tmp_path, bind_url="https://0.0.0.0:443"))
    assert error.path == "hub.bind_url"
    assert "hub.tls_cert_file and hub.tls_key_file" in error.message
    assert "hub.public_url" in error.message  # the way for TLS in front of the hub


# --- the files, read at start --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660], ids=oct)
def test_a_key_others_may_read_stops_the_hub(tmp_path, certs, mode):
    key = tmp_path / "hub.key"
    key.write_bytes(certs.key_file.read_bytes())
    key.chmod(mode)
    data = with_tls(tmp_path, certs)
    data["hub"]["tls_key_file"] = str(key)
    error = start_error(data)
    assert error.path == "hub.tls_key_file"
    assert f"chmod 600 {key}" in error.message


def test_a_read_only_key_is_fine(tmp_path, certs):
    key = tmp_path / "hub.key"
    key.write_bytes(certs.key_file.read_bytes())
    key.chmod(0o400)
    data = with_tls(tmp_path, certs)
    data["hub"]["tls_key_file"] = str(key)
    assert applied(data).JupyterHub.ssl_key == str(key)


@pytest.mark.parametrize("key", ["tls_cert_file", "tls_key_file"])
def test_a_missing_file_stops_the_hub(tmp_path, certs, key):
    data = with_tls(tmp_path, certs)
    data["hub"][key] = str(tmp_path / "nowhere.pem")
    error = start_error(data)
    assert error.path == f"hub.{key}"
    assert "cannot read" in error.message and "No such file" in error.message


def test_a_certificate_file_without_a_certificate_stops_the_hub(tmp_path, certs):
    data = with_tls(tmp_path, certs)
    data["hub"]["tls_cert_file"] = str(certs.key_file)  # the two swapped by mistake
    error = start_error(data)
    assert error.path == "hub.tls_cert_file"
    assert "no PEM certificate" in error.message


def test_the_key_of_another_certificate_stops_the_hub(tmp_path, certs):
    other = make_certificates(tmp_path / "other")
    data = with_tls(tmp_path, certs)
    data["hub"]["tls_key_file"] = str(other.key_file)
    error = start_error(data)
    assert error.path == "hub.tls_key_file"
    assert "is not the unencrypted private key of the certificate" in error.message


def test_an_encrypted_key_stops_the_hub_without_asking_for_a_passphrase(tmp_path, certs):
    """configurable-http-proxy cannot decrypt a key; the check must not wait on a prompt."""
    key = serialization.load_pem_private_key(certs.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.touch(mode=0o600)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    data = with_tls(tmp_path, certs)
    data["hub"]["tls_key_file"] = str(encrypted)
    error = start_error(data)
    assert error.path == "hub.tls_key_file"
    assert "unencrypted" in error.message


def test_werkbank_site_check_reports_a_readable_key(tmp_path, certs, capsys):
    import yaml

    key = tmp_path / "hub.key"
    key.write_bytes(certs.key_file.read_bytes())
    key.chmod(0o644)
    data = with_tls(tmp_path, certs)
    data["hub"]["tls_key_file"] = str(key)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err.startswith("FATAL: hub.tls_key_file: ")
    key.chmod(0o600)
    assert main(["check", str(path)]) == 0


# --- TLS in front of the hub: hub.public_url -----------------------------------------------------


def test_a_front_end_ending_tls_is_the_public_url(tmp_path):
    data = site(tmp_path, bind_url="http://127.0.0.1:8000/jhub/", public_url="https://hub.example.org")
    hub = validate(data).hub
    assert hub.users_url == "https://hub.example.org/jhub"
    c = applied(data)
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000/jhub/"
    assert c.JupyterHub.public_url == "https://hub.example.org/jhub/"
    assert "ssl_cert" not in c.JupyterHub
    # JupyterHub accepts it as it is (its validator would add a missing base URL with a warning).
    assert JupyterHub(config=c).public_url == "https://hub.example.org/jhub/"


def test_the_public_url_may_repeat_bind_urls_path(tmp_path):
    data = site(tmp_path, bind_url="http://127.0.0.1:8000/jhub/", public_url="https://hub.example.org/jhub/")
    assert applied(data).JupyterHub.public_url == "https://hub.example.org/jhub/"


@pytest.mark.parametrize(
    ("public_url", "words"),
    [
        ("http://hub.example.org", "an https:// URL"),
        ("https://hub.example.org/other/", "bind_url's path /jhub"),
        ("https://hub.example.org/?x=1", "bind_url's path"),
        ("hub.example.org", "expected an http:// or https:// URL"),
    ],
)
def test_the_public_url_is_checked(tmp_path, public_url, words):
    error = rule_error(site(tmp_path, bind_url="http://127.0.0.1:8000/jhub/", public_url=public_url))
    assert error.path == "hub.public_url"
    assert words in error.message


def test_the_public_url_is_not_set_beside_subdomain_host(tmp_path):
    data = site(
        tmp_path,
        bind_url="http://127.0.0.1:8000",
        public_url="https://hub.example.org",
        subdomain_host="https://hub.example.org",
    )
    assert rule_error(data).path == "hub.public_url"


def test_tls_at_the_proxy_and_a_public_url_together(tmp_path, certs):
    """A load balancer that passes TLS through to the proxy under another name."""
    c = applied(with_tls(tmp_path, certs, public_url="https://hub.example.org:8443"))
    assert c.JupyterHub.ssl_cert == str(certs.cert_file)
    assert c.JupyterHub.public_url == "https://hub.example.org:8443/"


@pytest.mark.parametrize(
    ("hub", "users_url"),
    [
        ({"bind_url": "http://127.0.0.1:8000/"}, "http://127.0.0.1:8000"),
        (
            {"bind_url": "http://0.0.0.0:8000/jhub/", "subdomain_host": "https://hub.example.org"},
            "https://hub.example.org/jhub",
        ),
        (
            {"bind_url": "http://127.0.0.1:8000", "public_url": "https://hub.example.org/"},
            "https://hub.example.org",
        ),
    ],
)
def test_users_url_is_where_browsers_reach_the_hub(tmp_path, hub, users_url):
    assert validate(site(tmp_path, **hub)).hub.users_url == users_url


def test_the_oauth_callback_follows_the_public_url(tmp_path):
    oauth = {
        "client_id": "werkbank",
        "client_secret": "s3cret",
        "authorize_url": "https://idp.example.org/auth",
        "token_url": "https://idp.example.org/token",
        "userdata_url": "https://idp.example.org/userinfo",
    }
    behind = site(
        tmp_path,
        {"type": "oauth", "oauth": oauth},
        bind_url="http://127.0.0.1:8000/jhub/",
        public_url="https://hub.example.org",
    )
    callback = applied(behind).GenericOAuthenticator.oauth_callback_url
    assert callback == "https://hub.example.org/jhub/hub/oauth_callback"
    # An explicit callback_url wins; without public_url the request decides (nothing set).
    behind["auth"]["oauth"]["callback_url"] = "https://login.example.org/hub/oauth_callback"
    assert applied(behind).GenericOAuthenticator.oauth_callback_url == behind["auth"]["oauth"]["callback_url"]
    del behind["hub"]["public_url"], behind["auth"]["oauth"]["callback_url"]
    assert "oauth_callback_url" not in applied(behind).GenericOAuthenticator
