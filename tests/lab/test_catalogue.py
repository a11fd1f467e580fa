"""The werkbank server extension in jupyter_server: catalogue, copies, open, MLflow UI, launcher entries.

Most tests use pytest-jupyter's ``jp_serverapp``/``jp_fetch`` (an in-process server with a token, its own
config and folders). Its fixtures are imported here, not enabled as a plugin: ``pytest_plugins`` would
register its hooks for the whole session (they run every test function of every folder) and is refused in a
conftest below the root. Tests are plain functions that drive the server's loop, so pytest-asyncio's loop is
untouched.

Two tests use the installed environment instead: the config file that ``pip install -e ./extensions`` puts in
``etc/jupyter/jupyter_server_config.d`` enables the extension in a real ``jupyter server`` process.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

# pytest-jupyter's server fixtures (see the module docstring), used by name.
from pytest_jupyter.jupyter_core import *  # noqa: F403
from pytest_jupyter.jupyter_server import *  # noqa: F403
from pytest_jupyter.pytest_tornasync import *  # noqa: F403
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from traitlets.config import Config

from tests.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def jp_asyncio_loop():
    """A loop of the test's own (pytest-jupyter's closes whatever loop is current, pytest-asyncio's too)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def notebook(path: Path, title: str, description: str, more: str = "") -> Path:
    cells = [
        {
            "id": "title",
            "cell_type": "markdown",
            "metadata": {},
            "source": f"# {title}\n\n{description}\n{more}",
        },
        {
            "id": "code",
            "cell_type": "code",
            "metadata": {},
            "source": "x = 1",
            "outputs": [],
            "execution_count": None,
        },
    ]
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1))
    return path


@pytest.fixture
def templates(tmp_path) -> Path:
    """A read-only templates folder: two templates and their catalogue entries."""
    root = tmp_path / "templates"
    notebook(
        root / "01-onboarding" / "onboarding.ipynb",
        "Onboarding",
        "Look around the session.",
        "\nNext: [training](../03-training/training.ipynb#Checks), not [this](../09-none/none.ipynb)"
        " nor [that](data/train.csv).\n",
    )
    notebook(root / "03-training" / "training.ipynb", "Training from scratch", "A small CNN.")
    (root / "catalogue.yaml").write_text(
        "templates:\n"
        "  01-onboarding: {runtime_minutes: 1, needs: []}\n"
        "  03-training: {runtime_minutes: 10, needs: [01-onboarding]}\n"
    )
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755)


@pytest.fixture
def werkbank_config() -> dict:
    """``c.WerkbankLab`` settings of a test (parametrize it to change them)."""
    return {}


@pytest.fixture
def jp_server_config(templates, werkbank_config):
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"werkbank_lab": True, "jupyter_server_proxy": True}},
            "WerkbankLab": {
                "templates_dir": str(templates),
                "mlflow_tracking_uri": "",
                "mlflow_ui_url": "",
                **werkbank_config,
            },
        }
    )


def fetch(loop, jp_fetch, *parts, **kwargs):
    """``jp_fetch`` on the server's loop; HTTP errors come back as responses, not exceptions."""
    try:
        return loop.run_until_complete(jp_fetch(*parts, **kwargs))
    except HTTPClientError as e:
        if e.response is None:
            raise
        return e.response


def body(response) -> dict | list:
    return json.loads(response.body)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the catalogue --------------------------------------------------------------------------------------


def test_lists_the_catalogue(jp_fetch, jp_asyncio_loop):
    response = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    listed = body(response)
    assert [t["id"] for t in listed] == ["01-onboarding", "03-training"]
    training = listed[1]
    assert training["title"] == "Training from scratch"
    assert training["description"] == "A small CNN."
    assert (training["phase"], training["phase_name"]) == (3, "training")
    assert (training["runtime_minutes"], training["runtime"]) == (10, "about 10 min")
    assert training["needs"] == ["01-onboarding"]


@pytest.mark.parametrize("werkbank_config", [{"templates_dir": str(REPO / "notebooks")}])
def test_lists_the_repository_templates(jp_fetch, jp_asyncio_loop):
    listed = body(fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates"))
    folders = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]-*") if p.is_dir())
    assert [t["id"] for t in listed] == folders
    assert all(t["title"] and t["description"] and t["runtime_minutes"] for t in listed), listed


