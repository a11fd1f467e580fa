"""The authenticating MLflow proxy (werkbank_spawner.tracking.proxy).

Pure parts (headers, paths, body rules) directly; the running proxy as the hub runs it (a
``python -m werkbank_spawner.tracking.proxy`` process) in front of a real ``mlflow server`` and of
an echo server that shows what the upstream receives. The hub is a stub answering
``/hub/api/user`` for a few tokens, as JupyterHub does; browsers' OAuth logins and the real hub
are covered by tests/integration/test_mlflow_service.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from email.message import Message
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from tornado import httputil, web

from tests.mlflow_server import MlflowServer, free_port
from tests.services import Process, ServiceError
from werkbank_spawner.spawner import mlflow_env
from werkbank_spawner.tracking import auth as mlflow_auth
from werkbank_spawner.tracking import proxy as mlflow_proxy
from werkbank_spawner.tracking.auth import Identity, encode, encode_groups, parse_groups
from werkbank_spawner.tracking.proxy import (
    BodyRule,
    Caller,
    Rejected,
    assertion_header,
    body_rule,
    forward_headers,
    identity,
    project_group,
    relay_headers,
    rewrite_body,
    upstream_path,
)

PREFIX = "/services/mlflow/"
SCOPES = ["access:services!service=mlflow"]
USERS = {
    "alice-token": {"name": "alice", "kind": "user", "admin": False, "groups": ["vision"], "scopes": SCOPES},
    "bob-token": {"name": "bob", "kind": "user", "admin": False, "groups": [], "scopes": SCOPES},
    "carol-token": {"name": "carol", "kind": "user", "admin": False, "groups": [], "scopes": ["read:users"]},
    "dave-token": {"name": "dave", "kind": "user", "admin": False, "groups": ["vision"], "scopes": SCOPES},
    "erin-token": {"name": "erin", "kind": "user", "admin": True, "groups": [], "scopes": SCOPES},
    "mallory-token": {"name": "service:mlflow", "kind": "user", "groups": [], "scopes": SCOPES},
}
SERVICE_TOKEN = "proxy-service-token"
SIGNING_KEY = "key-shared-by-proxy-and-mlflow"
ALICE = Caller("alice", groups=("vision",))


# --- pure parts -------------------------------------------------------------------------------


def headers(*items: tuple[str, str]) -> httputil.HTTPHeaders:
    h = httputil.HTTPHeaders()
    for name, value in items:
        h.add(name, value)
    return h


def test_forward_headers_strip_credentials_hop_by_hop_and_claims():
    incoming = headers(
        ("Host", "hub.example.org"),
        ("Authorization", "Bearer secret-hub-token"),
        ("Cookie", "service-mlflow=abc; jupyterhub-session-id=def; other=1"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "named by Connection"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic xyz"),
        ("Origin", "http://evil.example"),
        ("Expect", "100-continue"),
        ("Content-Length", "12"),
        ("X-Werkbank-User", "mallory"),
        ("x-werkbank-user", "mallory2"),
        ("X-Werkbank-Groups", "admins"),
        ("X_Werkbank_Admin", "1"),
        ("x_werkbank_admin", "1"),
        ("X-Werkbank_Assertion", "v1;..."),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("X-Forwarded-For", "10.0.0.9"),
    )
    out = forward_headers(incoming)
    names = [name.lower() for name, _ in out]
    assert sorted(names) == ["accept", "content-type", "x-forwarded-for"]
    assert not any("secret-hub-token" in value or "abc" in value for _, value in out)


def test_the_assertion_binds_identity_to_the_request():
    key = b"k" * 32
    root = Caller("root", admin=True, groups=("a,b", "ops"))
    name, value = assertion_header(root, key, "GET", PREFIX + "api/2.0/mlflow/runs/get%20x?run_id=1")
    assert name == "X-Werkbank-Assertion"
    path = PREFIX + "api/2.0/mlflow/runs/get x"  # decoded, as MLflow routes it
    assert mlflow_auth.verify(key, value, "GET", path, "run_id=1") == Identity("root", True, ("a,b", "ops"))
    for method, other_path, query, other_key in [
        ("POST", path, "run_id=1", key),
        ("GET", PREFIX + "api/2.0/mlflow/runs/delete", "run_id=1", key),
        ("GET", path, "run_id=2", key),
        ("GET", path, "run_id=1", b"guessed"),
    ]:
        with pytest.raises(mlflow_auth.InvalidAssertion):
            mlflow_auth.verify(other_key, value, method, other_path, query)
    version, stamp, user, admin, groups, mac = value.split(";")
    for forged in (
        f"{version};{stamp};alice;{admin};{groups};{mac}",
        f"{version};{stamp};{user};0;{groups};{mac}",
        f"{version};{stamp};{user};{admin};;{mac}",
        f"{version};{int(stamp) + 1};{user};{admin};{groups};{mac}",
        f"{value},{value}",  # two headers, as the WSGI layer joins them
        "",
    ):
        with pytest.raises(mlflow_auth.InvalidAssertion):
            mlflow_auth.verify(key, forged, "GET", path, "run_id=1")
    with pytest.raises(mlflow_auth.InvalidAssertion, match="old"):
        mlflow_auth.verify(key, value, "GET", path, "run_id=1", now=time.time() + mlflow_auth.MAX_AGE + 5)
    with pytest.raises(mlflow_auth.InvalidAssertion, match="no signing key"):
        mlflow_auth.verify(b"", value, "GET", path, "run_id=1")


@pytest.mark.parametrize(
    "name",
    ["X-Werkbank-Admin", "x_werkbank_admin", "X_WERKBANK_USER", "X-Werkbank_Groups", " x-werkbank-assertion",
     "X-WERKBANK", "x-werkbankfoo"],
)  # fmt: skip
def test_reserved_header_spellings(name):
    assert mlflow_proxy.is_reserved_header(name)


@pytest.mark.parametrize("name", ["X-Werk-Bank", "Werkbank", "X-Forwarded-For", "x-mlflow-werkbank"])
def test_other_headers_are_not_reserved(name):
    assert not mlflow_proxy.is_reserved_header(name)


def test_relay_headers_drop_hop_by_hop_and_cors():
    out = relay_headers(
        [
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Access-Control-Allow-Origin", "http://localhost:9999"),
            ("access-control-allow-credentials", "true"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Vary", "Origin"),
        ]
    )
    assert out == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Vary", "Origin"),
    ]


def test_identity_and_header_encoding():
    assert identity({"name": "alice", "kind": "user"}) == "alice"
    assert identity({"name": "idle-culler", "kind": "service"}) == "service:idle-culler"
    model = {"name": "a", "admin": True, "groups": ["z", "b"]}
    assert Caller.from_model(model) == Caller("a", True, ("b", "z"))
    assert encode("alice@example.org") == "alice@example.org"
    assert encode("jürgen") == "j%C3%BCrgen"
    assert encode("a\nX-Werkbank-User: root") == "a%0AX-Werkbank-User:%20root"
    groups = ("ops", "x,y", "jürgen's")
    assert parse_groups(encode_groups(groups)) == tuple(sorted(groups))
    assert parse_groups("") == ()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            PREFIX + "api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pt",
            "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pt",
        ),
        (PREFIX + "ajax-api/2.0/mlflow-artifacts/artifacts/x", "/ajax-api/2.0/mlflow-artifacts/artifacts/x"),
        # The listing and multipart routes exist only under the prefix.
        (PREFIX + "api/2.0/mlflow-artifacts/artifacts", PREFIX + "api/2.0/mlflow-artifacts/artifacts"),
        (PREFIX + "api/2.0/mlflow-artifacts/artifacts/", PREFIX + "api/2.0/mlflow-artifacts/artifacts/"),
        (PREFIX + "api/2.0/mlflow-artifacts/mpu/create/x", PREFIX + "api/2.0/mlflow-artifacts/mpu/create/x"),
        (PREFIX + "api/2.0/mlflow/runs/get", PREFIX + "api/2.0/mlflow/runs/get"),
        (PREFIX, PREFIX),
    ],
)
def test_upstream_path(path, expected):
    assert upstream_path(path, PREFIX) == expected


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("POST", "api/2.0/mlflow/runs/create", "create-run"),
        ("POST", "ajax-api/2.0/mlflow/runs/create", "create-run"),
        ("POST", "ajax-api/2.0/mlflow/runs/create-promptlab-run", "create-run"),
        ("POST", "api/2.0/mlflow/experiments/create", "create-experiment"),
        ("POST", "api/2.0/mlflow/experiments/update", "rename-experiment"),
        ("POST", "api/2.0/mlflow/runs/set-tag", "tag-key"),
        ("POST", "api/2.0/mlflow/runs/delete-tag", "tag-key"),
        ("POST", "api/2.0/mlflow/runs/log-batch", "tag-list"),
        ("POST", "ajax-api/2.0/mlflow/experiments/set-experiment-tag", "tag-key"),
        ("POST", "api/2.0/mlflow/experiments/delete-experiment-tag", "tag-key"),
        ("POST", "api/2.0/mlflow/runs/log-metric", None),
        ("POST", "api/2.0/mlflow/runs/create/x", None),
        ("GET", "api/2.0/mlflow/runs/create", None),
    ],
)
def test_body_rules(method, path, action):
    rule = body_rule(method, PREFIX + path, PREFIX)
    assert (rule.action if rule else None) == action
    assert body_rule(method, "/elsewhere/" + path, PREFIX) is None


def test_create_run_records_the_authenticated_user():
    claimed = {
        "experiment_id": "1",
        "user_id": "mallory",
        "start_time": 1,
        "tags": [{"key": "mlflow.user", "value": "mallory"}, {"key": "mlflow.source.name", "value": "x.py"}],
    }
    out = json.loads(rewrite_body(BodyRule("create-run"), json.dumps(claimed).encode(), ALICE).body)
    assert out["user_id"] == "alice"
    assert out["tags"] == [
        {"key": "mlflow.source.name", "value": "x.py"},
        {"key": "mlflow.user", "value": "alice"},
    ]
    assert {k: v for k, v in out.items() if k not in ("user_id", "tags")} == {
        "experiment_id": "1",
        "start_time": 1,
    }
    minimal = json.loads(rewrite_body(BodyRule("create-run"), b"", Caller("bob")).body)
    assert minimal == {"user_id": "bob", "tags": [{"key": "mlflow.user", "value": "bob"}]}


def test_create_experiment_records_the_owner():
    body = json.dumps({"name": "e", "tags": [{"key": "werkbank.owner", "value": "mallory"}]}).encode()
    out = rewrite_body(BodyRule("create-experiment"), body, ALICE)
    assert json.loads(out.body) == {"name": "e", "tags": [{"key": "werkbank.owner", "value": "alice"}]}
    assert out.share_with == ""


@pytest.mark.parametrize(
    ("name", "caller", "group"),
    [
        ("plain-name", ALICE, ""),  # no namespace: global, the creator's
        ("alice/mnist", ALICE, ""),  # her own
        ("vision/mnist", ALICE, "vision"),  # her group's project
        ("vision/a/b", ALICE, "vision"),
        ("workshop/day1", Caller("erin", admin=True), "workshop"),  # an admin prepares a project
        ("service:ci/nightly", Caller("service:ci"), ""),
    ],
)
def test_project_group(name, caller, group):
    assert project_group(name, caller) == group


@pytest.mark.parametrize("name", ["bob/mnist", "workshop/day1", "/Shared/x", "Vision/x"])
def test_experiment_names_in_other_namespaces_are_refused(name):
    with pytest.raises(Rejected) as info:
        project_group(name, ALICE)
    assert info.value.status_code == 403
    assert "'alice/...', 'vision/...'" in info.value.message


def test_project_experiments_are_to_be_shared_only_with_permissions():
    create = BodyRule("create-experiment")
    assert rewrite_body(create, b'{"name": "vision/x"}', ALICE, projects=True).share_with == "vision"
    assert rewrite_body(create, b'{"name": "vision/x"}', ALICE).share_with == ""
    with pytest.raises(Rejected):
        rewrite_body(create, b'{"name": "bob/x"}', ALICE, projects=True)
    rename = BodyRule("rename-experiment")
    body = b'{"experiment_id": "7", "new_name": "vision/y"}'
    out = rewrite_body(rename, body, ALICE, projects=True)
    assert (out.body, out.share_with, out.experiment_id) == (body, "vision", "7")
    assert rewrite_body(rename, b'{"experiment_id": "7", "new_name": "bob/y"}', ALICE).share_with == ""
    with pytest.raises(Rejected):
        rewrite_body(rename, b'{"experiment_id": "7", "new_name": "bob/y"}', ALICE, projects=True)


def test_protected_tags_cannot_be_set_or_deleted():
    rule = BodyRule("tag-key", "mlflow.user")
    with pytest.raises(Rejected) as info:
        rewrite_body(rule, b'{"run_id": "r", "key": "mlflow.user", "value": "mallory"}', ALICE)
    assert info.value.status_code == 403
    assert info.value.error_code == "PERMISSION_DENIED"
    body = b'{"run_id": "r", "key": "note", "value": "fine"}'
    assert rewrite_body(rule, body, ALICE).body is body  # untouched, byte for byte
    batch = BodyRule("tag-list", "mlflow.user")
    with pytest.raises(Rejected):
        rewrite_body(batch, b'{"run_id": "r", "tags": [{"key": "mlflow.user", "value": "m"}]}', ALICE)
    metrics = b'{"run_id": "r", "metrics": [{"key": "loss", "value": 1, "timestamp": 1, "step": 0}]}'
    assert rewrite_body(batch, metrics, ALICE).body is metrics
    # The same key spelled with JSON escapes is the same key.
    with pytest.raises(Rejected):
        rewrite_body(batch, b'{"run_id": "r", "tags": [{"key": "mlflow\\u002euser", "value": "m"}]}', ALICE)
    with pytest.raises(Rejected):
        rewrite_body(rule, b'{"run_id": "r", "key": "\\u006dlflow.user", "value": "m"}', ALICE)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"tags": "mlflow.user"}', b'{"tags": [1]}'])
def test_malformed_bodies_are_refused(body):
    with pytest.raises(Rejected) as info:
        rewrite_body(BodyRule("create-run"), body, ALICE)
    assert info.value.status_code == 400


def test_servers_get_their_own_token_only_for_the_proxy():
    env = {"JUPYTERHUB_API_TOKEN": "server-token", "JUPYTERHUB_USER": "alice"}
    proxied = SimpleNamespace(mlflow_tracking_uri="http://hub:8000/services/mlflow", mlflow_send_token=True)
    no_telemetry = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    assert mlflow_env(proxied, env) == {
        "MLFLOW_TRACKING_URI": "http://hub:8000/services/mlflow",
        "MLFLOW_TRACKING_TOKEN": "server-token",
        "MLFLOW_EXPERIMENT_NAME": "alice/default",  # not MLflow's shared experiment 0
        # MLflow's own "View run at" link would name the jobs' address of the proxy.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        **no_telemetry,
    }
    bare = SimpleNamespace(mlflow_tracking_uri="http://mlflow:5000", mlflow_send_token=False)
    assert mlflow_env(bare, env) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_EXPERIMENT_NAME": "alice/default",
        **no_telemetry,
    }
    # No tracking server: MLflow's client still reports usage on its own unless told not to.
    assert mlflow_env(SimpleNamespace(mlflow_tracking_uri="", mlflow_send_token=True), env) == no_telemetry


# --- cross-site requests with a cookie (the handler's check, on made-up requests) -------------


def test_ui_pages_load_the_xsrf_script_first():
    page = b'<!doctype html><html><HEAD lang="x"><title>MLflow</title></head><body></body></html>'
    out = mlflow_proxy.with_xsrf_script(page)
    assert out.startswith(
        b'<!doctype html><html><HEAD lang="x"><script src="werkbank-xsrf.js"></script><title>'
    )
    assert mlflow_proxy.with_xsrf_script(b"<p>no head</p>").startswith(b'<script src="werkbank-xsrf.js">')


# --- the running proxy ------------------------------------------------------------------------


class StubHub(web.RequestHandler):
    """JupyterHub's ``/hub/api/user``: the model of the token's owner (the token HubAuth sends
    is the one being checked), 403 for a token it does not know."""

    def get(self):
        token = self.request.headers.get("Authorization", "").partition(" ")[2]
        self.application.settings["seen"].append(token)
        if token not in USERS:
            self.set_status(403)
            self.finish({"status": 403, "message": "invalid token"})
            return
        self.finish(USERS[token])


#: The echo returns bodies up to this size as they came (the rewritten JSON of runs/create).
ECHO_BODY = 64 * 1024


@web.stream_request_body
class Echo(web.RequestHandler):
    """An upstream that answers what it received: method, path, headers, body length and hash,
    and a small body itself. Records the path of every request whose headers arrived
    (``requests``) and of every request it answered, its body read to the end (``answered``)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH")

    def prepare(self):
        self.request.connection.set_max_body_size(10 * 1024**3)
        self.length, self.hash, self.body = 0, hashlib.sha256(), bytearray()
        self.application.settings["requests"].append(self.request.path)

    def data_received(self, chunk):
        self.length += len(chunk)
        self.hash.update(chunk)
        if self.length <= ECHO_BODY:
            self.body += chunk

    def _answer(self, *args):
        self.application.settings["answered"].append(self.request.path)
        self.set_header("Access-Control-Allow-Origin", "*")
        self.finish(
            {
                "method": self.request.method,
                "path": self.request.path,
                "query": self.request.query,
                "headers": [[k, v] for k, v in self.request.headers.get_all()],
                "length": self.length,
                "sha256": self.hash.hexdigest(),
                "body": self.body.decode(errors="replace") if self.length <= ECHO_BODY else None,
            }
        )

    get = head = options = post = put = delete = patch = _answer


