"""Dashboard-only sharing against the real hub, a real Slurm job and Voila in it: the owner shares
one notebook as a dashboard with a user, a group or a link; the viewer opens it and is refused
everything else of the owner's server (files, notebooks, terminals, other kernels, other
dashboards, code in the dashboard's own kernel), in every spelling tried; revoking works; users
with a role (admins) keep their access."""

from __future__ import annotations

import asyncio
import http.client
import json
import pwd
import re
import time
import uuid
from contextlib import closing
from urllib.parse import urlsplit

import httpx
import nbformat
import psutil
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.cluster import TEST_ADMIN, Hub, login, wait_for

pytestmark = pytest.mark.integration

OWNER = "alice"
VIEWER = "bob"
#: Hub-only accounts (no Linux account, no server): a client in a group, a guest with a link.
CLIENT, GUEST, GROUP = "dash-client", "dash-guest", "dash-clients"
SHARED, OTHER = "dashboards/shared.ipynb", "dashboards/other.ipynb"
MARKER = "The answer of the shared dashboard is"


def notebook(text: str) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A dashboard"),
        nbformat.v4.new_code_cell(f"secret_source_line = 6 * 7\nprint({text!r}, secret_source_line)"),
    ]
    return json.loads(nbformat.writes(nb))


@pytest.fixture(scope="module")
def owner_server(hub: Hub):
    """Alice's server with two notebooks; the hub-only users and group exist."""
    for name in (CLIENT, GUEST):
        hub.api("POST", f"/users/{name}")
    hub.api("POST", f"/groups/{GROUP}")
    hub.api("POST", f"/groups/{GROUP}/users", json={"users": [CLIENT]})
    if hub.server(OWNER) is None:
        assert hub.spawn(OWNER, {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready(OWNER)
    owner = httpx.Client(
        base_url=f"{hub.url}/user/{OWNER}/",
        headers={"Authorization": f"token {hub.token_for(OWNER)}"},
        timeout=60,
    )
    owner.put("api/contents/dashboards", json={"type": "directory"})
    for path, text in ((SHARED, MARKER), (OTHER, "The other notebook")):
        r = owner.put(f"api/contents/{path}", json={"type": "notebook", "content": notebook(text)})
        assert r.status_code in (200, 201), r.text
    yield owner
    for share in owner.get("werkbank/dashboards").json().get("shares", []):
        owner.delete(f"werkbank/dashboards/{share['id']}")
    owner.close()
    hub.stop_server(OWNER)  # the next tests start alice's server with profiles of their own


def share(owner: httpx.Client, **whom) -> dict:
    r = owner.post("werkbank/dashboards", json={"path": SHARED, **whom})
    assert r.status_code == 201, r.text
    return r.json()


def revoke(owner: httpx.Client, share_id: str) -> None:
    r = owner.delete(f"werkbank/dashboards/{share_id}")
    assert r.status_code == 200, r.text
    assert share_id not in {s["id"] for s in r.json()["shares"]}


def open_as_viewer(client: httpx.Client, url: str) -> httpx.Response:
    """GET ``url``; on JupyterHub's "Authorize access" page (a user's first visit to another
    user's server: it may identify them), authorize, as the person would."""
    page = client.get(url)
    if 'action=""' in page.text and 'name="scopes"' in page.text:
        form = {
            "_xsrf": re.search(r'name="_xsrf" value="([^"]*)"', page.text).group(1),
            "scopes": re.findall(r'name="scopes" value="([^"]*)"', page.text),
        }
        page = client.post(str(page.url), data=form)
    return page


def kernel_id_in(page: str) -> str:
    found = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page)
    assert found, page[:2000]
    return found.group(1)


def cookie_header(client: httpx.Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


def server_address(user: str) -> str:
    """host:port where ``user``'s single-user server listens (in its Slurm job on this host)."""
    uid = pwd.getpwnam(user).pw_uid
    for process in psutil.process_iter(["uids", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["uids"] and process.info["uids"].real == uid and "jupyterhub-singleuser" in cmdline:
            listening = [c for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            if listening:
                return f"127.0.0.1:{listening[0].laddr.port}"
    raise AssertionError(f"no listening jupyterhub-singleuser process of {user}")


def raw_status(address: str, client: httpx.Client, path: str) -> int:
    """The status of a GET of ``path`` exactly as spelled (httpx would remove dot segments),
    with ``client``'s cookies, at ``address`` (the hub's proxy, or the server itself)."""
    connection = http.client.HTTPConnection(address, timeout=60)
    try:
        connection.request("GET", path, headers={"Cookie": cookie_header(client)})
        return connection.getresponse().status
    finally:
        connection.close()


async def kernel_replies(hub: Hub, client: httpx.Client, kernel_id: str, *msg_types: str) -> list[str]:
    """Open the kernel's websocket as ``client``, send one message of each type on the shell
    channel, and return the types of the replies that came back within a few seconds."""
    url = f"{hub.url.replace('http', 'ws')}/user/{OWNER}/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie_header(client)}))
    session = uuid.uuid4().hex
    for msg_type in msg_types:
        content = (
            {"code": "import os; os.system('touch /tmp/owned')", "silent": False}
            if "execute" in msg_type
            else {}
        )
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": "",
            "version": "5.3",
        }
        ws.write_message(
            json.dumps(
                {
                    "channel": "shell",
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": content,
                }
            )
        )
    replies = []
    try:
        while True:
            message = await asyncio.wait_for(ws.read_message(), 4)
            if message is None:
                break
            parsed = json.loads(message)
            if parsed.get("channel") == "shell":
                replies.append(parsed["header"]["msg_type"])
    except TimeoutError:
        pass
    ws.close()
    return replies


async def websocket_refused(hub: Hub, client: httpx.Client, kernel_id: str) -> int:
    url = f"{hub.url.replace('http', 'ws')}/user/{OWNER}/api/kernels/{kernel_id}/channels"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie_header(client)}))
    return refused.value.code


#: What a viewer tries besides the dashboard: notebooks, files, terminals, kernels, other
#: dashboards, the sharing API, JupyterLab, in odd spellings too.
REFUSED_GETS = [
    "lab",
    "api/contents",
    f"api/contents/{SHARED}",
    f"files/{SHARED}",
    "api/kernels",
    "api/sessions",
    "api/terminals",
    "terminals/websocket/1",
    "werkbank/dashboards",
    "voila",
    "voila/tree",
    "voila/api/contents",
    f"voila/render/{OTHER}",
    "voila/render/dashboards/../dashboards/other.ipynb",
    "voila/render/dashboards/%2E%2E/dashboards/other.ipynb",
    "voila/render/dashboards%2Fother.ipynb",
    "voila/render/dashboards//other.ipynb",
    "voila/render/dashboards/./shared.ipynb",
    "voila/render/Dashboards/shared.ipynb",
    "voila/render/dashboards/shared.ipynb%00",
    "voila/render/dashboards/shared.ipynb/",
    "voila/render/dashboards/shared.ipynb%2F..%2Fother.ipynb",
    f"voila/files/{SHARED}",
]


def test_a_shared_dashboard_opens_and_nothing_else_does(hub, owner_server):
    made = share(owner_server, user=VIEWER)
    assert made["share"]["user"] == VIEWER
    listed = owner_server.get("werkbank/dashboards").json()["shares"]
    mine = next(s for s in listed if s["id"] == made["share"]["id"])
    assert mine["dashboard_url"] == f"/user/{OWNER}/voila/render/{SHARED}"

    with closing(login(hub, VIEWER)) as viewer:
        page = open_as_viewer(viewer, f"/user/{OWNER}/voila/render/{SHARED}")
        assert page.status_code == 200, page.text[:500]
        assert MARKER in page.text and "42" in page.text
        assert "secret_source_line = 6 * 7" not in page.text  # code hidden
        kernel = kernel_id_in(page.text)

        # Through the hub's proxy, and to the server directly (the proxy tidies some spellings).
        for address in (urlsplit(hub.url).netloc, server_address(OWNER)):
            assert raw_status(address, viewer, f"/user/{OWNER}/voila/render/{SHARED}") == 200
            for path in REFUSED_GETS:
                status = raw_status(address, viewer, f"/user/{OWNER}/{path}")
                # The proxy may turn a spelling into the shared path itself (dots removed).
                tidied = address != server_address(OWNER) and path.endswith("/./shared.ipynb")
                assert status == 403 or (tidied and status == 200), (address, path, status)
        for method, path in (
            ("POST", "api/terminals"),
            ("POST", "api/kernels"),
            ("PUT", f"api/contents/{SHARED}"),
            ("POST", "werkbank/dashboards"),
            ("DELETE", f"api/kernels/{kernel}"),
        ):
            r = viewer.request(method, f"/user/{OWNER}/{path}", json={}, follow_redirects=False)
            assert r.status_code == 403, (method, path, r.status_code)

        # The dashboard's own kernel drives widgets but runs no code of the viewer's.
        replies = asyncio.run(
            kernel_replies(hub, viewer, kernel, "kernel_info_request", "execute_request", "comm_info_request")
        )
        assert "kernel_info_reply" in replies and "comm_info_reply" in replies, replies
        assert "execute_reply" not in replies, replies
        # Any other kernel of the owner: refused outright.
        theirs = owner_server.post("api/kernels", json={"name": "python3"}).json()["id"]
        try:
            assert asyncio.run(websocket_refused(hub, viewer, theirs)) == 403
        finally:
            owner_server.delete(f"api/kernels/{theirs}")

        # A user with a role on the server (an admin) keeps full access.
        admin = {"Authorization": f"token {hub.token_for(TEST_ADMIN)}"}
        assert httpx.get(f"{hub.url}/user/{OWNER}/api/contents", headers=admin).status_code == 200

        revoke(owner_server, made["share"]["id"])
        wait_for(
            lambda: viewer.get(f"/user/{OWNER}/voila/render/{SHARED}").status_code == 403,
            20,
            "the revoked dashboard to be refused",
        )
    hub_shares = hub.api("GET", f"/shares/{OWNER}/").json()
    assert VIEWER not in {(s.get("user") or {}).get("name") for s in hub_shares["items"]}


def test_a_group_share_and_a_link_share(hub, owner_server):
    by_group = share(owner_server, group=GROUP)
    by_link = share(owner_server, link=True)
    link = by_link["url"]
    assert link.startswith(f"{hub.url}/hub/werkbank/dashboard-links/{OWNER}/")
    share_url = by_group["share"]["share_url"]
    assert share_url == f"/hub/werkbank/dashboards/{OWNER}/{SHARED}"
    with closing(login(hub, CLIENT, password="werkbank-demo")) as client:
        page = open_as_viewer(client, share_url)
        assert page.status_code == 200 and MARKER in page.text
        assert client.get(f"/user/{OWNER}/voila/render/{OTHER}").status_code == 403
    with closing(login(hub, GUEST)) as guest:
        assert open_as_viewer(guest, f"/user/{OWNER}/voila/render/{SHARED}").status_code == 403
        assert guest.get(share_url).status_code == 404
        assert guest.get(link.replace(link.rsplit("/", 1)[1], "not-the-secret")).status_code == 404
        opened = open_as_viewer(guest, link)
        assert opened.status_code == 200 and MARKER in opened.text
        assert str(opened.url).endswith(f"/user/{OWNER}/voila/render/{SHARED}")
        joined = owner_server.get("werkbank/dashboards").json()["shares"]
        assert GUEST in next(s for s in joined if s["id"] == by_link["share"]["id"])["joined"]
        assert guest.get(f"/user/{OWNER}/api/contents").status_code == 403
        revoke(owner_server, by_link["share"]["id"])
        wait_for(
            lambda: guest.get(f"/user/{OWNER}/voila/render/{SHARED}").status_code == 403,
            20,
            "the revoked link's dashboard to be refused",
        )
        assert guest.get(link).status_code == 404
    revoke(owner_server, by_group["share"]["id"])


def test_only_the_owners_server_manages_its_shares(hub, owner_server):
    # Not another user's token, not the owner's own API token (only their server's).
    for token in (hub.token_for(VIEWER), hub.token_for(OWNER)):
        r = hub.api("GET", f"/werkbank/dashboards/{OWNER}", token=token)
        assert r.status_code == 403, r.text
        r = hub.api("GET", f"/werkbank/dashboards/{OWNER}/viewers/{VIEWER}", token=token)
        assert r.status_code == 403, r.text
    bad = [
        {"path": "../etc/passwd.ipynb", "user": VIEWER},
        {"path": "missing.ipynb", "user": VIEWER},
        {"path": SHARED, "user": "nobody-like-this"},
        {"path": SHARED, "user": OWNER},
        {"path": SHARED, "group": "no-such-group"},
        {"path": SHARED, "user": VIEWER, "group": GROUP},
        {"path": SHARED, "link": "yes"},
        {"path": "dashboards", "user": VIEWER},
    ]
    for body in bad:
        r = owner_server.post("werkbank/dashboards", json=body)
        assert r.status_code == 400, (body, r.status_code, r.text)


def test_a_dashboard_shows_a_viewer_only_experiments_they_may_read(hub):
    """The MLflow service's question for dashboards: which of these experiments may the caller
    and the viewer both read. MLflow's own permission checks answer it, with the viewer's groups
    as the hub knows them."""
    hub.wait_for_mlflow()
    group = "dash-project"
    assert hub.api("POST", f"/groups/{group}", json={"users": [OWNER, VIEWER]}).status_code == 201
    try:
        # New tokens: the MLflow service caches what the hub says of a token (groups too).
        alice, bob = hub.new_token(OWNER), hub.new_token(VIEWER)
        stamp = time.time()

        def create(name: str) -> str:
            r = httpx.post(
                f"{hub.mlflow_url}/api/2.0/mlflow/experiments/create",
                json={"name": name},
                headers={"Authorization": f"Bearer {alice}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            return r.json()["experiment_id"]

        private, shared = create(f"{OWNER}/dash-{stamp}"), create(f"{group}/dash-{stamp}")

        def readable(token: str, viewer: str, *ids: str) -> list[str]:
            r = httpx.get(
                f"{hub.mlflow_url}/werkbank/readable-experiments",
                params={"viewer": viewer, "experiment_id": list(ids)},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            return r.json()["experiment_ids"]

        assert readable(alice, OWNER, private, shared) == [private, shared]
        assert readable(alice, VIEWER, private, shared) == [shared]  # bob: the group's only
        assert readable(alice, GUEST, private, shared) == []
        assert readable(alice, "nobody-of-this-name", private, shared) == []
        # The caller must be able to read it too: bob cannot learn about alice's own experiment.
        assert readable(bob, OWNER, private, shared) == [shared]
        for params in (
            {"viewer": VIEWER},
            {"viewer": VIEWER, "experiment_id": "1 OR 1=1"},
            {"experiment_id": "1"},
        ):
            r = httpx.get(
                f"{hub.mlflow_url}/werkbank/readable-experiments",
                params=params,
                headers={"Authorization": f"Bearer {alice}"},
                timeout=30,
            )
            assert r.status_code == 400, (params, r.text)
        r = httpx.get(
            f"{hub.mlflow_url}/werkbank/readable-experiments",
            params={"viewer": VIEWER, "experiment_id": shared},
        )
        assert r.status_code == 401
    finally:
        hub.api("DELETE", f"/groups/{group}")