def test_copy_twice_gives_two_names_and_leaves_the_originals_alone(
    jp_fetch, jp_asyncio_loop, jp_root_dir, templates
):
    originals = tree(templates)
    copies = [
        fetch(
            jp_asyncio_loop, jp_fetch, "werkbank", "templates", "03-training", "copy", method="POST", body=""
        )
        for _ in range(2)
    ]
    assert [r.code for r in copies] == [201, 201]
    paths = [body(r)["path"] for r in copies]
    assert paths == ["werkbank-templates/training.ipynb", "werkbank-templates/training-1.ipynb"]
    assert body(copies[1])["url"] == "/a%40b/lab/tree/werkbank-templates/training-1.ipynb"
    for path in paths:
        copy = json.loads((jp_root_dir / path).read_text())
        assert "".join(copy["cells"][0]["source"]) == "# Training from scratch\n\nA small CNN.\n"
    assert tree(templates) == originals  # not a byte changed in the shared folder


def test_a_copy_never_overwrites_a_users_file(jp_fetch, jp_asyncio_loop, jp_root_dir):
    mine = jp_root_dir / "werkbank-templates" / "training.ipynb"
    mine.parent.mkdir()
    mine.write_text("my own work")
    response = fetch(
        jp_asyncio_loop, jp_fetch, "werkbank", "templates", "03-training", "copy", method="POST", body=""
    )
    assert body(response)["path"] == "werkbank-templates/training-1.ipynb"
    assert mine.read_text() == "my own work"


def test_copies_made_at_once_get_different_names(jp_fetch, jp_asyncio_loop, jp_root_dir):
    async def five():
        return await asyncio.gather(
            *(
                jp_fetch("werkbank", "templates", "01-onboarding", "copy", method="POST", body="")
                for _ in range(5)
            )
        )

    paths = sorted(body(r)["path"] for r in jp_asyncio_loop.run_until_complete(five()))
    assert paths == sorted(
        ["werkbank-templates/onboarding.ipynb"]
        + [f"werkbank-templates/onboarding-{i}.ipynb" for i in range(1, 5)]
    )
    assert len(list((jp_root_dir / "werkbank-templates").glob("*.ipynb"))) == 5


def test_an_unknown_template_is_a_404_that_says_so(jp_fetch, jp_asyncio_loop, caplog):
    response = fetch(
        jp_asyncio_loop, jp_fetch, "werkbank", "templates", "09-nope", "copy", method="POST", body=""
    )
    assert response.code == 404
    assert body(response)["message"] == (
        "No template '09-nope' in the catalogue (templates: 01-onboarding, 03-training)"
    )
    page = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "open", "09-nope", follow_redirects=False)
    assert page.code == 404
    assert "No template '09-nope' in the catalogue" in caplog.text  # the page shows it with the site's theme


@pytest.mark.parametrize("werkbank_config", [{"templates_dir": ""}])
def test_without_templates_the_catalogue_says_why(jp_fetch, jp_asyncio_loop):
    response = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates")
    assert response.code == 503
    assert "no templates folder configured" in body(response)["message"]


@pytest.fixture
def broken_catalogue(tmp_path, werkbank_config):
    folder = tmp_path / "broken"
    notebook(folder / "01-onboarding" / "onboarding.ipynb", "Onboarding", "Look around.")
    (folder / "catalogue.yaml").write_text("templates:\n  01-onboarding: {runtime_minutes: soon}\n")
    werkbank_config["templates_dir"] = str(folder)


def test_a_broken_catalogue_file_is_reported_not_fatal(broken_catalogue, jp_fetch, jp_asyncio_loop):
    response = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates")
    assert response.code == 500
    assert (
        "01-onboarding.runtime_minutes: a positive whole number of minutes, not 'soon'"
        in (body(response)["message"])
    )
    assert fetch(jp_asyncio_loop, jp_fetch, "api", "status").code == 200  # the server runs on


