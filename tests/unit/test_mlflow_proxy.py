"""The authenticating MLflow proxy (werkbank_spawner.mlflow_proxy).

Pure parts (headers, paths, body rules) directly; the running proxy as the hub runs it (a
``python -m werkbank_spawner.mlflow_proxy`` process) in front of a real ``mlflow server`` and of
an echo server that shows what the upstream receives. The hub is a stub answering
``/hub/api/user`` for a few tokens, as JupyterHub does; browsers' OAuth logins and the real hub
are covered by tests/integration/test_mlflow_service.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from tornado import httputil, web

from tests.mlflow_server import MlflowServer, free_port
from werkbank_spawner import mlflow_auth, mlflow_proxy
from werkbank_spawner.mlflow_auth import Identity, encode, encode_groups, parse_groups
from werkbank_spawner.mlflow_proxy import (
    BodyRule,
    Caller,
    MlflowProxy,
    ProxyHandler,
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
from werkbank_spawner.spawner import mlflow_env

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
    assert mlflow_env(proxied, env) == {
        "MLFLOW_TRACKING_URI": "http://hub:8000/services/mlflow",
        "MLFLOW_TRACKING_TOKEN": "server-token",
        "MLFLOW_EXPERIMENT_NAME": "alice/default",  # not MLflow's shared experiment 0
    }
    bare = SimpleNamespace(mlflow_tracking_uri="http://mlflow:5000", mlflow_send_token=False)
    assert mlflow_env(bare, env) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_EXPERIMENT_NAME": "alice/default",
    }
    assert mlflow_env(SimpleNamespace(mlflow_tracking_uri="", mlflow_send_token=True), env) == {}


# --- cross-site requests with a cookie (the handler's check, on made-up requests) -------------


def cookie_request(method: str, *pairs: tuple[str, str]) -> ProxyHandler:
    proxy = MlflowProxy(upstream="http://127.0.0.1:1", prefix=PREFIX, hub_auth=mock.Mock())
    request = httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine(method, PREFIX + "ajax-api/2.0/mlflow/runs/search", "HTTP/1.1"),
        headers=headers(("Host", "hub.example.org"), *pairs),
        connection=mock.Mock(),
    )
    return ProxyHandler(proxy.app(), request, proxy=proxy)


@pytest.mark.parametrize(
    ("method", "pairs", "allowed"),
    [
        ("GET", [], True),  # a client that is not a browser, or an old one, reading
        ("GET", [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate")], True),  # a link
        (
            "GET",
            [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "cors")],
            False,
        ),  # another site's fetch
        ("POST", [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "cors")], True),  # MLflow's UI
        ("POST", [("Sec-Fetch-Site", "same-site"), ("Sec-Fetch-Mode", "cors")], False),  # a user's server
        ("POST", [("Sec-Fetch-Site", "cross-site")], False),
        ("POST", [("Origin", "http://hub.example.org")], True),  # older browsers: Origin
        ("POST", [("Origin", "http://evil.example")], False),
        ("POST", [], False),  # a state change with a cookie and no evidence of where it came from
        ("DELETE", [("Sec-Fetch-Site", "cross-site"), ("Origin", "http://hub.example.org")], False),
    ],
)
def test_cookie_requests_must_come_from_this_origin(method, pairs, allowed):
    handler = cookie_request(method, *pairs)
    if allowed:
        handler.check_xsrf_cookie()
    else:
        with pytest.raises(web.HTTPError) as info:
            handler.check_xsrf_cookie()
        assert info.value.status_code == 403


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


@web.stream_request_body
class Echo(web.RequestHandler):
    """An upstream that answers what it received: method, path, headers, body length and hash."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")

    def prepare(self):
        self.request.connection.set_max_body_size(10 * 1024**3)
        self.length, self.hash = 0, hashlib.sha256()
        self.application.settings["requests"].append(self.request.path)

    def data_received(self, chunk):
        self.length += len(chunk)
        self.hash.update(chunk)

    def _answer(self, *args):
        self.set_header("Access-Control-Allow-Origin", "*")
        self.finish(
            {
                "method": self.request.method,
                "path": self.request.path,
                "query": self.request.query,
                "headers": [[k, v] for k, v in self.request.headers.get_all()],
                "length": self.length,
                "sha256": self.hash.hexdigest(),
            }
        )

    get = post = put = delete = patch = _answer


class Background:
    """The stub hub and the echo upstream, served from a thread with its own event loop."""

    def __init__(self):
        self.hub_port, self.echo_port = free_port(), free_port()
        self.tokens_seen: list[str] = []
        self.echo_requests: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        hub = web.Application([(r"/hub/api/user", StubHub)], seen=self.tokens_seen)
        echo = web.Application([(r"/.*", Echo)], requests=self.echo_requests)
        servers = [hub.listen(self.hub_port, "127.0.0.1"), echo.listen(self.echo_port, "127.0.0.1")]
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.stop()

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class ProxyProcess:
    """``python -m werkbank_spawner.mlflow_proxy`` with the environment the hub gives a service."""

    def __init__(self, upstream: str, hub_port: int, log_path: Path, *, permissions: bool = False):
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
        argv = [sys.executable, "-m", "werkbank_spawner.mlflow_proxy", "--upstream", upstream]
        env["WERKBANK_MLFLOW_SIGNING_KEY"] = SIGNING_KEY  # the echo shows what the proxy signs
        if permissions:
            argv.append("--permissions")
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the proxy exited:\n{self.log()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the proxy did not listen within 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


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
        except RuntimeError as e:
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
    assert "Connection" not in httpx.get(echo_proxy.url + "api/2.0/mlflow/experiments/search").headers
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


def test_runs_are_created_for_the_authenticated_user_whatever_the_client_claims(echo_proxy):
    r = httpx.post(
        echo_proxy.url + "api/2.0/mlflow/runs/create",
        headers=auth("bob-token"),
        json={"experiment_id": "0", "user_id": "alice", "tags": [{"key": "mlflow.user", "value": "alice"}]},
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    names = {k.lower(): v for k, v in seen["headers"]}
    assert int(names["content-length"]) == seen["length"]


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
