"""Dashboard sharing's pure parts: which requests a viewer may make (werkbank_lab.dashboards),
which kernel messages pass, and the hub's share store (werkbank_spawner.dashboards). The whole
path, with the hub, a Slurm job and Voila: tests/integration/test_dashboards.py."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

from werkbank_lab.dashboards import ViewerAccess, ViewerKernelConnection, request_path, viewer_may
from werkbank_spawner.dashboards import DashboardShares, ShareError, notebook_path

SHARED = "client/overview.ipynb"
KERNEL = "0123abcd-0000-4000-8000-00000000beef"
ACCESS = ViewerAccess(full=False, dashboards=frozenset({SHARED}))


def handler(path: str, base: str = "/user/alice/"):
    return SimpleNamespace(settings={"base_url": base}, request=SimpleNamespace(path=path))


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("/user/alice/voila/render/client/overview.ipynb", "voila/render/client/overview.ipynb"),
        ("/user/alice/voila/render/client%2Foverview.ipynb", "voila/render/client/overview.ipynb"),
        ("/user/alice/voila/render/a%20b.ipynb", "voila/render/a b.ipynb"),
        ("/user/alice/voila/static/", "voila/static/"),
        ("/user/alice/voila/render/client/../secret.ipynb", None),
        ("/user/alice/voila/render/client/%2E%2E/secret.ipynb", None),
        ("/user/alice/voila/render/client//overview.ipynb", None),
        ("/user/alice/voila/render/client/./overview.ipynb", None),
        ("/user/alice/voila/render/client/overview.ipynb%00", None),
        ("/user/alice/voila/render/%252e%252e/x.ipynb", None),
        ("/user/alice/voila/render/%ff.ipynb", None),
        ("/user/alice/voila/render/a%5Cb.ipynb", None),
        ("/user/bob/voila/render/client/overview.ipynb", None),
        ("/user/alice/..", None),
    ],
)
def test_request_paths_are_decoded_once_and_odd_spellings_refused(raw, decoded):
    assert request_path(handler(raw)) == decoded


def test_a_viewer_may_open_the_shared_dashboard_its_assets_and_its_own_kernels():
    mine = {KERNEL}
    assert viewer_may("GET", f"voila/render/{SHARED}", ACCESS, mine) == SHARED
    assert viewer_may("GET", "voila/static/voila.js", ACCESS, mine) == ""
    assert viewer_may("GET", "voila/templates/lab/static/index.css", ACCESS, mine) == ""
    assert viewer_may("GET", "voila/files/client/plot.png", ACCESS, mine) == ""
    assert viewer_may("GET", f"api/kernels/{KERNEL}/channels", ACCESS, mine) == ""
    assert viewer_may("GET", f"voila/execution/{KERNEL}", ACCESS, mine) == ""
    assert viewer_may("POST", f"voila/api/shutdown/{KERNEL}", ACCESS, mine) == ""


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "voila/render/client/other.ipynb"),
        ("POST", f"voila/render/{SHARED}"),
        ("GET", f"voila/render/{SHARED}/"),
        ("GET", "voila/render/Client/overview.ipynb"),
        ("GET", "voila/tree"),
        ("GET", "voila/api/contents/client"),
        ("GET", "voila/files/other/plot.png"),
        ("GET", "voila/files/plot.png"),
        ("POST", "voila/static/x.js"),
        ("GET", "api/kernels"),
        ("GET", "api/kernels/0123abcd-0000-4000-8000-000000000000/channels"),
        ("DELETE", f"api/kernels/{KERNEL}"),
        ("GET", f"voila/api/shutdown/{KERNEL}"),
        ("GET", f"api/kernels/{KERNEL}/channels/extra"),
        ("GET", "api/contents"),
        ("GET", "api/terminals"),
        ("GET", "terminals/websocket/1"),
        ("GET", "lab"),
        ("GET", "werkbank/dashboards"),
        ("GET", "files/client/overview.ipynb"),
    ],
)
def test_everything_else_is_refused(method, path):
    assert viewer_may(method, path, ACCESS, {KERNEL}) is None


@given(st.text(min_size=1, max_size=60))
def test_no_path_but_the_shared_ones_renders(path):
    decision = viewer_may("GET", f"voila/render/{path}", ACCESS, set())
    assert decision is None or path == SHARED


def connection(viewer: str | None, subprotocol: str | None = None) -> ViewerKernelConnection:
    conn = ViewerKernelConnection.__new__(ViewerKernelConnection)
    conn.__dict__.update(
        _trait_values={
            "websocket_handler": SimpleNamespace(_werkbank_viewer=viewer, selected_subprotocol=subprotocol),
            "session": Session(key=b""),
        }
    )
    return conn


def ws_json(msg_type: str, channel: str | None = "shell") -> str:
    message = {
        "header": {"msg_type": msg_type, "msg_id": "1"},
        "content": {},
        "metadata": {},
        "parent_header": {},
    }
    return json.dumps({**message, **({"channel": channel} if channel else {})})


@pytest.mark.parametrize(
    ("msg_type", "channel", "passes"),
    [
        ("comm_msg", "shell", True),
        ("comm_open", "shell", True),
        ("kernel_info_request", "shell", True),
        ("comm_info_request", None, True),
        ("execute_request", "shell", False),
        ("execute_request", None, False),
        ("inspect_request", "shell", False),
        ("complete_request", "shell", False),
        ("history_request", "shell", False),
        ("shutdown_request", "control", False),
        ("comm_msg", "control", False),
        ("input_reply", "stdin", False),
    ],
)
def test_a_viewer_sends_widget_messages_only(msg_type, channel, passes):
    assert connection("bob")._viewer_may_send(ws_json(msg_type, channel)) is passes


def test_the_v1_protocol_is_read_the_same_way():
    conn = connection("bob", "v1.kernel.websocket.jupyter.org")
    session = Session(key=b"")
    for msg_type, passes in (("comm_msg", True), ("execute_request", False)):
        parts = [
            session.pack(session.msg_header(msg_type)),
            session.pack({}),
            session.pack({}),
            session.pack({}),
        ]
        assert conn._viewer_may_send(serialize_msg_to_ws_v1(parts, "shell")) is passes
    # A made-up offset count (the first 8 bytes) is refused before jupyter_server reads it.
    for garbage in (b"\x00garbage", b"\xff" * 8 + b"x" * 40, b"\x01", b"", "text"):
        assert conn._viewer_may_send(garbage) is False


# --- the hub's store ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/abs.ipynb",
        "a/../b.ipynb",
        "a//b.ipynb",
        "./a.ipynb",
        "a.py",
        "a\\b.ipynb",
        "a\x00.ipynb",
        "100%.ipynb",
        "x" * 500,
    ],
)
def test_share_paths_are_canonical_notebook_paths(bad):
    with pytest.raises(ShareError):
        notebook_path(bad)
    assert notebook_path("a b/c.ipynb") == "a b/c.ipynb"


def test_shares_admit_their_users_groups_and_link_joiners(tmp_path):
    shares = DashboardShares(tmp_path, "alice")
    by_user, _ = shares.add(SHARED, user="bob")
    assert shares.add(SHARED, user="bob")[0].id == by_user.id  # the same share again
    shares.add("b.ipynb", group="clients")
    link, secret = shares.add("c.ipynb", link_lifetime=3600)
    assert secret and link.link != secret and secret not in shares.file.read_text()
    assert shares.dashboards_for("bob", set()) == [SHARED]
    assert shares.dashboards_for("carol", {"clients"}) == ["b.ipynb"]
    assert shares.join("wrong", "dave") is None
    assert shares.join(secret, "dave").id == link.id
    assert shares.dashboards_for("dave", set()) == ["c.ipynb"]
    assert shares.holders() == ({"bob", "dave"}, {"clients"})
    shares.remove(link.id)
    assert shares.dashboards_for("dave", set()) == [] and shares.join(secret, "erin") is None
    assert shares.file.stat().st_mode & 0o777 == 0o600


def test_an_expired_link_admits_nobody(tmp_path):
    shares = DashboardShares(tmp_path, "alice")
    _, secret = shares.add(SHARED, link_lifetime=60)
    shares.join(secret, "dave")
    stored = shares.load()
    stored[0].expires = time.time() - 1
    shares.save(stored)
    assert shares.dashboards_for("dave", set()) == [] and shares.join(secret, "erin") is None
    assert shares.holders() == (set(), set())


def test_owner_names_are_checked_before_they_name_a_file(tmp_path):
    with pytest.raises(ShareError):
        DashboardShares(tmp_path, "../etc/passwd")