@pytest.mark.parametrize(
    "path",
    [
        "werkbank/templates/..%2F..%2F..%2Fetc%2Fpasswd/copy",
        "werkbank/templates/..%2F01-onboarding/copy",
        "werkbank/templates/%2E%2E/copy",
        "werkbank/templates/../../api/contents/copy",
        "werkbank/open/..%2F03-training%2F..%2F01-onboarding",
    ],
)
def test_path_traversal_is_impossible(
    jp_serverapp, http_server_client, jp_auth_header, jp_root_dir, tmp_path, path
):
    before = tree(tmp_path)
    method = "GET" if "/open/" in path else "POST"
    try:
        response = http_server_client.io_loop.run_sync(
            lambda: http_server_client.fetch(
                "/a%40b/" + path,
                method=method,
                body="" if method == "POST" else None,
                headers=jp_auth_header,
                follow_redirects=False,
            )
        )
    except HTTPClientError as e:
        response = e.response
    assert response.code == 404, (path, response.code, response.body)
    assert tree(tmp_path) == before  # nothing written anywhere


def test_open_copies_and_redirects_to_jupyterlab(jp_fetch, jp_asyncio_loop, jp_root_dir):
    response = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "open", "01-onboarding", follow_redirects=False)
    assert response.code == 302
    assert response.headers["Location"] == "/a%40b/lab/tree/werkbank-templates/onboarding.ipynb"
    assert (jp_root_dir / "werkbank-templates" / "onboarding.ipynb").is_file()
    again = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "open", "01-onboarding", follow_redirects=False)
    assert again.headers["Location"] == "/a%40b/lab/tree/werkbank-templates/onboarding-1.ipynb"


def test_a_copys_links_to_other_templates_open_them(jp_fetch, jp_asyncio_loop, jp_root_dir):
    """``../03-training/training.ipynb`` does not exist beside a copy: the copy links to the route
    that copies that template and opens it. Links to what is not a template stay as they are."""
    fetch(jp_asyncio_loop, jp_fetch, "werkbank", "open", "01-onboarding", follow_redirects=False)
    copy = json.loads((jp_root_dir / "werkbank-templates" / "onboarding.ipynb").read_text())
    text = "".join(copy["cells"][0]["source"])
    assert "[training](/a%40b/werkbank/open/03-training)" in text
    assert "[this](../09-none/none.ipynb)" in text and "[that](data/train.csv)" in text
    followed = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "open", "03-training", follow_redirects=False)
    assert followed.headers["Location"] == "/a%40b/lab/tree/werkbank-templates/training.ipynb"


def test_the_shipped_templates_link_only_to_templates_that_exist():
    """Every ``../NN-phase/name.ipynb`` link in notebooks/ names a template of the catalogue, and no
    template links to a file beside it (a copy is one notebook, alone in the workspace): no copy keeps a
    link that leads nowhere."""
    from werkbank_lab.catalogue import Catalogue
    from werkbank_lab.workspace import relink

    templates = Catalogue(REPO / "notebooks").templates()
    urls = {t.id: f"/open/{t.id}" for t in templates}
    for template in templates:
        copied = relink(json.loads(template.notebook.read_text()), urls)
        for cell in copied["cells"]:
            if cell["cell_type"] == "markdown":
                assert not re.search(r"\]\(\.\./\d\d-", cell["source"]), (template.id, cell["source"])
                for target in re.findall(r"\]\(([^)\s]+)", cell["source"]):
                    assert target.startswith(("/open/", "https://", "http://", "#")), (template.id, target)


def browser(loop, jp_fetch) -> dict:
    """Headers of a browser logged in by cookie (the cookie a token login sets), without the token."""
    response = fetch(loop, jp_fetch, "werkbank", "templates")
    cookies = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        cookies.load(header)
    name = next(name for name in cookies if name.startswith("username-"))
    return {"Authorization": "", "Cookie": f"{name}={cookies[name].value}"}


