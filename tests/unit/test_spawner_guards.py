"""What the spawners refuse before anything runs: accounts that must never run a server, and
ports outside the site's range (pure, and the job's port-report snippet run for real)."""

from __future__ import annotations

import asyncio
import json
import pwd
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace
from typing import ClassVar

import pytest
import yaml
from tornado import web
from traitlets.config import Config

from werkbank_core.script import PORT_RANGE_ENV, PORT_REPORT
from werkbank_spawner.spawner import (
    IGNORED_BATCHSPAWNER_TRAITS,
    WerkbankLocalSpawner,
    WerkbankSlurmSpawner,
    ignored_settings,
    server_account,
)

from .test_policy import SITE
from .test_site import HUB_CONFIG, minimal, run_hub_config, with_value, write


def account(name: str, uid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", f"/home/{name}", "/bin/bash"))


def test_root_never_runs_a_server():
    with pytest.raises(web.HTTPError) as refused:
        server_account("root", min_uid=1)
    assert refused.value.status_code == 403
    assert "uid 0" in refused.value.log_message


def test_system_accounts_below_min_uid_are_refused():
    daemon = pwd.getpwuid(1).pw_name  # Debian's "daemon"
    with pytest.raises(web.HTTPError) as refused:
        server_account(daemon, min_uid=1000)
    assert refused.value.status_code == 403
    assert "auth.min_uid" in refused.value.log_message


def test_a_missing_account_is_a_clear_error():
    with pytest.raises(web.HTTPError) as refused:
        server_account("no-such-account-here", min_uid=1000)
    assert refused.value.status_code == 500


def test_regular_accounts_pass(monkeypatch):
    monkeypatch.setattr(pwd, "getpwnam", lambda name: account(name, 1234))
    assert server_account("alice", min_uid=1000).pw_dir == "/home/alice"
    with pytest.raises(web.HTTPError):
        server_account("alice", min_uid=2000)


def spawner(cls=WerkbankSlurmSpawner, name="daemon", **traits):
    user = SimpleNamespace(name=name, groups=[], url=f"/user/{name}/")
    return cls(user=user, policy_config=SITE, **traits)


def test_the_slurm_spawner_refuses_before_any_command(monkeypatch):
    s = spawner()
    ran = []
    monkeypatch.setattr(s, "_run", lambda *a, **k: ran.append(a))
    with pytest.raises(web.HTTPError) as refused:
        s._job_context()
    assert refused.value.status_code == 403
    assert ran == []


async def test_the_local_spawner_refuses_before_starting_a_process(monkeypatch):
    s = spawner(WerkbankLocalSpawner, name="root")
    monkeypatch.setattr(WerkbankLocalSpawner.__mro__[1], "start", lambda self: pytest.fail("started"))
    with pytest.raises(web.HTTPError) as refused:
        await s.start()
    assert refused.value.status_code == 403


async def test_reported_ports_must_lie_in_the_range_and_come_once_while_starting():
    s = spawner(port_range=(41000, 41010))
    with pytest.raises(ValueError, match="not starting"):
        s.report_port(41005)  # no start() under way
    s._port_reported = asyncio.Event()  # as start() makes it
    for port in (40999, 41011, 5000, 8081):
        with pytest.raises(ValueError, match="outside the range"):
            s.report_port(port)
    assert s.port == 0
    s.report_port(41005)
    assert s.port == 41005 and s._port_reported.is_set()
    # A running server keeps the port its route was made for.
    with pytest.raises(ValueError, match="reported already"):
        s.report_port(41006)
    assert s.port == 41005


def test_batchspawners_unused_settings_are_found_on_every_class_they_could_be_set_on():
    assert {"batch_script", "exec_prefix", "req_partition", "batch_submit_cmd", "state_pending_re"} <= set(
        IGNORED_BATCHSPAWNER_TRAITS
    )
    # Traits werkbank does use (JupyterHub's Spawner's, its own) are not in the list.
    assert not {"cmd", "start_timeout", "port", "sbatch_cmd", "poll_interval"} & set(
        IGNORED_BATCHSPAWNER_TRAITS
    )
    c = Config()
    c.SlurmSpawner.req_partition = "gpu"
    c.BatchSpawnerBase.exec_prefix = "sudo -E -u {username}"
    c.WerkbankSlurmSpawner.batch_script = "#!/bin/sh"
    c.WerkbankSlurmSpawner.start_timeout = 60  # used: not reported
    c.Spawner.cmd = ["jupyterhub-singleuser"]
    assert sorted(ignored_settings(c)) == [
        "c.BatchSpawnerBase.exec_prefix",
        "c.SlurmSpawner.req_partition",
        "c.WerkbankSlurmSpawner.batch_script",
    ]
    assert ignored_settings(Config()) == []


async def test_the_slurm_spawner_refuses_to_start_with_batchspawners_settings(monkeypatch):
    c = Config()
    c.SlurmSpawner.req_queue = "gpu"
    s = WerkbankSlurmSpawner(user=SimpleNamespace(name="alice", groups=[]), policy_config=SITE, config=c)
    monkeypatch.setattr(s, "_run", lambda *a, **k: pytest.fail("ran a command"))
    with pytest.raises(web.HTTPError) as refused:
        await s.start()
    assert refused.value.status_code == 500
    assert "c.SlurmSpawner.req_queue" in refused.value.log_message
    assert "site file" in refused.value.log_message


@pytest.mark.parametrize("ports", [(80, 9000), (3000, 2000), (20000, 70000)])
def test_the_range_itself_is_checked(ports):
    with pytest.raises(Exception, match="port_range"):
        spawner(port_range=ports)


class _Hub(BaseHTTPRequestHandler):
    reports: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reports.append((self.path, self.headers["Authorization"], json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):
        pass


# Below Linux's ephemeral ports (32768-60999), which any outgoing connection may hold a moment.
@pytest.mark.parametrize("ports", [(31100, 31110), (31200, 31200)])
def test_the_job_picks_and_reports_a_port_in_the_range(ports):
    """The snippet the batch script runs, for real: it binds a port in the range, reports it
    with the token from the environment, and prints the service URL with that port."""
    hub = HTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    _Hub.reports = []
    try:
        env = {
            PORT_RANGE_ENV: f"{ports[0]}-{ports[1]}",
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub.server_port}/hub/api",
            "JUPYTERHUB_API_TOKEN": "job-token",
            "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:0/user/alice/",
        }
        out = subprocess.run(
            [sys.executable, "-c", PORT_REPORT], env=env, capture_output=True, text=True, timeout=30
        )
    finally:
        hub.shutdown()
    assert out.returncode == 0, out.stderr
    [(path, authorization, body)] = _Hub.reports
    assert path == "/hub/api/batchspawner"
    assert authorization == "token job-token"
    assert ports[0] <= body["port"] <= ports[1]
    assert out.stdout.strip() == f"http://0.0.0.0:{body['port']}/user/alice/"


def test_the_job_gives_up_when_the_range_is_full():
    import socket

    with socket.socket() as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        env = {
            PORT_RANGE_ENV: f"{port}-{port}",
            "JUPYTERHUB_API_URL": "http://127.0.0.1:9/",
            "JUPYTERHUB_API_TOKEN": "t",
        }
        out = subprocess.run(
            [sys.executable, "-c", PORT_REPORT], env=env, capture_output=True, text=True, timeout=30
        )
    assert out.returncode != 0
    assert f"no free port in {port}-{port}" in out.stderr


def test_the_hub_does_not_start_with_batchspawners_settings(tmp_path):
    """An admin following batchspawner's documentation in jupyterhub_config.d/ is told at once."""
    config_dir = tmp_path / "hub_config"
    (config_dir / "jupyterhub_config.d").mkdir(parents=True)
    (config_dir / "jupyterhub_config.py").write_text(HUB_CONFIG.read_text())
    (config_dir / "jupyterhub_config.d" / "50-batchspawner.py").write_text(
        'c.SlurmSpawner.req_partition = "gpu"\nc.BatchSpawnerBase.batch_script = "#!/bin/sh"\n'
    )
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    result = run_hub_config(config_dir / "jupyterhub_config.py", write(tmp_path, yaml.safe_dump(site)))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        "FATAL: c.SlurmSpawner.req_partition, c.BatchSpawnerBase.batch_script: batchspawner settings "
    )
    assert "site file" in result.stderr
