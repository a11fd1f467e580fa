"""TLS where users connect (``hub.tls_cert_file``, ``hub.tls_key_file``): a hub of its own on free
ports whose configurable-http-proxy serves ``https://127.0.0.1:<port>`` with a certificate made for
the test by a CA of the test's own (tests/certificates.py), and a user's server as a real Slurm job
(the ``slurm`` fixture's single-node cluster) behind it.

Shown end to end: a login over https, the certificate checked against the test's CA (and refused
by a client that trusts only the system's CAs); the hub's cookies marked Secure (the hub sees the
requests as https behind the proxy); plain http to the public port gets no answer; the hub's REST
API answers through the https proxy; a user's server started as a Slurm job answers through it,
with the user's token and with the browser login (the server's own OAuth round trip with the hub,
over https), and stops. MLflow and the workshops are off: they are not what is tested here.
"""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from tests.certificates import make_certificates
from tests.cluster import Hub, make_hub
from tests.mlflow_server import free_port, free_port_pair

pytestmark = pytest.mark.integration

USER = "bob"
PASSWORD = "werkbank-demo"  # the test site's shared password


class HttpsHub:
    """The hub, reached over https at ``public`` (its proxy) and, for the test's own REST calls
    through :class:`Hub`, at its API address."""

    def __init__(self, hub: Hub, public: str, ca: ssl.SSLContext):
        self.hub, self.public, self.ca = hub, public, ca
        self.jobs: list[str] = []

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.public, verify=self.ca, timeout=30, **kw)


@pytest.fixture(scope="module")
def https_hub(slurm, tmp_path_factory):
    port, api_port = free_port_pair(), free_port_pair()
    workdir = tmp_path_factory.mktemp("https-hub")
    hub = make_hub(
        workdir, port=port, api_port=api_port, spawner="slurm", mlflow=False, mlflow_port=free_port()
    )
    certs = make_certificates(tmp_path_factory.mktemp("https-hub-tls"))

    def tls_at_the_proxy(site):
        site["hub"].update(
            bind_url=f"https://127.0.0.1:{port}",
            tls_cert_file=str(certs.cert_file),
            tls_key_file=str(certs.key_file),
        )
        site["workshops"] = {"enabled": False}

    hub.edit_site(tls_at_the_proxy)
    # The test's REST calls and the start-up wait go to the hub API itself (plain http on
    # loopback, as jobs reach it); everything a user does goes through the https proxy.
    hub.url = f"http://127.0.0.1:{api_port}"
    state = HttpsHub(hub, f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(certs.ca_file)))
    hub.start()
    yield state
    hub.shut_down(USER, state.jobs)


def test_login_over_https_with_the_certificate_checked(https_hub):
    with https_hub.client(follow_redirects=True) as client:
        r = client.get("/hub/login")
        assert r.status_code == 200, r.text[:300]
        r = client.post(
            "/hub/login",
            data={"username": USER, "password": PASSWORD, "_xsrf": client.cookies.get("_xsrf", "")},
        )
        assert r.status_code == 200, r.text[:500]
        assert str(r.url).startswith(f"{https_hub.public}/hub/"), r.url  # every redirect stayed https
        login_cookie = next(
            v
            for k, v in r.history[0].headers.multi_items()
            if k == "set-cookie" and "jupyterhub-hub-login" in v
        )
        # The hub saw the request as https (the proxy's X-Forwarded-Proto): its cookie is Secure.
        assert "secure" in login_cookie.lower().split("; "), login_cookie
    # A client that trusts only the system's CAs refuses the test CA's certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_hub.public}/hub/login", timeout=10)


def test_plain_http_to_the_public_port_gets_no_answer(https_hub):
    plain = https_hub.public.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/hub/health", timeout=10)


def test_the_api_and_a_slurm_server_answer_through_the_https_proxy(https_hub, report_figure):
    hub = https_hub.hub
    token = hub.token_for(USER)
    headers = {"Authorization": f"token {token}"}
    with https_hub.client(headers=headers) as client:
        r = client.get("/hub/api/user")
        assert r.status_code == 200 and r.json()["name"] == USER, r.text

        started = time.monotonic()
        r = client.post(f"/hub/api/users/{USER}/server", json={"profile": "cpu"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(USER, timeout=120)
        report_figure("proxy TLS: spawn until ready (cpu profile)", f"{time.monotonic() - started:.1f} s")
        https_hub.jobs.append(hub.job_id(USER))

        r = client.get(f"/user/{USER}/api/status")
        assert r.status_code == 200 and "started" in r.json(), r.text

    # The browser way: the server's own OAuth round trip with the hub, all over https.
    with https_hub.client(follow_redirects=True) as browser:
        browser.get("/hub/login")
        browser.post(
            "/hub/login",
            data={"username": USER, "password": PASSWORD, "_xsrf": browser.cookies.get("_xsrf", "")},
        )
        r = browser.get(f"/user/{USER}/api/status")
        assert r.status_code == 200 and "started" in r.json(), r.text
        assert all(str(step.url).startswith(https_hub.public) for step in [*r.history, r]), [
            str(step.url) for step in r.history
        ]

    hub.stop_server(USER)
    with https_hub.client(headers=headers) as client:
        r = client.get(f"/hub/api/users/{USER}")
        assert r.status_code == 200 and "" not in r.json()["servers"], r.text