def test_copies_need_a_login_and_an_xsrf_token_with_cookies(jp_fetch, jp_asyncio_loop):
    anonymous = {"Authorization": ""}
    copy = ("werkbank", "templates", "01-onboarding", "copy")
    assert fetch(jp_asyncio_loop, jp_fetch, *copy, method="POST", body="", headers=anonymous).code == 403
    assert fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates", headers=anonymous).code == 403
    opened = fetch(
        jp_asyncio_loop,
        jp_fetch,
        "werkbank",
        "open",
        "01-onboarding",
        headers=anonymous,
        follow_redirects=False,
    )
    assert opened.code == 302 and "/login" in opened.headers["Location"]

    # A browser's POSTs need the XSRF token (header and cookie), as for every Jupyter API.
    logged_in = browser(jp_asyncio_loop, jp_fetch)
    assert fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates", headers=logged_in).code == 200
    refused = fetch(jp_asyncio_loop, jp_fetch, *copy, method="POST", body="", headers=logged_in)
    assert refused.code == 403 and "_xsrf" in body(refused)["message"]
    xsrf = "2|a1b2c3d4|0123456789abcdef0123456789abcdef|1700000000"
    with_token = {**logged_in, "Cookie": logged_in["Cookie"] + f"; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    assert fetch(jp_asyncio_loop, jp_fetch, *copy, method="POST", body="", headers=with_token).code == 201


@pytest.mark.parametrize("werkbank_config", [{"workspace_dir": "/"}])
def test_a_workspace_outside_the_root_is_refused(jp_fetch, jp_asyncio_loop):
    # The extension does not load (the server logs why: tests/unit/test_catalogue.py checks the message);
    # its URLs are unknown, its launcher cards absent.
    assert fetch(jp_asyncio_loop, jp_fetch, "werkbank", "templates").code == 404
    assert fetch(jp_asyncio_loop, jp_fetch, "werkbank", "session").code == 404


# --- what the lab extension learns: GET werkbank/session ----------------------------------------------


def test_the_session_outside_slurm_has_no_end(jp_fetch, jp_asyncio_loop):
    info = body(fetch(jp_asyncio_loop, jp_fetch, "werkbank", "session"))
    assert (info["job_id"], info["ends_at"]) == ("", None)
    assert info["walltime_warnings"] == [15, 5]
    assert (info["launcher_category"], info["template_cards"], info["mlflow_card"]) == (
        "Werkbank",
        True,
        True,
    )
    assert info["mlflow_ui"] == ""  # no tracking server in this session: no MLflow card
    assert info["idle_timeout"] is None


@pytest.mark.parametrize(("value", "seconds"), [("3600", 3600), ("0", None), ("soon", None), ("", None)])
def test_the_session_tells_when_an_idle_server_is_stopped(
    jp_fetch, jp_asyncio_loop, monkeypatch, value, seconds
):
    monkeypatch.setenv("WERKBANK_IDLE_TIMEOUT", value)  # the spawner's, from the site's culling
    assert body(fetch(jp_asyncio_loop, jp_fetch, "werkbank", "session"))["idle_timeout"] == seconds


@pytest.mark.parametrize("werkbank_config", [{"template_launchers": False, "launcher_category": "Kurs"}])
def test_the_session_tells_the_cards_settings(jp_fetch, jp_asyncio_loop):
    info = body(fetch(jp_asyncio_loop, jp_fetch, "werkbank", "session"))
    assert (info["launcher_category"], info["template_cards"]) == ("Kurs", False)


def test_the_session_needs_a_login(jp_fetch, jp_asyncio_loop):
    anonymous = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "session", headers={"Authorization": ""})
    assert anonymous.code == 403


# --- MLflow UI ------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_config(mlflow_server, werkbank_config):
    werkbank_config["mlflow_tracking_uri"] = mlflow_server.url
    return werkbank_config


def test_mlflow_ui_through_the_session(mlflow_config, jp_fetch, jp_asyncio_loop, jp_http_port):
    page = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "mlflow/")
    assert page.code == 200 and b"<title>MLflow</title>" in page.body
    slash = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "mlflow", follow_redirects=False)
    assert (slash.code, slash.headers["Location"]) == (302, "/a%40b/werkbank/mlflow/")
    api = "ajax-api/2.0/mlflow/experiments/search"
    found = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "mlflow", api, params={"max_results": "5"})
    assert "Default" in [e["name"] for e in body(found)["experiments"]]

    info = body(fetch(jp_asyncio_loop, jp_fetch, "werkbank", "session"))
    assert info["mlflow_ui"] == "werkbank/mlflow/"
    assert info["mlflow_new_tab"] is False  # a JupyterLab tab: same origin, so MLflow allows the frame


