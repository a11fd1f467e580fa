"""Dashboards in the session: any notebook opens as a Voila dashboard at
``<server>/voila/render/<path>``, and its owner shares it with other hub users who may then open
that dashboard and nothing else of the server.

Three pieces, all started with the server (the spawner passes the two classes on the command
line, ``werkbank_spawner.spawner.SERVER_GATE_ARGS``; the handlers are the server extension's):

- ``werkbank_lab.dashboard_gate.DashboardGate``, the server's identity provider (JupyterHub's,
  plus a gate). JupyterHub lets a viewer in with ``access:servers`` from a share
  (``werkbank_spawner.dashboards``); the gate asks the hub, for every user who is not the owner,
  whether they hold that access through a role (admins, trainers: let through) or only through
  shares (then only: the shared dashboards' Voila pages, Voila's own assets, images beside the
  dashboard, and the kernels those pages started for this viewer, by :func:`viewer_may`).
  Everything else is answered 403, before any handler runs.
- :class:`DashboardKernelManager` notes which kernel a viewer's dashboard page started, and
  tells the kernel who is looking (``WERKBANK_DASHBOARD_VIEWER``).
- :class:`ViewerKernelConnection` passes a viewer's messages to such a kernel only if they drive
  widgets (``comm_*``) or ask what the kernel is: never ``execute_request``, which would run the
  viewer's code as the owner.

And the REST API the lab extension's *Share dashboard* dialog uses: ``/werkbank/dashboards``.
"""

from __future__ import annotations

import contextvars
import json
import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
)
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import HTTPClientError

#: What a viewer may send to their dashboard's kernel (shell channel): widgets and questions
#: about the kernel. Nothing that runs code, reads history or completes names.
VIEWER_MESSAGES = frozenset(
    {"comm_open", "comm_msg", "comm_close", "comm_info_request", "kernel_info_request"}
)
#: Voila's own assets (its templates, themes, JupyterLab extensions): the same for everybody.
VOILA_ASSETS = re.compile(r"voila/(static|templates|labextensions|api/themes)/")
KERNEL_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: Routes of one kernel: its websocket, its model, Voila's progressive rendering and shutdown.
KERNEL_ROUTES = re.compile(
    rf"(api/kernels/(?P<a>{KERNEL_ID})(/channels)?|voila/(execution|api/shutdown)/(?P<b>{KERNEL_ID}))"
)

#: The viewer a dashboard page is being rendered for (set by the gate, read when Voila starts
#: the page's kernel within the same request).
_rendering_for: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "werkbank_rendering_for", default=None
)


@dataclass(frozen=True)
class ViewerAccess:
    """What the hub says a user who is not the owner may do on this server."""

    full: bool
    dashboards: frozenset[str]


def request_path(handler: web.RequestHandler) -> str | None:
    """The request's path below the server's base URL, percent-decoded once as tornado decodes
    route arguments, or None if it is spelled oddly (no base URL prefix, a decoded ``%``,
    backslash, control character, empty or dot segment): such a path is never a viewer's."""
    base = handler.settings.get("base_url", "/")
    raw = handler.request.path
    if not raw.startswith(base):
        return None
    try:
        path = unquote(raw[len(base) :], errors="strict")
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 32 or ch in "%\\\x7f" for ch in path):
        return None
    parts = path.split("/")
    if any(part in (".", "..") for part in parts) or "" in parts[:-1]:
        return None
    return path


def viewer_may(method: str, path: str, access: ViewerAccess, kernels_of_viewer: set[str]) -> str | None:
    """Whether a viewer with ``access`` may make this request: the dashboard path for a render
    (the gate then marks the request so its kernel is noted), "" for other allowed requests,
    None for a refusal. ``kernels_of_viewer``: ids of kernels their dashboard pages started."""
    if path.startswith("voila/render/"):
        notebook = path[len("voila/render/") :]
        return notebook if method == "GET" and notebook in access.dashboards else None
    if VOILA_ASSETS.match(path):
        return "" if method == "GET" else None
    if path.startswith("voila/files/"):
        # Images beside a shared dashboard (Voila serves only its allowlist: png, jpg, gif, svg).
        folder = posixpath.dirname(path[len("voila/files/") :])
        return "" if method == "GET" and folder in {posixpath.dirname(d) for d in access.dashboards} else None
    match = KERNEL_ROUTES.fullmatch(path)
    if match:
        kernel_id = match.group("a") or match.group("b")
        allowed_method = "POST" if path.startswith("voila/api/shutdown/") else "GET"
        return "" if method == allowed_method and kernel_id in kernels_of_viewer else None
    return None


def viewer_kernels(handler, viewer: str) -> set[str]:
    manager = handler.settings.get("kernel_manager")
    noted = getattr(manager, "dashboard_viewers", {})
    return {kernel_id for kernel_id, who in noted.items() if who == viewer and kernel_id in manager}