class Background:
    """The stub hub and the echo upstream, served from a thread with its own event loop."""

    def __init__(self):
        self.hub_port, self.echo_port = free_port(), free_port()
        self.tokens_seen: list[str] = []
        self.echo_requests: list[str] = []
        self.echo_answered: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        hub = web.Application([(r"/hub/api/user", StubHub)], seen=self.tokens_seen)
        echo = web.Application([(r"/.*", Echo)], requests=self.echo_requests, answered=self.echo_answered)
        servers = [hub.listen(self.hub_port, "127.0.0.1"), echo.listen(self.echo_port, "127.0.0.1")]
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.stop()

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class ProxyProcess:
    """``python -m werkbank_spawner.tracking.proxy`` with the environment the hub gives a service."""

    def __init__(
        self,
        upstream: str,
        hub_port: int,
        log_path: Path,
        *,
        permissions: bool = False,
        max_body_size: int | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.log_path = log_path
        env = dict(
            os.environ,
            JUPYTERHUB_SERVICE_NAME="mlflow",
            JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{self.port}",
            JUPYTERHUB_SERVICE_PREFIX=PREFIX,
            JUPYTERHUB_API_URL=f"http://127.0.0.1:{hub_port}/hub/api",
            JUPYTERHUB_API_TOKEN=SERVICE_TOKEN,
            JUPYTERHUB_CLIENT_ID="service-mlflow",
            JUPYTERHUB_OAUTH_CALLBACK_URL=PREFIX + "oauth_callback",
            JUPYTERHUB_OAUTH_ACCESS_SCOPES=json.dumps(["access:services", "access:services!service=mlflow"]),
        )
        argv = [sys.executable, "-m", "werkbank_spawner.tracking.proxy", "--upstream", upstream]
        env["WERKBANK_MLFLOW_SIGNING_KEY"] = SIGNING_KEY  # the echo shows what the proxy signs
        if permissions:
            argv.append("--permissions")
        if max_body_size is not None:
            argv += ["--max-body-size", str(max_body_size)]
        self.process = Process("the proxy", argv, log_path=log_path, env=env).start()
        self.process.wait_until(
            lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True,
            30,
            "the proxy to listen",
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self):
        self.process.stop(10)


@pytest.fixture(scope="module")
def background():
    b = Background()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def echo_proxy(background, tmp_path_factory):
    proxy = ProxyProcess(
        f"http://127.0.0.1:{background.echo_port}", background.hub_port, tmp_path_factory.mktemp("p") / "log"
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mlflow_behind_proxy(request, background, tmp_path_factory):
    """A real ``mlflow server`` serving under the service's path and checking permissions, as
    the hub starts it, and the proxy in front of it. Twice: with SQLite, the default, and with
    PostgreSQL (runs and permissions), as production sites run it."""
    databases = {}
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        databases = {
            "backend_store_uri": postgres.create_database(f"mlflow_{os.getpid()}"),
            "auth_database_uri": postgres.create_database(f"mlflow_auth_{os.getpid()}"),
        }
    server = MlflowServer(
        tmp_path_factory.mktemp(f"mlflow-{request.param}"), signing_key=SIGNING_KEY, **databases
    )
    server.url += PREFIX.rstrip("/")  # its /health lives under the prefix too
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_STATIC_PREFIX", PREFIX.rstrip("/"))  # `mlflow server --static-prefix`
        try:
            server.start(timeout=180)
        except ServiceError as e:
            server.stop()
            pytest.fail(str(e))
    proxy = ProxyProcess(
        f"http://127.0.0.1:{server.port}", background.hub_port, server.root / "proxy.log", permissions=True
    )
    yield SimpleNamespace(server=server, proxy=proxy, backend=request.param)
    proxy.stop()
    server.stop()


def auth(token: str, scheme: str = "Bearer") -> dict:
    return {"Authorization": f"{scheme} {token}"}


def test_requests_without_valid_credentials_are_refused_and_not_forwarded(echo_proxy, background):
    before = len(background.echo_requests)
    r = httpx.post(echo_proxy.url + "api/2.0/mlflow/experiments/delete", json={"experiment_id": "1"})
    assert r.status_code == 401
    assert r.json()["error_code"] == "UNAUTHENTICATED"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # Its body was never read, so the connection closes, and the answer says so: a client (the
    # hub's configurable-http-proxy) must not send the next request on it.
    assert r.headers["Connection"] == "close"
    r = httpx.get(echo_proxy.url + "api/2.0/mlflow/experiments/search", headers=auth("forged"))
    assert r.status_code == 401
    r = httpx.get(echo_proxy.url + "api/2.0/mlflow/experiments/search", headers=auth("carol-token"))
    assert r.status_code == 403
    assert "access:services!service=mlflow" in r.json()["message"]
    # A token in the URL does not count (it would be forwarded to MLflow in the query).
    r = httpx.get(echo_proxy.url + "api/2.0/mlflow/experiments/search", params={"token": "alice-token"})
    assert r.status_code == 401
    assert len(background.echo_requests) == before


def test_browsers_without_a_login_are_sent_to_the_hub(echo_proxy):
    r = httpx.get(echo_proxy.url + "#/experiments")
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith("/hub/api/oauth2/authorize?")
    assert "client_id=service-mlflow" in location
    assert "redirect_uri=%2Fservices%2Fmlflow%2Foauth_callback" in location


def test_health_needs_no_credentials(echo_proxy):
    r = httpx.get(echo_proxy.url + "health")
    assert r.status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "token", "bearer"])