def test_mlflow_deletes_with_a_body_through_the_session(mlflow_config, jp_fetch, jp_asyncio_loop):
    """MLflow's UI deletes registered models, versions and tags with DELETE and a JSON body, which
    tornado's client refuses to send unless told (a 500 in the session's UI before)."""
    name = f"deleted-through-the-session-{os.getpid()}"

    def models(action: str, **kw):
        return fetch(
            jp_asyncio_loop,
            jp_fetch,
            "werkbank",
            "mlflow",
            "ajax-api/2.0/mlflow/registered-models",
            action,
            **kw,
        )

    json_body = {"body": json.dumps({"name": name}), "headers": {"Content-Type": "application/json"}}
    created = models("create", method="POST", **json_body)
    assert created.code == 200, created.body
    deleted = models("delete", method="DELETE", allow_nonstandard_methods=True, **json_body)
    assert deleted.code == 200, deleted.body
    assert models("get", params={"name": name}).code == 404


def test_mlflow_takes_the_pages_own_posts_and_refuses_other_sites(
    mlflow_config, jp_fetch, jp_asyncio_loop, jp_http_port
):
    """MLflow refuses state-changing requests from other origins; through the session, the page's own origin
    is the session's, and it stays refused for any other site's page the user's browser is on. A browser's
    requests also need the server's XSRF token, as for every Jupyter API: on a hub, every user's server
    shares the page's origin."""
    logged_in = browser(jp_asyncio_loop, jp_fetch)
    xsrf = "2|a1b2c3d4|0123456789abcdef0123456789abcdef|1700000000"
    logged_in = {**logged_in, "Cookie": logged_in["Cookie"] + f"; _xsrf={xsrf}"}
    search = ("werkbank", "mlflow", "ajax-api/2.0/mlflow/runs/search")
    request = {"method": "POST", "body": json.dumps({"experiment_ids": ["0"], "max_results": 1})}
    json_type = {"Content-Type": "application/json"}
    own = {**logged_in, **json_type, "Origin": f"http://127.0.0.1:{jp_http_port}"}
    refused = fetch(jp_asyncio_loop, jp_fetch, *search, headers=own, **request)
    assert refused.code == 403 and b"_xsrf" in refused.body
    assert (
        fetch(jp_asyncio_loop, jp_fetch, *search, headers={**own, "X-XSRFToken": xsrf}, **request).code == 200
    )
    other = {**logged_in, **json_type, "Origin": "https://evil.example", "X-XSRFToken": xsrf}
    refused = fetch(jp_asyncio_loop, jp_fetch, *search, headers=other, **request)
    assert refused.code in (403, 404)


class HeaderEcho(web.RequestHandler):
    """A tracking server that answers what it received: method, path, query and headers."""

    SUPPORTED_METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH")

    def _answer(self, *args):
        self.finish(
            {
                "method": self.request.method,
                "path": self.request.path,
                "query": self.request.query,
                "headers": [[name, value] for name, value in self.request.headers.get_all()],
            }
        )

    get = post = delete = put = patch = _answer


SESSION_TOKEN = "session-mlflow-token"


@pytest.fixture
def echo_tracking_server(request, jp_asyncio_loop, werkbank_config, monkeypatch):
    """:class:`HeaderEcho` on loopback as the session's tracking server (under a path, as the hub's
    service is), and ``MLFLOW_TRACKING_TOKEN`` set as the spawner sets it (the parameter; "": unset),
    before the server starts (the extension reads both once, when it loads). Yields the echo's port."""
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    if request.param:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", request.param)
    port = free_port()
    server = HTTPServer(web.Application([(r"/.*", HeaderEcho)]))
    server.listen(port, "127.0.0.1")
    werkbank_config["mlflow_tracking_uri"] = f"http://127.0.0.1:{port}/services/mlflow"
    yield port
    server.stop()