class DashboardKernelManager(AsyncMappingKernelManager):
    """The server's kernel manager, which notes the viewer a dashboard page started a kernel for
    (the gate allows them that kernel only) and tells the kernel (``WERKBANK_DASHBOARD_VIEWER``):
    a dashboard can then show a viewer what they may see (the overview dashboard does)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dashboard_viewers: dict[str, str] = {}

    async def start_kernel(self, *args, **kwargs):
        viewer = _rendering_for.get()
        if viewer is not None:
            kwargs["env"] = {**(kwargs.get("env") or os.environ), "WERKBANK_DASHBOARD_VIEWER": viewer}
        kernel_id = await super().start_kernel(*args, **kwargs)
        if viewer is not None:
            self.dashboard_viewers[kernel_id] = viewer
            _rendering_for.set(None)
        return kernel_id

    async def shutdown_kernel(self, kernel_id, *args, **kwargs):
        self.dashboard_viewers.pop(kernel_id, None)
        return await super().shutdown_kernel(kernel_id, *args, **kwargs)


class ViewerKernelConnection(ZMQChannelsWebsocketConnection):
    """The kernel websocket, which passes a viewer's message on only if it is one of
    :data:`VIEWER_MESSAGES` on the shell channel (the owner's, and those of users with a role,
    unchanged). Messages are read the way the base class reads them."""

    def handle_incoming_message(self, incoming_msg) -> None:
        viewer = getattr(self.websocket_handler, "_werkbank_viewer", None)
        if viewer is not None and not self._viewer_may_send(incoming_msg):
            self.log.warning(
                "werkbank: dropped a message of dashboard viewer %s to kernel %s", viewer, self.kernel_id
            )
            return
        super().handle_incoming_message(incoming_msg)

    def _viewer_may_send(self, ws_msg) -> bool:
        try:
            if self.subprotocol == "v1.kernel.websocket.jupyter.org":
                # jupyter_server trusts the frame's first 8 bytes as the number of offsets that
                # follow and builds that list: a made-up count would exhaust the server's memory.
                count = int.from_bytes(ws_msg[:8], "little") if isinstance(ws_msg, bytes) else -1
                if not 2 <= count <= len(ws_msg) // 8 - 1:
                    return False
                channel, msg_list = deserialize_msg_from_ws_v1(ws_msg)
                header = self.session.unpack(msg_list[0])
            else:
                msg = deserialize_binary_message(ws_msg) if isinstance(ws_msg, bytes) else json.loads(ws_msg)
                channel, header = msg.get("channel"), msg.get("header")
            msg_type = header.get("msg_type") if isinstance(header, dict) else None
        except (ValueError, TypeError, IndexError, KeyError):
            return False
        # The base class sends a message without a channel on shell.
        return (channel or "shell") == "shell" and msg_type in VIEWER_MESSAGES


# --- the owner's REST API ---------------------------------------------------------------------


class DashboardSharesHandler(APIHandler):
    """``GET /werkbank/dashboards``: this server's dashboard shares, with their URLs.
    ``POST {"path", "user"|"group"|"link": true}``: share a notebook of this server.
    The hub keeps the shares (``werkbank_spawner.dashboards``); this server asks it with its own
    token."""

    async def _hub(self, method: str, *parts: str, body: dict | None = None) -> dict:
        provider = self.identity_provider
        if not getattr(provider, "is_dashboard_gate", False):
            raise web.HTTPError(
                503,
                "dashboard sharing needs the werkbank gate in this server (started by werkbank's spawner)",
            )
        try:
            return await provider.ask_hub(method, *parts, body=body)
        except HTTPClientError as e:
            message = e.message
            if e.response is not None and e.response.body:
                try:
                    message = json.loads(e.response.body).get("message", message)
                except ValueError:
                    pass
            raise web.HTTPError(e.code if e.code in (400, 403, 404) else 502, message) from None

    def _answer(self, reply: dict) -> None:
        base, provider = self.base_url, self.identity_provider
        for share in [*reply.get("shares", []), *([reply["share"]] if "share" in reply else [])]:
            share["dashboard_url"] = dashboard_url(base, share["path"])
            # What the viewers open: the hub's page, which brings their access up to date first.
            share["share_url"] = url_path_join(
                provider.hub_auth.hub_prefix,
                "werkbank/dashboards",
                quote(provider.owner, safe=""),
                quote(share["path"]),
            )
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(reply))

    @web.authenticated
    async def get(self):
        self._answer(await self._hub("GET"))

    @web.authenticated
    async def post(self):
        body = self.get_json_body()
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise web.HTTPError(
                400, 'expected {"path": <notebook>, and one of "user", "group", "link": true}'
            )
        path = body["path"].strip("/")
        try:
            exists = path.endswith(".ipynb") and await ensure_async(self.contents_manager.file_exists(path))
        except web.HTTPError:  # e.g. a path outside the server's root
            exists = False
        if not exists:
            raise web.HTTPError(400, f"there is no notebook {path!r} in this server")
        reply = await self._hub("POST", body={**body, "path": path})
        if "url" in reply:
            reply["url"] = self.request.protocol + "://" + self.request.host + reply["url"]
        self.set_status(201)
        self._answer(reply)


class DashboardShareHandler(DashboardSharesHandler):
    """``DELETE /werkbank/dashboards/<id>``: revoke a share."""

    get = post = None

    @web.authenticated
    async def delete(self, share_id):
        self._answer(await self._hub("DELETE", "shares", share_id))


def dashboard_url(base_url: str, path: str) -> str:
    """The stable URL of a notebook of this server as a dashboard."""
    return url_path_join(base_url, "voila/render", quote(path))


def handlers(base_url: str) -> list[tuple]:
    return [
        (url_path_join(base_url, "werkbank/dashboards"), DashboardSharesHandler),
        (url_path_join(base_url, r"werkbank/dashboards/([0-9a-f]+)"), DashboardShareHandler),
    ]
