"""``hub.internal_ssl`` without a hub: the site key (rules, apply), the server certificate's
names from sinfo, the files written as the user, and the job's reports to an https hub API
that asks for a client certificate (tests/integration/test_internal_ssl.py runs it all)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from certipy import Certipy
from tornado import web
from traitlets.config import Config

from tests.tls_server import TlsServer
from werkbank_core.policy import JobRequest
from werkbank_core.script import END_REPORT, END_REPORT_FUNCTION, PORT_REPORT, JobContext
from werkbank_spawner.server_certs import (
    CERT_WRITER,
    certs_folder,
    node_alt_names,
    partition_alt_names,
)
from werkbank_spawner.site import SiteConfigError, apply, validate
from werkbank_spawner.spawner import WerkbankSlurmSpawner


def site(**hub) -> dict:
    return {
        "hub": {"internal_ssl": True, **hub},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {"mlflow": {"manage": False, "proxy": False}},
        "workshops": {"enabled": False},
    }


# --- the site key ------------------------------------------------------------------------


def test_internal_ssl_is_off_by_default(tmp_path):
    data = site()
    del data["hub"]["internal_ssl"]
    c = Config()
    apply(c, validate(data), config_dir=tmp_path)
    assert "internal_ssl" not in c.JupyterHub  # JupyterHub's default, off
    assert "internal_certs_location" not in c.JupyterHub
    assert c.ConfigurableHTTPProxy.api_url.startswith("http://")


def test_internal_ssl_sets_jupyterhubs_traits(tmp_path):
    c = Config()
    data = site(hub_bind_url="http://10.1.2.3:8081", data_dir="state")
    data["culling"] = {"enabled": True}
    apply(c, validate(data), config_dir=tmp_path)
    assert c.JupyterHub.internal_ssl is True
    # In the hub's data_dir, not JupyterHub's default folder relative to where the hub started.
    assert c.JupyterHub.internal_certs_location == str(tmp_path / "state" / "internal-ssl")
    # The hub's certificate names the address jobs reach the hub API at.
    assert c.JupyterHub.trusted_alt_names == ["IP:10.1.2.3"]
    # The proxy's API speaks TLS too (JupyterHub's default would, our port choice must as well).
    assert c.ConfigurableHTTPProxy.api_url == "https://127.0.0.1:8001"
    (culler,) = [s for s in c.JupyterHub.services if s["name"] == "idle-culler"]
    assert culler["command"][-2:] == [
        "--ssl-enabled=true",
        f"--internal-certs-location={tmp_path / 'state' / 'internal-ssl'}",
    ]


@pytest.mark.parametrize(
    ("url", "names"),
    [("http://hub.cluster:8081", ["DNS:hub.cluster"]), ("http://0.0.0.0:8081", []), ("", [])],
)
def test_the_hubs_certificate_names_where_jobs_reach_it(tmp_path, url, names):
    c = Config()
    apply(c, validate(site(hub_bind_url=url)), config_dir=tmp_path)
    assert c.JupyterHub.trusted_alt_names == names


def test_internal_ssl_is_refused_with_the_local_spawner():
    data = site()
    data["hub"]["spawner"] = "local"
    with pytest.raises(SiteConfigError) as info:
        validate(data)
    assert info.value.path == "hub.internal_ssl"
    assert "hub.spawner: slurm" in info.value.message
    data["hub"]["spawner"] = "slurm"
    validate(data)  # the same site with the Slurm spawner is fine


def test_internal_ssl_must_be_a_boolean():
    with pytest.raises(SiteConfigError) as info:
        validate(site(internal_ssl="yes"))
    assert info.value.path == "hub.internal_ssl"


# --- the server certificate's names --------------------------------------------------------


def test_node_alt_names_lists_every_name_and_address_once():
    out = "node1|127.0.0.1|vm\nnode1|127.0.0.1|vm\ngpu-07|10.0.0.7|(null)\nv6|fd00::7|v6.cluster\n"
    assert node_alt_names(out) == [
        "DNS:node1",
        "IP:127.0.0.1",
        "DNS:vm",
        "DNS:gpu-07",
        "IP:10.0.0.7",
        "DNS:v6",
        "IP:fd00::7",
        "DNS:v6.cluster",
    ]
    assert node_alt_names("") == []


def fake_spawner(tmp_path: Path, sinfo_out: str | None, **traits) -> WerkbankSlurmSpawner:
    """A spawner whose sinfo prints ``sinfo_out`` (None: sinfo fails) and records its argv."""
    sinfo = tmp_path / "sinfo"
    body = f"cat <<'EOF'\n{sinfo_out}EOF\n" if sinfo_out is not None else "echo down >&2; exit 1\n"
    sinfo.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sinfo.argv\n{body}')
    sinfo.chmod(0o755)
    spawner = WerkbankSlurmSpawner(sinfo_cmd=[str(sinfo)], sudo_cmd=[], **traits)
    spawner.job_request = JobRequest(
        profile="gpu", partition="gpu", cpus=1, memory_mb=1024, gpus=0, walltime_min=60
    )
    return spawner


async def test_partition_alt_names_asks_sinfo_for_the_jobs_partition(tmp_path):
    spawner = fake_spawner(tmp_path, "node1|10.0.0.1|n1\n", trusted_alt_names=["DNS:hub.cluster"])
    # The nodes' names only, not the hub's (trusted_alt_names, JupyterHub's default).
    assert await partition_alt_names(spawner) == ["DNS:node1", "IP:10.0.0.1", "DNS:n1"]
    argv = (tmp_path / "sinfo.argv").read_text().split()
    assert "--partition=gpu" in argv and "--Node" in argv
    # The default: these names and not JupyterHub's localhost/127.0.0.1.
    assert spawner.ssl_alt_names is partition_alt_names
    assert spawner.ssl_alt_names_include_local is False


@pytest.mark.parametrize("out", [None, ""])
async def test_no_certificate_without_the_nodes_names(tmp_path, out):
    with pytest.raises(web.HTTPError) as info:
        await partition_alt_names(fake_spawner(tmp_path, out))
    assert info.value.status_code == 500


@pytest.mark.parametrize("name", ["../x", "a/b", ".", "..", "x" * 65, "a\nb"])
def test_certs_folder_refuses_odd_server_names(name):
    with pytest.raises(ValueError):
        certs_folder("/home/alice", name)


def test_certs_folder():
    assert certs_folder("/home/alice", "") == "/home/alice/.werkbank/certs/default"
    assert certs_folder("/home/alice", "gpu-2") == "/home/alice/.werkbank/certs/gpu-2"


# --- the files, as the user --------------------------------------------------------------


def writer(action: str, folder: Path, files: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", CERT_WRITER, action, str(folder)],
        input=json.dumps(files or {}),
        text=True,
        capture_output=True,
        check=True,
    )


FILES = {"server.key": "KEY\n", "server.crt": "CERT\n", "ca.crt": "CA\n"}


def test_the_writer_makes_private_files_and_follows_no_link(tmp_path):
    folder = tmp_path / "home" / ".werkbank" / "certs" / "default"
    folder.mkdir(parents=True, mode=0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours to change\n")
    (folder / "server.key").symlink_to(elsewhere)  # a link planted where the key goes
    writer("write", folder, FILES)
    assert elsewhere.read_text() == "not yours to change\n"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name, text in FILES.items():
        info = (folder / name).lstat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert (folder / name).read_text() == text
    writer("remove", folder)
    assert not folder.exists()
    writer("remove", folder)  # nothing there: no error


async def test_move_certs_and_the_stop_hook(tmp_path, monkeypatch):
    hub_dir = tmp_path / "hub" / "user-alice"
    hub_dir.mkdir(parents=True)
    paths = {}
    for key, name in (("keyfile", "user-alice.key"), ("certfile", "user-alice.crt"), ("cafile", "ca")):
        (hub_dir / name).write_text(f"{key}\n")
        paths[key] = str(hub_dir / name)
    home = tmp_path / "alice"
    home.mkdir()
    spawner = WerkbankSlurmSpawner(sudo_cmd=[], internal_ssl=True)
    spawner.user = SimpleNamespace(name="alice")
    monkeypatch.setattr(
        spawner, "_job_context", lambda: JobContext(username="alice", homedir=str(home), log_dir="/x")
    )
    moved = await spawner.move_certs(paths)
    folder = home / ".werkbank" / "certs" / "default"
    assert moved == {
        "keyfile": str(folder / "server.key"),
        "certfile": str(folder / "server.crt"),
        "cafile": str(folder / "ca.crt"),
    }
    assert Path(moved["keyfile"]).read_text() == "keyfile\n"
    # The hub keeps no copy of the server's key and certificate; the CA bundle is shared.
    assert sorted(os.listdir(hub_dir)) == ["ca"]
    await spawner.run_post_stop_hook()
    assert not folder.exists()


async def test_a_writer_that_fails_fails_the_spawn(tmp_path, monkeypatch):
    spawner = WerkbankSlurmSpawner(sudo_cmd=["/bin/false", "{username}"])
    spawner.user = SimpleNamespace(name="alice")
    monkeypatch.setattr(
        spawner, "_job_context", lambda: JobContext(username="alice", homedir=str(tmp_path), log_dir="/x")
    )
    for name in ("k", "c", "a"):
        (tmp_path / name).write_text("x")
    paths = {"keyfile": str(tmp_path / "k"), "certfile": str(tmp_path / "c"), "cafile": str(tmp_path / "a")}
    with pytest.raises(web.HTTPError) as info:
        await spawner.move_certs(paths)
    assert info.value.status_code == 500
    assert (tmp_path / "k").exists()  # not deleted before the user's copy exists


def test_the_sudo_prefix_runs_the_writer_as_the_user():
    spawner = WerkbankSlurmSpawner()
    spawner.user = SimpleNamespace(name="alice")
    argv = spawner._writer("write", "/home/alice/.werkbank/certs/default")
    assert argv[:4] == ["sudo", "-n", "-u", "alice"]
    assert argv[4:8] == [sys.executable, "-I", "-S", "-c"]
    assert argv[-2:] == ["write", "/home/alice/.werkbank/certs/default"]


# --- the job's reports to an https hub API -------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs (the hub's and another) and certificates as JupyterHub's internal_ssl makes them."""
    root = tmp_path_factory.mktemp("pki")
    certipy = Certipy(store_dir=str(root))
    certipy.create_ca("hub-ca")
    certipy.create_ca("notebooks-ca")
    certipy.create_ca("other-ca")
    hub = certipy.create_signed_pair("hub-internal", "hub-ca", alt_names=["IP:127.0.0.1"])
    server = certipy.create_signed_pair("user-alice", "notebooks-ca", alt_names=["DNS:node1"])
    stranger = certipy.create_signed_pair("stranger", "other-ca", alt_names=["IP:127.0.0.1"])
    bundle = root / "all-cas.crt"
    bundle.write_text(
        "".join(
            Path(certipy.store.get_record(ca)["files"]["cert"]).read_text()
            for ca in ("hub-ca", "notebooks-ca")
        )
    )
    return SimpleNamespace(
        hub=hub["files"],
        server=server["files"],
        stranger=stranger["files"],
        hub_ca=certipy.store.get_record("hub-ca")["files"]["cert"],
        other_ca=certipy.store.get_record("other-ca")["files"]["cert"],
        bundle=str(bundle),
    )