@pytest.mark.parametrize(
    "echo_tracking_server", [SESSION_TOKEN, ""], indirect=True, ids=["token", "no-token"]
)
def test_the_session_proxy_sends_mlflow_its_token_not_the_users_jupyter_credentials(
    echo_tracking_server, jp_fetch, jp_asyncio_loop, jp_auth_header, jp_http_port, jp_base_url
):
    """MLflow gets the session's ``MLFLOW_TRACKING_TOKEN`` as a bearer token (no Authorization at all
    without one), and none of the Jupyter credentials the browser or client sent: not the token (in the
    Authorization header, or in the URL, as Jupyter takes it too), not a cookie (the login cookie, the
    XSRF cookie, the hub's)."""
    session_token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    jupyter_token = jp_auth_header["Authorization"].partition(" ")[2]
    assert jupyter_token and jupyter_token != SESSION_TOKEN
    logged_in = browser(jp_asyncio_loop, jp_fetch)  # the server's own login cookie (username-...)
    login_cookie = logged_in["Cookie"]
    xsrf = "2|a1b2c3d4|0123456789abcdef0123456789abcdef|1700000000"
    hub_cookies = "jupyterhub-session-id=hub-session; jupyterhub-user-a%40b=hub-user"
    cookies = f"{login_cookie}; _xsrf={xsrf}; {hub_cookies}"
    api = ("werkbank", "mlflow", "api/2.0/mlflow/experiments/search")
    requests = {
        # A client with the Jupyter token (jp_fetch's Authorization: token ...) and a browser's cookies.
        "token": fetch(
            jp_asyncio_loop, jp_fetch, *api, params={"max_results": "5"}, headers={"Cookie": cookies}
        ),
        # A browser: the login cookie, the XSRF token as its script sends it, no Authorization.
        "cookie": fetch(
            jp_asyncio_loop,
            jp_fetch,
            *api,
            method="POST",
            body=json.dumps({"max_results": 5}),
            headers={**logged_in, "Cookie": cookies, "X-XSRFToken": xsrf, "Content-Type": "application/json"},
        ),
        # A link with the token in the URL, which logs the user in.
        "url": fetch(
            jp_asyncio_loop,
            jp_fetch,
            *api,
            params={"max_results": "5", "token": jupyter_token, "page_token": "p"},
            headers={"Authorization": ""},
        ),
        # The same, its name spelled with an escape (Jupyter decodes it).
        "escaped url": jp_asyncio_loop.run_until_complete(
            AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{jp_http_port}{jp_base_url}werkbank/mlflow/api/2.0/mlflow/experiments/search"
                f"?%74oken={jupyter_token}&max_results=5",
                raise_error=False,
            )
        ),
    }
    secrets = [jupyter_token, login_cookie.partition("=")[2], "hub-session", "hub-user"]
    for how, response in requests.items():
        assert response.code == 200, (how, response.body)
        seen = body(response)
        # It reached the echo, under the tracking URI's path.
        assert seen["path"] == "/services/mlflow/api/2.0/mlflow/experiments/search", how
        received = {}
        for name, value in seen["headers"]:
            received.setdefault(name.lower(), []).append(value)
        assert "cookie" not in received, (how, received)
        if session_token:
            assert received["authorization"] == [f"Bearer {session_token}"], how
        else:
            assert "authorization" not in received, (how, received)
        for secret in secrets:
            assert secret not in seen["query"], (how, secret)
            assert not [v for values in received.values() for v in values if secret in v], (how, secret)
        assert received["host"] == [f"127.0.0.1:{echo_tracking_server}"], how
    assert body(requests["token"])["query"] == "max_results=5"
    assert body(requests["url"])["query"] == "max_results=5&page_token=p"  # the rest of the query, as it came
    assert body(requests["escaped url"])["query"] == "max_results=5"


@pytest.mark.parametrize("werkbank_config", [{"mlflow_ui_url": "/services/mlflow/"}])
def test_mlflow_ui_redirects_to_the_hub_service(jp_fetch, jp_asyncio_loop):
    response = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "mlflow/", follow_redirects=False)
    assert (response.code, response.headers["Location"]) == (302, "/services/mlflow/")


def test_no_mlflow_ui_without_a_tracking_server(jp_fetch, jp_asyncio_loop, caplog):
    response = fetch(jp_asyncio_loop, jp_fetch, "werkbank", "mlflow/", follow_redirects=False)
    assert response.code == 404
    assert "No MLflow UI in this session: MLFLOW_TRACKING_URI is not set in this session" in caplog.text


