"""``hub.internal_ssl``: a hub of its own on free ports with JupyterHub's internal TLS, and a
user's server as a real Slurm job (the ``slurm`` fixture's single-node cluster).

Shown end to end: the server starts (its job reports its port to the https hub API with the
server's certificate) and answers through the proxy; it speaks TLS only, asks for a client
certificate of the hub's CAs, and its certificate names the node's NodeAddr, NodeName and
NodeHostname but not localhost; the job's hub API URL is https and the hub API refuses plain
http; the key is the user's, 0600 in a 0700 folder in their home, and the hub keeps no copy;
the job's end report reaches the hub over TLS; after the stop the certificate folder is gone.
The idle culler runs with TLS too and does not fail. MLflow and the workshops are off (the
site refuses them with internal_ssl).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import socket
import ssl
import stat
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cluster import Hub, job_field, make_hub, run
from tests.mlflow_server import free_port, free_port_pair
from tests.services import wait_for

pytestmark = pytest.mark.integration

USER = "alice"
#: Ports other tests use, whatever the operating system hands out.


class TlsHub:
    def __init__(self, hub: Hub, certs: Path, api_port: int):
        self.hub, self.certs, self.api_port = hub, certs, api_port
        self.jobs: list[str] = []

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
    port, api_port = free_port_pair(), free_port_pair()
    hub = make_hub(
        tmp_path_factory.mktemp("tls-hub"),
        port=port,
        api_port=api_port,
        spawner="slurm",
        mlflow=False,
        mlflow_port=free_port(),
    )
    site_file = hub.workdir / "site.yaml"
    site = yaml.safe_load(site_file.read_text())
    site["hub"]["internal_ssl"] = True
    site["workshops"] = {"enabled": False}
    # The culler asks the hub API at its start and every 10 s: over TLS, with the hub's certificate.
    site["culling"] = {"enabled": True, "timeout": 3600, "every": 10}
    site_file.write_text(yaml.safe_dump(site))
    state = TlsHub(hub, Path(site["hub"]["data_dir"]) / "internal-ssl", api_port)
    hub.start()
    yield state
    try:
        if hub.process and hub.process.proc.poll() is None and hub.server(USER) is not None:
            hub.stop_server(USER)
    finally:
        hub.stop()
        # Only this module's jobs: other hubs may have servers on the shared test cluster.
        for job in state.jobs:
            run("scancel", job, check=False)


def job_environ(job_id: str) -> dict[str, str]:
    """The environment of jupyterhub-singleuser in the job (read from /proc as root)."""
    for line in run("scontrol", "listpids", job_id).stdout.splitlines()[1:]:
        pid = line.split()[0]
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"jupyterhub-singleuser" in cmdline:
            return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    raise AssertionError(f"no jupyterhub-singleuser process in job {job_id}")


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


def test_stopping_the_server_removes_its_certificate(tls):
    hub = tls.hub
    folder = Path(pwd.getpwnam(USER).pw_dir) / ".werkbank" / "certs" / "default"
    assert (folder / "server.key").exists()
    hub.stop_server(USER)
    assert not folder.exists(), sorted(os.listdir(folder))


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