@pytest.fixture
def https_hub(pki):
    hub = TlsServer(pki.hub, {"/hub/api/batchspawner": {}, "/hub/api/werkbank/server-ended": {}}, pki.bundle)
    yield hub
    hub.close()


def job_env(hub: TlsServer, server: dict, ca: str) -> dict:
    return dict(
        os.environ,
        JUPYTERHUB_API_URL=hub.url + "/hub/api",
        JUPYTERHUB_API_TOKEN="t0ken",
        JUPYTERHUB_SERVICE_URL="https://0.0.0.0:0/user/alice/",
        JUPYTERHUB_SSL_KEYFILE=server["key"],
        JUPYTERHUB_SSL_CERTFILE=server["cert"],
        JUPYTERHUB_SSL_CLIENT_CA=ca,
        WERKBANK_PORT_RANGE="20000-29999",
        SLURM_JOB_ID="42",
    )


def port_report(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-"], input=PORT_REPORT, env=env, text=True, capture_output=True)


def end_report(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-I", "-S", "-", "signal", "0"], input=END_REPORT, env=env, text=True, capture_output=True
    )


def end_report_with_curl(env: dict) -> subprocess.CompletedProcess:
    """The job script's own function, which sends the report with curl where the node has it."""
    script = "\n".join([*END_REPORT_FUNCTION, "werkbank_end_report signal 0"])
    return subprocess.run(["bash", "-c", script], env=env, text=True, capture_output=True)


def test_the_job_reports_to_an_https_hub_with_its_certificate(https_hub, pki):
    env = job_env(https_hub, pki.server, pki.hub_ca)
    done = port_report(env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("https://0.0.0.0:")
    done = end_report(env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [path for path, _ in https_hub.posts] == [
        "/hub/api/batchspawner",
        "/hub/api/werkbank/server-ended",
    ]
    assert https_hub.posts[1][1] == {"job_id": "42", "how": "signal", "status": 0}
    done = end_report_with_curl(env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert https_hub.posts[2] == https_hub.posts[1]


def test_the_job_trusts_only_the_internal_ca(https_hub, pki):
    """A hub certificate from another CA (someone else answering at the hub's address) gets
    neither the port nor the token."""
    env = job_env(https_hub, pki.server, pki.other_ca)
    done = port_report(env)
    assert done.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr
    done = end_report(env)
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr
    done = end_report_with_curl(env)
    assert "could not tell the hub" in done.stderr and "SSL certificate problem" in done.stderr, done.stderr
    assert https_hub.posts == []


def test_the_hub_refuses_a_job_without_a_certificate_of_its_cas(https_hub, pki):
    env = job_env(https_hub, pki.stranger, pki.hub_ca)
    assert port_report(env).returncode != 0
    assert "could not tell the hub" in end_report_with_curl(env).stderr
    assert https_hub.posts == []