# --- the installed environment --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_installed_config_enables_the_extension():
    """``pip install -e ./extensions`` installs etc/jupyter/jupyter_server_config.d/werkbank_lab.json."""
    result = subprocess.run(
        [str(BIN / "jupyter"), "server", "extension", "list"], capture_output=True, text=True, timeout=120
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # no colours
    config = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "werkbank_lab.json"
    assert config.is_file(), (
        f"{config} is missing: run pip install -e ./extensions (deploy/install.sh)\n{output}"
    )
    assert json.loads(config.read_text()) == {"ServerApp": {"jpserver_extensions": {"werkbank_lab": True}}}
    lines = [line.strip() for line in output.splitlines()]
    enabled = [line for line in lines if line.startswith("werkbank_lab ") and "enabled" in line]
    assert enabled, output
    assert any(line.startswith("werkbank_lab 0.") and line.endswith("OK") for line in lines), output


@pytest.fixture
def jupyter_server(tmp_path):
    """A real ``jupyter server`` of this environment, with its installed config and a token."""
    port, token = free_port(), "werkbank-test-token"
    root = tmp_path / "home"
    root.mkdir()
    log_path = tmp_path / "jupyter-server.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MLFLOW_TRACKING"))},
        "HOME": str(root),
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # proxied, never reached in this test
        "WERKBANK_TEMPLATES_DIR": str(REPO / "notebooks"),
    }
    argv = [
        str(BIN / "jupyter"), "server", "--no-browser", "--allow-root", f"--port={port}", "--port-retries=0",
        f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"token {token}"})
    try:
        deadline, delay = time.monotonic() + 90, 0.1
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter server exited ({proc.returncode}):\n{log_path.read_text()}")
            try:
                if client.get("/api/status", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter server did not answer in 90 s:\n{log_path.read_text()}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        yield client, root, log_path
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def terminal_output(client: httpx.Client, token: str, command: str, marker: str) -> str:
    """What a new JupyterLab terminal prints for ``command``, up to ``marker`` (computed by the
    shell, so that the echo of the typed line does not count)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    name = client.post("/api/terminals").json()["name"]
    url = str(client.base_url).replace("http://", "ws://").rstrip("/") + f"/terminals/websocket/{name}"

    async def read() -> str:
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))
        await ws.write_message(json.dumps(["stdin", command + "\r"]))
        out, deadline = "", time.monotonic() + 60
        while marker not in out:
            message = await asyncio.wait_for(ws.read_message(), max(deadline - time.monotonic(), 0.1))
            assert message is not None, f"the terminal closed; it printed:\n{out}"
            kind, *data = json.loads(message)
            out += data[0] if kind == "stdout" else ""
        ws.close()
        return out

    try:
        return asyncio.run(read())
    finally:
        client.delete(f"/api/terminals/{name}")


@pytest.mark.slow
def test_terminals_find_the_sessions_commands(jupyter_server):
    """A terminal is a login shell, whose /etc/profile resets PATH; the session's commands must
    still come first (the README sends users to `werkbank submit` in a terminal)."""
    client, _, _ = jupyter_server
    out = terminal_output(
        client,
        "werkbank-test-token",
        "for c in werkbank python papermill mlflow; do echo at:$(command -v $c); done; echo DONE-$((40+2))",
        "DONE-42",
    )
    found = re.findall(r"at:(/\S*)", out)  # the echoed command line has "at:$(command"
    assert found == [str(BIN / c) for c in ("werkbank", "python", "papermill", "mlflow")], out


@pytest.mark.slow
def test_jupyterlab_never_asks_the_internet_for_news(jupyter_server):
    """A compute node cannot reach the internet: no news feed, no update check, and so no question
    to every new user whether to fetch news (settings werkbank-lab installs, users may change)."""
    client, _, _ = jupyter_server
    installed = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "werkbank.json"
    assert installed.is_file(), f"{installed} is missing: run deploy/install.sh"
    settings = client.get("/lab/api/settings/@jupyterlab/apputils-extension:notification").json()
    defaults = {key: value["default"] for key, value in settings["schema"]["properties"].items()}
    assert (defaults["fetchNews"], defaults["checkForUpdates"]) == ("false", False)


@pytest.mark.slow
def test_a_real_server_of_this_environment_serves_the_catalogue(jupyter_server):
    client, root, log_path = jupyter_server
    try:
        listed = client.get("/werkbank/templates")
        assert listed.status_code == 200
        assert "01-onboarding" in [t["id"] for t in listed.json()]
        session = client.get("/werkbank/session").json()
        assert (session["template_cards"], session["mlflow_ui"]) == (True, "werkbank/mlflow/")
        opened = client.get("/werkbank/open/01-onboarding", follow_redirects=False)
        assert opened.headers["location"] == "/lab/tree/werkbank-templates/onboarding.ipynb"
        assert (root / "werkbank-templates" / "onboarding.ipynb").is_file()  # ~/werkbank-templates
        log = log_path.read_text()
        assert "werkbank_lab | extension was successfully loaded" in log
    except AssertionError:
        print(log_path.read_text())
        raise