def test_what_mlflow_receives(echo_proxy, background, scheme):
    r = httpx.post(
        echo_proxy.url + "api/2.0/mlflow/runs/search?x=%2F1",
        headers={
            **auth("alice-token", scheme),
            "Cookie": "service-mlflow=secret; jupyterhub-session-id=s",
            "X-Werkbank-User": "root",
            "Origin": "http://elsewhere",
        },
        json={"experiment_ids": ["1"]},
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == PREFIX + "api/2.0/mlflow/runs/search"
    assert seen["query"] == "x=%2F1"
    names = {k.lower(): v for k, v in seen["headers"]}
    assert [k for k, _ in seen["headers"] if mlflow_proxy.is_reserved_header(k)] == ["X-Werkbank-Assertion"]
    assert mlflow_auth.verify(
        SIGNING_KEY.encode(), names["x-werkbank-assertion"], "POST", seen["path"], "x=%2F1"
    ) == Identity("alice", False, ("vision",))
    assert names["host"] == f"127.0.0.1:{background.echo_port}"
    for gone in ("authorization", "cookie", "origin"):
        assert gone not in names
    assert seen["length"] == len(b'{"experiment_ids":["1"]}')
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    assert background.tokens_seen[-1] != SERVICE_TOKEN  # the hub was asked about alice's token


@pytest.fixture
def fresh_token(monkeypatch):
    """``fresh_token(name)``: a new token of a new hub user ``name``. The proxy has never seen it, so
    what it says of the token comes from the hub now, not from its cache of earlier answers (a
    minute long; the tokens in ``USERS`` are shared by every test of the module)."""

    def make(name: str) -> str:
        token = f"fresh-{secrets.token_hex(8)}"
        model = {"name": name, "kind": "user", "admin": False, "groups": [], "scopes": SCOPES}
        monkeypatch.setitem(USERS, token, model)
        return token

    return make


ALICE_TAG = {"key": "mlflow.user", "value": "alice"}
#: What clients send to runs/create, claiming someone else (alice) as the run's user or not.
RUN_CLAIMS = {
    "nothing": json.dumps({"experiment_id": "0", "start_time": 1}),
    "user_id": json.dumps({"experiment_id": "0", "user_id": "alice", "run_name": "r"}),
    "tag": json.dumps({"experiment_id": "0", "tags": [ALICE_TAG]}),
    "both": json.dumps(
        {
            "experiment_id": "0",
            "user_id": "alice",
            "tags": [
                {"key": "mlflow.source.name", "value": "x.py"},
                ALICE_TAG,
                {"key": "note", "value": "mlflow.user"},
            ],
        }
    ),
    "tag twice": json.dumps(
        {"experiment_id": "0", "tags": [ALICE_TAG, {"key": "mlflow.user", "value": "erin"}]}
    ),
    # The key as JSON may spell it, which the proxy's rule reads as MLflow does.
    "escaped tag key": '{"experiment_id": "0", "user_id": "alice", '
    '"tags": [{"key": "mlflow\\u002euser", "value": "alice"}]}',
    "empty and null": json.dumps({"experiment_id": "0", "user_id": "", "tags": None}),
}


@pytest.mark.parametrize("claims", RUN_CLAIMS)
@pytest.mark.parametrize(
    "path",
    [
        "api/2.0/mlflow/runs/create",
        "ajax-api/2.0/mlflow/runs/create",  # the UI's
        "api/2.0/mlflow/runs/create-promptlab-run",
    ],
)
def test_runs_are_created_for_the_authenticated_user_whatever_the_client_claims(
    echo_proxy, background, fresh_token, path, claims
):
    """MLflow receives ``user_id`` and the tag ``mlflow.user`` (once) equal to the user the hub
    says the token is, whatever the body claimed; the rest of the body as sent."""
    user = f"user-{secrets.token_hex(4)}"
    token = fresh_token(user)
    r = httpx.post(
        echo_proxy.url + path,
        headers={**auth(token), "Content-Type": "application/json"},
        content=RUN_CLAIMS[claims],
    )
    assert r.status_code == 200, r.text
    assert token in background.tokens_seen  # the hub was asked: no earlier answer was reused
    seen = r.json()
    assert seen["path"] == PREFIX + path
    names = {k.lower(): v for k, v in seen["headers"]}
    assert int(names["content-length"]) == seen["length"] == len(seen["body"].encode())
    assert mlflow_auth.verify(
        SIGNING_KEY.encode(), names["x-werkbank-assertion"], "POST", seen["path"], ""
    ) == Identity(user, False, ())
    received = json.loads(seen["body"])
    assert received["user_id"] == user
    tags = received["tags"]
    assert [tag["value"] for tag in tags if tag["key"] == "mlflow.user"] == [user]
    sent = json.loads(RUN_CLAIMS[claims])
    others = [tag for tag in sent.get("tags") or [] if tag["key"] != "mlflow.user"]
    assert sorted(map(json.dumps, (tag for tag in tags if tag["key"] != "mlflow.user"))) == sorted(
        map(json.dumps, others)
    )
    rest = {key: value for key, value in sent.items() if key not in ("user_id", "tags")}
    assert {key: value for key, value in received.items() if key not in ("user_id", "tags")} == rest


SMALL_MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def small_proxy(background, tmp_path_factory):
    """The proxy in front of the echo, with ``--max-body-size`` 1 MiB."""
    proxy = ProxyProcess(
        f"http://127.0.0.1:{background.echo_port}",
        background.hub_port,
        tmp_path_factory.mktemp("p") / "log",
        max_body_size=SMALL_MAX_BODY,
    )
    yield proxy
    proxy.stop()


def pieces(total: int, size: int = 256 * 1024):
    """``total`` bytes of body, in pieces of ``size``."""
    for start in range(0, total, size):
        yield b"a" * min(size, total - start)


def refused_exchange(port: int, head: bytes, body: Iterable[bytes]) -> tuple[int, Message, bytes]:
    """Send a request's head and as much of ``body`` as the server takes (it may answer and close
    before the end); the answer's status, headers and body."""
    import http.client

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for data in body:
                sock.sendall(data)
        except OSError:
            pass  # answered and closed: the answer is waiting to be read
        response = http.client.HTTPResponse(sock, method=head.split(b" ", 1)[0].decode())
        response.begin()
        return response.status, response.headers, response.read()


UPLOAD = "api/2.0/mlflow-artifacts/artifacts/0/run/artifacts/big.bin"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(
    ("proxy", "method", "path", "limit"),
    [
        # A rule's body, read whole to be checked: REWRITE_LIMIT (the default max body size is larger),
        ("echo_proxy", "POST", "api/2.0/mlflow/runs/log-batch", mlflow_proxy.REWRITE_LIMIT),
        # ... or the max body size where that is smaller.
        ("small_proxy", "POST", "api/2.0/mlflow/runs/log-batch", SMALL_MAX_BODY),
        # An upload, streamed to MLflow: --max-body-size.
        ("small_proxy", "PUT", UPLOAD, SMALL_MAX_BODY),
    ],
    ids=["log-batch", "log-batch-small-max", "upload"],
)
def test_bodies_past_the_limit_are_refused_with_413(request, background, proxy, method, path, limit, framing):
    """A body of the limit's size goes through; one byte more is answered 413 with MLflow's JSON
    error, and MLflow gets no request of it: none at all when the proxy reads the body first or
    knows its length (Content-Length), none that completes for a chunked upload on its way."""
    proxy = request.getfixturevalue(proxy)
    url = proxy.url + path
    ok = httpx.request(
        method,
        url,
        headers=auth("alice-token"),
        content=b"a" * limit if framing == "content-length" else pieces(limit),
        timeout=60,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["length"] == limit  # all of it reached MLflow

    requests_before, answered_before = len(background.echo_requests), len(background.echo_answered)
    head = f"{method} {PREFIX}{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-token\r\n"
    if framing == "content-length":
        # Refused on the head alone, before any of the body is sent.
        head += f"Content-Length: {limit + 1}\r\n\r\n"
        body = []
    else:
        head += "Transfer-Encoding: chunked\r\n\r\n"
        body = [b"%x\r\n%s\r\n" % (len(data), data) for data in pieces(limit + 1)] + [b"0\r\n\r\n"]
    status, headers, content = refused_exchange(proxy.port, head.encode(), body)
    assert status == 413, (status, content)
    assert headers["Content-Type"] == "application/json"
    error = json.loads(content)
    assert error["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert set(error) == {"error_code", "message"} and str(limit) in error["message"]
    assert headers["Connection"] == "close"  # the rest of the body is not read
    time.sleep(0.3)  # time for anything forwarded after all to arrive
    assert background.echo_answered[answered_before:] == []
    if not (framing == "chunked" and path == UPLOAD):
        assert background.echo_requests[requests_before:] == []
    # The proxy serves on.
    after = httpx.post(proxy.url + "api/2.0/mlflow/runs/search", headers=auth("alice-token"), json={})
    assert after.status_code == 200


def test_uploads_refused_or_abandoned_midway_leave_no_request_behind(background, tmp_path):
    """A chunked upload refused past the limit, and one whose client goes away, end their requests in
    the proxy: tornado's wait for the rest of the body ends when the connection closes. An abandoned
    request still waiting (a handler never freed) is logged as a 500 when the proxy stops."""
    proxy = ProxyProcess(
        f"http://127.0.0.1:{background.echo_port}",
        background.hub_port,
        tmp_path / "log",
        max_body_size=SMALL_MAX_BODY,
    )
    head = (
        f"PUT {PREFIX}{UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-token\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    try:
        body = [b"%x\r\n%s\r\n" % (len(data), data) for data in pieces(SMALL_MAX_BODY + 1)]
        status, _, content = refused_exchange(proxy.port, head, body)
        assert status == 413, content
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(head + body[0])  # on its way to MLflow, then the client is gone
            time.sleep(0.3)
        time.sleep(0.3)
    finally:
        proxy.stop()
    log = proxy.log()
    assert f"413 PUT {PREFIX}{UPLOAD} (alice" in log, log
    assert not re.findall(r"mlflow_proxy\] 5\d\d .*", log), log


def test_large_bodies_stream_through_without_being_held(echo_proxy):
    size = 96 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()

    def body():
        for _ in range(size // len(block)):
            digest.update(block)
            yield block

    rss_before = echo_proxy.peak_rss_kb()
    r = httpx.put(
        echo_proxy.url + "api/2.0/mlflow-artifacts/artifacts/0/run/artifacts/big.bin",
        headers={**auth("alice-token"), "Content-Length": str(size)},
        content=body(),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert (
        seen["path"] == "/api/2.0/mlflow-artifacts/artifacts/0/run/artifacts/big.bin"
    )  # MLflow's streaming route
    assert seen["length"] == size
    assert seen["sha256"] == digest.hexdigest()
    # Held in memory: a few chunks at a time, not the body.
    assert echo_proxy.peak_rss_kb() - rss_before < 32 * 1024, echo_proxy.log()[-2000:]


def test_an_unreachable_mlflow_is_a_503(background, tmp_path):
    proxy = ProxyProcess(f"http://127.0.0.1:{free_port()}", background.hub_port, tmp_path / "log")
    try:
        r = httpx.get(proxy.url + "api/2.0/mlflow/experiments/search", headers=auth("alice-token"))
        assert r.status_code == 503
        assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert httpx.get(proxy.url + "health").status_code == 503
    finally:
        proxy.stop()


# --- against a real MLflow server -------------------------------------------------------------


class UserClient:
    """An MlflowClient of the proxy acting as one user: MLflow's client reads
    MLFLOW_TRACKING_TOKEN at every request, so each call sets it to this user's token first."""

    def __init__(self, url: str, token: str | None, monkeypatch: pytest.MonkeyPatch):
        self._client, self._token, self._monkeypatch = MlflowClient(url), token, monkeypatch

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            if self._token is None:
                self._monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
            else:
                self._monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", self._token)
            return method(*args, **kwargs)

        return call


@pytest.fixture
def client_for(mlflow_behind_proxy, monkeypatch):
    """``client_for(token)``: an MlflowClient of the proxy that sends ``token`` (as
    MLFLOW_TRACKING_TOKEN, like a session), or none."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = mlflow_behind_proxy.proxy.url.rstrip("/")
    return lambda token: UserClient(url, token, monkeypatch)


def test_mlflow_client_through_the_proxy_records_the_user(client_for):
    alice = client_for("alice-token")
    experiment_id = alice.create_experiment(
        f"proxy-{os.getpid()}", tags={"werkbank.owner": "mallory", "topic": "t"}
    )
    assert alice.get_experiment(experiment_id).tags == {"werkbank.owner": "alice", "topic": "t"}
    run = alice.create_run(experiment_id, tags={"mlflow.user": "mallory", "note": "n"})
    stored = alice.get_run(run.info.run_id)
    assert stored.info.user_id == "alice"
    assert stored.data.tags["mlflow.user"] == "alice"
    assert stored.data.tags["note"] == "n"
    alice.log_batch(run.info.run_id, tags=[RunTag("phase", "train")])
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        alice.set_tag(run.info.run_id, "mlflow.user", "mallory")
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        alice.delete_tag(run.info.run_id, "mlflow.user")
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        alice.log_batch(run.info.run_id, tags=[RunTag("mlflow.user", "mallory")])
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        alice.set_experiment_tag(experiment_id, "werkbank.owner", "mallory")
    assert alice.get_run(run.info.run_id).data.tags["mlflow.user"] == "alice"


def test_artifacts_and_the_ui_through_the_proxy(mlflow_behind_proxy, client_for, tmp_path):
    alice = client_for("alice-token")
    experiment_id = alice.create_experiment(f"artifacts-{os.getpid()}")
    run = alice.create_run(experiment_id)
    payload = os.urandom(5 * 1024 * 1024)
    (tmp_path / "weights.bin").write_bytes(payload)
    alice.log_artifact(run.info.run_id, str(tmp_path / "weights.bin"))
    assert [f.path for f in alice.list_artifacts(run.info.run_id)] == ["weights.bin"]
    local = alice.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "down"))
    assert Path(local).read_bytes() == payload
    ui = httpx.get(mlflow_behind_proxy.proxy.url, headers=auth("alice-token"))
    assert ui.status_code == 200
    assert "<title>MLflow</title>" in ui.text
    # The page loads the script that sends JupyterHub's XSRF token with the UI's requests ...
    assert '<head><script src="werkbank-xsrf.js"></script>' in ui.text.replace("\n", "")
    assert int(ui.headers["Content-Length"]) == len(ui.content)
    assert "content-security-policy" not in {k.lower() for k in ui.headers}  # that would block it
    shim = httpx.get(mlflow_behind_proxy.proxy.url + "werkbank-xsrf.js")  # ... served beside it
    assert shim.status_code == 200
    assert shim.headers["Content-Type"].startswith("text/javascript")
    assert "X-XSRFToken" in shim.text
    js = next(part.split('"')[0] for part in ui.text.split('src="')[1:] if part.startswith("static-files/"))
    script = httpx.get(mlflow_behind_proxy.proxy.url + js, headers=auth("alice-token"))
    assert script.status_code == 200
    unauthenticated = httpx.get(mlflow_behind_proxy.proxy.url + js)
    assert unauthenticated.status_code == 302
    # HEAD: MLflow's headers, no body, and the connection stays usable. (MLflow's permission
    # checks refuse HEAD on its API and UI routes; static files are open to every hub user.)
    with httpx.Client(headers=auth("alice-token")) as client:
        head = client.head(mlflow_behind_proxy.proxy.url + js)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["Content-Length"]) == len(script.content)
        assert client.get(mlflow_behind_proxy.proxy.url + "health").text == "OK"


def test_without_a_token_the_mlflow_client_gets_a_clear_error(client_for):
    anonymous = client_for(None)
    with pytest.raises(MlflowException, match="UNAUTHENTICATED"):
        anonymous.search_experiments()


def test_the_module_runs_only_as_a_hub_service(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_URL", raising=False)
    with pytest.raises(SystemExit, match="JupyterHub service"):
        mlflow_proxy.main(["--upstream", "http://127.0.0.1:5000"])


# --- who sees what: MLflow's permission checks, told the user by the proxy ---------------------


def refused(call, *args, **kwargs) -> None:
    with pytest.raises(MlflowException) as info:
        call(*args, **kwargs)
    assert "403" in str(info.value) or "PERMISSION_DENIED" in str(info.value), info.value


def test_users_see_and_change_only_their_own_experiments(client_for, tmp_path):
    alice = client_for("alice-token")
    experiment_id = alice.create_experiment(f"alice/private-{os.getpid()}")
    run = alice.create_run(experiment_id)
    alice.log_metric(run.info.run_id, "loss", 0.5)
    (tmp_path / "notes.txt").write_text("alice's")
    alice.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))

    bob = client_for("bob-token")
    refused(bob.get_experiment, experiment_id)
    refused(bob.get_run, run.info.run_id)
    refused(bob.get_metric_history, run.info.run_id, "loss")
    refused(bob.download_artifacts, run.info.run_id, "notes.txt", str(tmp_path))
    refused(bob.log_metric, run.info.run_id, "loss", 99.0)
    refused(bob.delete_run, run.info.run_id)
    refused(bob.delete_experiment, experiment_id)
    refused(bob.create_run, experiment_id)
    assert experiment_id not in {e.experiment_id for e in bob.search_experiments()}
    # MLflow's shared experiment 0 is closed to everybody but admins; sessions are given an
    # experiment of their own (MLFLOW_EXPERIMENT_NAME).
    refused(bob.create_run, "0")

    # Nothing of alice's changed, and an admin sees it all.
    erin = client_for("erin-token")
    stored = erin.get_run(run.info.run_id)
    assert stored.info.lifecycle_stage == "active"
    assert stored.data.metrics == {"loss": 0.5}
    assert experiment_id in {e.experiment_id for e in erin.search_experiments()}
    assert [f.path for f in erin.list_artifacts(run.info.run_id)] == ["notes.txt"]


def test_project_experiments_are_shared_with_the_group(client_for):
    alice = client_for("alice-token")
    name = f"vision/shared-{os.getpid()}"
    experiment_id = alice.create_experiment(name)
    alices_run = alice.create_run(experiment_id)
    alice.log_metric(alices_run.info.run_id, "accuracy", 0.9)

    dave = client_for("dave-token")  # also in the group vision
    assert dave.get_experiment_by_name(name).experiment_id == experiment_id
    assert dave.get_run(alices_run.info.run_id).data.metrics == {"accuracy": 0.9}
    daves_run = dave.create_run(experiment_id)
    assert dave.get_run(daves_run.info.run_id).info.user_id == "dave"
    assert {r.info.run_id for r in alice.search_runs([experiment_id])} == {
        alices_run.info.run_id,
        daves_run.info.run_id,
    }

    bob = client_for("bob-token")  # not in the group
    refused(bob.get_experiment, experiment_id)
    refused(bob.get_run, daves_run.info.run_id)
    with pytest.raises(MlflowException, match="your user name or one of your groups"):
        bob.create_experiment(f"vision/squatted-{os.getpid()}")
    # Renaming into a group's namespace shares the experiment with the group too.
    own = alice.create_experiment(f"alice/later-shared-{os.getpid()}")
    refused(dave.get_experiment, own)
    alice.rename_experiment(own, f"vision/now-shared-{os.getpid()}")
    assert dave.get_experiment(own).name == f"vision/now-shared-{os.getpid()}"


def test_mlflow_trusts_only_assertions_signed_for_the_request(mlflow_behind_proxy):
    """The server listens on loopback, which every job on the hub's machine reaches: who is
    asking counts only as an assertion signed with the key for this very request, and fresh."""
    base = f"http://127.0.0.1:{mlflow_behind_proxy.server.port}"
    target = PREFIX + "api/2.0/mlflow/experiments/search?max_results=5"
    erin = Identity("erin", admin=True)
    key = SIGNING_KEY.encode()

    def get(*headers: tuple[str, str], path: str = target) -> int:
        return httpx.get(base + path, headers=list(headers)).status_code

    assert get(("X-Werkbank-User", "erin"), ("X-Werkbank-Admin", "1")) == 401
    assert get(assertion_header(erin, key, "GET", target)) == 200
    assert get(assertion_header(erin, b"guessed", "GET", target)) == 401
    assert get(assertion_header(erin, key, "POST", target)) == 401
    other = PREFIX + "api/2.0/mlflow/experiments/search?max_results=6"
    assert get(assertion_header(erin, key, "GET", other)) == 401
    stale = ("X-Werkbank-Assertion", mlflow_auth.sign(key, erin, "GET", target.partition("?")[0],
                                                      "max_results=5", now=time.time() - 60))  # fmt: skip
    assert get(stale) == 401
    good = assertion_header(erin, key, "GET", target)
    assert get(good, good) == 401  # two of them
    assert get(good, ("X_Werkbank_Assertion", good[1])) == 401  # the WSGI layer joins the spellings


def test_a_user_cannot_pass_for_a_service(client_for):
    with pytest.raises(MlflowException, match="service:"):
        client_for("mallory-token").search_experiments()


def test_a_restarted_server_keeps_runs_and_permissions(mlflow_behind_proxy, client_for):
    alice, bob = client_for("alice-token"), client_for("bob-token")
    experiment_id = alice.create_experiment(f"alice/kept-{os.getpid()}")
    run = alice.create_run(experiment_id)
    alice.log_metric(run.info.run_id, "loss", 0.25)
    server = mlflow_behind_proxy.server
    server.stop()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_STATIC_PREFIX", PREFIX.rstrip("/"))
        server.start(timeout=180)
    assert alice.get_run(run.info.run_id).data.metrics == {"loss": 0.25}
    refused(bob.get_run, run.info.run_id)


# --- attacks, by class ------------------------------------------------------------------------
# Each class of attack the review of 2026-12 found (issue 11): spelled-around identity headers,
# bodies smuggled into pooled connections, rules bypassed by encoding. Pure properties over
# every spelling hypothesis finds, then the running proxy in front of the echo (what MLflow would
# receive) and of a real MLflow server.

RULE_PATHS = [api + endpoint for api in ("api/2.0/mlflow/", "ajax-api/2.0/mlflow/", "api/3.0/mlflow/")
              for endpoint in mlflow_proxy._BODY_RULES]  # fmt: skip


@st.composite
def spellings_of(draw, path: str) -> str:
    """``path`` as a client could write it: at a few places a character percent-encoded (either
    hex case) or in the other case, a dot segment or a doubled slash; maybe a trailing slash."""
    chars = list(path)
    for i in sorted(draw(st.sets(st.integers(0, len(path) - 1), max_size=3)), reverse=True):
        kind = draw(st.sampled_from(["encode", "case", "segment"]))
        if kind == "encode":
            chars[i] = draw(st.sampled_from(["%{:02X}", "%{:02x}"])).format(ord(chars[i]))
        elif kind == "case":
            chars[i] = chars[i].swapcase()
        elif chars[i] == "/":
            chars[i] += draw(st.sampled_from(["/", "./", "../x/", "%2e/", ".%2E/"]))
    return "".join(chars) + draw(st.sampled_from(["", "", "/"]))


@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_no_spelling_of_a_rule_path_escapes_its_rule(data):
    """Whatever a client writes, either the path is refused (400) or the rule of the endpoint
    MLflow routes it to applies: MLflow routes the decoded path."""
    path = data.draw(st.sampled_from(RULE_PATHS))
    spelled = data.draw(spellings_of(PREFIX + path))
    try:
        routed = mlflow_proxy.routed_path(spelled)
    except Rejected as e:
        assert e.status_code == 400
        event("refused")
        return
    event("routed")
    if routed.rstrip("/").lower() == (PREFIX + path).lower():
        assert body_rule("POST", routed, PREFIX) == mlflow_proxy._BODY_RULES[path.rsplit("mlflow/", 1)[1]]
    for method in ("DELETE", "PUT", "PATCH"):
        assert body_rule(method, routed, PREFIX) == body_rule("POST", routed, PREFIX)


@pytest.mark.parametrize(
    "path",
    ["runs/set%2Dtag", "experiments/cr%65ate", "runs/log%2Dbatch", "runs/set-tag%2F", "./runs/set-tag",
     "runs/../runs/set-tag", "/runs/set-tag", "runs/set-tag%00", "runs/set-tag%ff", "runs/set-tag%zz",
     "runs/set-tag%", "runs\\set-tag", "runs/%2e%2e/runs/set-tag"],
)  # fmt: skip
def test_oddly_encoded_paths_are_refused(path):
    with pytest.raises(Rejected) as refused:
        mlflow_proxy.routed_path(PREFIX + "api/2.0/mlflow/" + path)
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    ("path", "decoded"),
    [("artifacts/my%20model.pt", "artifacts/my model.pt"), ("artifacts/j%C3%BCrgen", "artifacts/jürgen"),
     ("runs/search", "runs/search"), ("", "")],
)  # fmt: skip
def test_plain_paths_are_decoded(path, decoded):
    assert mlflow_proxy.routed_path(PREFIX + path) == PREFIX + decoded


def flask_reads(body: bytes):
    """What MLflow's Flask handlers read from a JSON body (``get_json(force=True)``, then a
    second decoding for "older clients" that send JSON inside a JSON string), or None."""
    import flask

    try:
        data = flask.Flask("reader").json.loads(body)
        if isinstance(data, str):
            data = json.loads(data)
    except ValueError:
        return None
    return data


@st.composite
def json_spellings(draw, value: object) -> str:
    """JSON text for ``value`` in a spelling a client may choose: characters of strings
    escaped as backslash-u (either hex case) or not, white space around tokens."""
    if isinstance(value, dict):
        space = draw(st.sampled_from(["", " ", "\n\t"]))
        items = [
            f"{draw(json_spellings(k))}{space}:{space}{draw(json_spellings(v))}" for k, v in value.items()
        ]
        return "{" + space + ("," + space).join(items) + space + "}"
    if isinstance(value, list):
        return "[" + ",".join(draw(json_spellings(v)) for v in value) + "]"
    if isinstance(value, str):
        chars = [
            draw(st.sampled_from([c, f"\\u{ord(c):04x}", f"\\u{ord(c):04X}"])) if c.isascii() else c
            for c in value
        ]
        return '"' + "".join(chars) + '"'
    return json.dumps(value)


#: The encodings Python's JSON reader (and so Flask's) detects; UTF-8 most often, as clients send it.
ENCODINGS = ["utf-8"] * 8 + [
    "utf-8-sig",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
]


@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_no_body_encoding_sets_a_protected_tag(data):
    """Whatever bytes a client sends, a body that MLflow would read as setting (or deleting) a
    protected tag is refused by the proxy."""
    path, protected = data.draw(
        st.sampled_from(
            [
                ("runs/set-tag", "mlflow.user"),
                ("runs/delete-tag", "mlflow.user"),
                ("runs/log-batch", "mlflow.user"),
                ("experiments/set-experiment-tag", "werkbank.owner"),
            ]
        )
    )
    key = data.draw(st.sampled_from([protected, protected, "note"]))
    if path == "runs/log-batch":
        value = {"run_id": "r1", "tags": [{"key": "phase", "value": "x"}, {"key": key, "value": "mallory"}]}
    else:
        value = {"run_id": "r1", "experiment_id": "1", "key": key, "value": "mallory"}
    text = data.draw(json_spellings(value))
    if data.draw(st.integers(0, 3)) == 0:
        text = json.dumps(text)  # JSON inside a JSON string
    body = text.encode(data.draw(st.sampled_from(ENCODINGS)))
    read = flask_reads(body)
    sets_protected = isinstance(read, dict) and (
        read.get("key") == protected or any(t.get("key") == protected for t in read.get("tags", []))
    )
    rule = body_rule("POST", PREFIX + "api/2.0/mlflow/" + path, PREFIX)
    try:
        out = rewrite_body(rule, body, ALICE)
    except Rejected as e:
        assert e.status_code in (400, 403)
        event(f"refused {e.status_code}")
        return
    event("forwarded")
    assert not sets_protected, (body, read)
    assert out.body == body


def raw_exchange(port: int, requests: list[bytes], timeout: float = 10) -> list[bytes]:
    """Send ``requests`` over one connection, one after the other, each once the answer to the
    one before has been read; the raw answers (status line and headers, up to the blank line)."""
    import http.client

    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for raw in requests:
            sock.sendall(raw)
            method = raw.split(b" ", 1)[0].decode()
            response = http.client.HTTPResponse(sock, method=method)
            try:
                response.begin()
            except (http.client.RemoteDisconnected, ConnectionError):
                answers.append(b"(connection closed)")
                break
            response.read()
            answers.append(f"{response.status} {response.reason}\r\n{response.headers}".encode())
            if response.will_close:
                break
    return answers


def smuggling(method: str, framing: str, token: str, path: str, smuggled: bytes) -> bytes:
    """A request whose body is another request, framed with ``framing``."""
    if framing == "chunked":
        body_header = b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    else:
        body_header = b"Content-Length: %d\r\n" % len(smuggled)
        body = smuggled
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n".encode()
        + body_header + b"\r\n" + body
    )  # fmt: skip


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "DELETE", "POST", "PUT", "PATCH"])
def test_no_body_is_smuggled_into_a_pooled_connection(echo_proxy, background, method, framing):
    """A body is framed on its way to MLflow whatever the method: the request inside it never
    reaches MLflow as a request of its own (nor glued to the next user's request)."""
    marker = f"/smuggled-{method}-{framing}"
    smuggled = f"GET {marker} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Werkbank-Admin: 1\r\n\r\n".encode()
    attack = smuggling(method, framing, "bob-token", PREFIX + "api/2.0/mlflow/runs/search", smuggled)
    follow = (
        f"GET {PREFIX}api/2.0/mlflow/runs/search HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer bob-token\r\n\r\n"
    )
    answers = raw_exchange(echo_proxy.port, [attack, follow.encode()])
    if method in ("GET", "HEAD", "OPTIONS"):
        assert answers[0].startswith(b"400"), answers
    else:
        assert answers[0].startswith(b"200"), answers
    # Other users' requests go over the pooled connections now; none carries the smuggled bytes.
    for _ in range(3):
        r = httpx.post(echo_proxy.url + "api/2.0/mlflow/runs/search", headers=auth("alice-token"), json={})
        assert r.status_code == 200
        assert r.json()["path"] == PREFIX + "api/2.0/mlflow/runs/search"
    assert not [path for path in background.echo_requests if path.startswith("/smuggled")]


def test_a_streamed_body_of_an_unchunked_method_is_never_sent_unframed():
    from werkbank_spawner.tracking.upstream import Upstream

    async def body():
        yield b"GET /smuggled HTTP/1.1\r\n\r\n"

    async def attempt():
        upstream = Upstream("http://127.0.0.1:9")
        with pytest.raises(ValueError, match="unframed"):
            await upstream.stream("DELETE", "/x", [], body(), None)

    asyncio.run(attempt())


RESERVED = ["x-werkbank-admin", "x-werkbank-user", "x-werkbank-groups", "x-werkbank-assertion"]


@st.composite
def header_spellings(draw) -> str:
    name = draw(st.sampled_from(RESERVED))
    return "".join(draw(st.sampled_from(["_", "-"] if c == "-" else [c.lower(), c.upper()])) for c in name)


@given(names=st.lists(header_spellings(), min_size=1, max_size=4))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_header_spelling_changes_who_mlflow_sees(echo_proxy, names):
    """Headers in werkbank's namespace, in any case, with '_' for '-', repeated: MLflow gets
    one assertion, for the hub's user, whatever the client sent."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", echo_proxy.port, timeout=10)
    try:
        conn.putrequest("GET", PREFIX + "api/2.0/mlflow/experiments/search?max_results=5")
        conn.putheader("Authorization", "Bearer bob-token")
        for name in names:
            conn.putheader(name, "1" if "admin" in name.lower() else "erin")
        conn.endheaders()
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status == 400:
        event("refused by tornado")
        return
    assert response.status == 200, answer
    seen = json.loads(answer)
    reserved = [(k, v) for k, v in seen["headers"] if mlflow_proxy.is_reserved_header(k)]
    assert [k for k, _ in reserved] == ["X-Werkbank-Assertion"]
    who = mlflow_auth.verify(SIGNING_KEY.encode(), reserved[0][1], "GET", seen["path"], seen["query"])
    assert who == Identity("bob")


@pytest.mark.parametrize(
    "name", ["X_Werkbank_Admin", "x_werkbank_admin", "X-Werkbank_Admin", "X-WERKBANK-ADMIN"]
)
def test_spoofed_admin_headers_do_not_reach_mlflow(client_for, mlflow_behind_proxy, name):
    """Review finding 1, against the real server: a user who adds an admin claim in any spelling
    still sees only what is theirs, and is no admin in MLflow's user table."""
    alice = client_for("alice-token")
    hidden = alice.create_experiment(f"alice-only-{name}-{os.getpid()}")
    url = mlflow_behind_proxy.proxy.url + "api/2.0/mlflow/experiments/search"
    groups = name[: -len("admin")] + "Groups"
    spoof = {name: "1", groups: "vision"}
    r = httpx.post(url, headers={**auth("bob-token"), **spoof}, json={"max_results": 1000})
    assert r.status_code == 200, r.text
    assert hidden not in [e["experiment_id"] for e in r.json().get("experiments", [])]
    # An admin-only route of MLflow's auth app.
    r = httpx.get(
        mlflow_behind_proxy.proxy.url + "api/2.0/mlflow/users/get", params={"username": "alice"},
        headers={**auth("bob-token"), **spoof},
    )  # fmt: skip
    assert r.status_code == 403, r.text


def test_encoded_paths_and_bodies_do_not_bypass_the_rules(client_for, mlflow_behind_proxy):
    """Review finding 3, against the real server: no run attribution is forged and no other
    user's experiment name squatted by spelling the endpoint or the body differently."""
    bob = client_for("bob-token")
    run = bob.create_run(bob.create_experiment(f"bob-encodings-{os.getpid()}"))
    run_id = run.info.run_id
    api = mlflow_behind_proxy.proxy.url + "api/2.0/mlflow/"
    forged = {"run_id": run_id, "key": "mlflow.user", "value": "alice"}
    forged_tag = {"key": "mlflow.user", "value": "alice"}
    for path, body in [
        ("runs/set%2Dtag", json.dumps(forged).encode()),
        ("runs/set-tag", json.dumps(forged).encode("utf-16")),
        ("runs/set-tag", json.dumps(json.dumps(forged)).encode()),
        ("runs/./set-tag", json.dumps(forged).encode()),
        ("runs//set-tag", json.dumps(forged).encode()),
        ("runs/log%2Dbatch", json.dumps({"run_id": run_id, "tags": [forged_tag]}).encode()),
        ("experiments/cr%65ate", json.dumps({"name": f"alice/default-{os.getpid()}"}).encode()),
    ]:
        headers = {**auth("bob-token"), "Content-Type": "application/json"}
        r = httpx.post(api + path, headers=headers, content=body)
        assert r.status_code in (400, 403), (path, r.status_code, r.text)
    assert bob.get_run(run_id).data.tags["mlflow.user"] == "bob"
    alice = client_for("alice-token")
    assert alice.get_experiment_by_name(f"alice/default-{os.getpid()}") is None


def test_smuggled_requests_never_reach_mlflow(client_for, mlflow_behind_proxy):
    """Review finding 2, against the real server: bob's bodies that hold requests (every method,
    both framings) leave the next user's answers right and MLflow untouched."""
    proxy_port = mlflow_behind_proxy.proxy.port
    name = f"bob/smuggled-{os.getpid()}"
    create = json.dumps({"name": name}).encode()
    smuggled = (
        f"POST {PREFIX}api/2.0/mlflow/experiments/create HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(create)}\r\n\r\n"
    ).encode() + create
    alice = client_for("alice-token")
    mine = alice.create_experiment(f"alice-smuggle-check-{os.getpid()}")
    for method in ("GET", "DELETE", "POST", "PATCH"):
        for framing in ("chunked", "content-length"):
            search = PREFIX + "api/2.0/mlflow/experiments/search"
            attack = smuggling(method, framing, "bob-token", search, smuggled)
            answers = raw_exchange(proxy_port, [attack])
            # GET: refused here (400); the others: whatever MLflow answers searching with them.
            assert answers[0][:3] in (b"400", b"200", b"403", b"405"), answers
            assert alice.get_experiment(mine).name == f"alice-smuggle-check-{os.getpid()}"
    assert client_for("bob-token").get_experiment_by_name(name) is None


def test_the_hub_creates_each_users_default_experiment_as_the_user(client_for, mlflow_behind_proxy):
    from werkbank_spawner.tracking.experiments import ensure_default_experiment

    server_url = mlflow_behind_proxy.server.url  # with the static prefix
    key = SIGNING_KEY.encode()
    user = f"dave-{mlflow_behind_proxy.backend}"  # a user the other tests never create
    assert asyncio.run(ensure_default_experiment(server_url, key, user)) is True
    assert asyncio.run(ensure_default_experiment(server_url, key, user)) is False
    admin = client_for("erin-token")
    experiment = admin.get_experiment_by_name(f"{user}/default")
    assert experiment.tags["werkbank.owner"] == user
    # Nobody else reads it; the name cannot be taken by anyone else either.
    alice = client_for("alice-token")
    refused(alice.get_experiment, experiment.experiment_id)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        alice.create_experiment(f"{user}/default")


NODE_HARNESS = r"""
// A page at /services/mlflow/ with an _xsrf cookie, a fetch and an XMLHttpRequest that record
// what they are asked to send; then the proxy's script, then the UI's calls.
const sent = [];
globalThis.window = globalThis;
globalThis.location = new URL("http://hub.example.org/services/mlflow/");
globalThis.document = { cookie: "other=1; _xsrf=2%7Cabc%7Cdef" };
window.fetch = (input, init) => {
  sent.push(["fetch", String(input), new Headers(init && init.headers).get("X-XSRFToken")]);
  return Promise.resolve();
};
globalThis.XMLHttpRequest = function () { this.headers = {}; };
XMLHttpRequest.prototype.open = function (method, url) { this.url = url; };
XMLHttpRequest.prototype.setRequestHeader = function (k, v) { this.headers[k] = v; };
XMLHttpRequest.prototype.send = function () {
  sent.push(["xhr", this.url, this.headers["X-XSRFToken"] || null]);
};
require("vm").runInThisContext(require("fs").readFileSync(process.argv[2], "utf8"));
fetch("ajax-api/2.0/mlflow/runs/search", { method: "POST", headers: { "Content-Type": "application/json" } });
fetch("https://elsewhere.example/x", { method: "POST" });
const xhr = new XMLHttpRequest();
xhr.open("POST", "/services/mlflow/ajax-api/2.0/mlflow/runs/update");
xhr.send("{}");
console.log(JSON.stringify(sent));
"""


def test_the_xsrf_script_adds_the_token_to_same_origin_requests_only(tmp_path):
    """The script MLflow's UI pages load, run by Node.js (which werkbank installs for the hub's
    proxy) against stand-ins for the browser's fetch and XMLHttpRequest."""
    (tmp_path / "xsrf.js").write_bytes(mlflow_proxy.XSRF_SCRIPT_SOURCE)
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    out = subprocess.run(
        ["node", str(tmp_path / "harness.js"), str(tmp_path / "xsrf.js")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        ["fetch", "ajax-api/2.0/mlflow/runs/search", "2|abc|def"],
        ["fetch", "https://elsewhere.example/x", None],
        ["xhr", "/services/mlflow/ajax-api/2.0/mlflow/runs/update", "2|abc|def"],
    ]


def test_a_refusal_before_the_request_was_read_says_it_closes_the_connection(echo_proxy):
    """tornado closes the connection after an answer given in prepare(); a proxy in front
    (configurable-http-proxy) must be told, or it reuses the connection and fails the next
    request with a 503."""
    search = f"GET {PREFIX}api/2.0/mlflow/runs/search HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answers = raw_exchange(echo_proxy.port, [search, search])
    assert len(answers) == 1
    assert answers[0].startswith(b"401")
    assert b"Connection: close" in answers[0]
    # The same for a browser sent to log in (a redirect, also answered in prepare()).
    page = f"GET {PREFIX} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answers = raw_exchange(echo_proxy.port, [page, page])
    assert len(answers) == 1
    assert answers[0].startswith(b"302")
    assert b"Connection: close" in answers[0]
