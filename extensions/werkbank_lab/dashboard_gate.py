"""The gate of a werkbank server: JupyterHub's identity provider, plus the check that keeps
everyone who is not the server's owner and holds no role for it out of everything but the
dashboards shared with them (:mod:`werkbank_lab.dashboards` says what a viewer may do; the hub's
side is ``werkbank_spawner.dashboards``).

A module of its own because it builds on JupyterHub's single-user code, which a session has only
when JupyterHub started it; the spawner names the class on the server's command line
(``ServerApp.identity_provider_class``), so nothing else imports it.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

from jupyter_server.utils import url_path_join
from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float

from werkbank_lab.dashboards import ViewerAccess, _rendering_for, request_path, viewer_kernels, viewer_may
from werkbank_lab.tls import hub_ssl_context


class DashboardGate(JupyterHubIdentityProvider):
    """JupyterHub's identity provider for the server, which also keeps everyone who is not the
    owner and holds no role giving access to this server out of everything but the dashboards
    shared with them (see the module's description)."""

    access_cache_seconds = Float(
        5.0,
        help="""Seconds the hub's answer about a viewer is reused: a revoked share stops working
        within this time. 0: ask for every request.""",
    ).tag(config=True)

    #: How the server extension tells this gate from other identity providers.
    is_dashboard_gate = True

    _answers: dict[str, tuple[float, ViewerAccess]]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._answers = {}
        self.owner = os.environ.get("JUPYTERHUB_USER", "")

    async def get_user(self, handler):
        if hasattr(handler, "_werkbank_gate"):
            return handler._werkbank_gate
        user = await super().get_user(handler)
        if user is not None and user.username != self.owner:
            user = await self._gate(handler, user)
        handler._werkbank_gate = user
        return user

    async def _gate(self, handler, user):
        try:
            access = await self.viewer_access(user.username)
        except (HTTPClientError, OSError, ValueError) as e:
            self.log.error("werkbank: the hub did not say what %s may do here: %s", user.username, e)
            return self._refuse(handler, user, "the hub did not answer")
        if access.full:
            return user
        path = request_path(handler)
        kernels = viewer_kernels(handler, user.username)
        decision = None if path is None else viewer_may(handler.request.method, path, access, kernels)
        if decision is None:
            self.log.warning(
                "werkbank: %s may open only shared dashboards here, not %s %s",
                user.username,
                handler.request.method,
                handler.request.path,
            )
            return self._refuse(handler, user, "only shared dashboards")
        if decision:
            _rendering_for.set(user.username)
        handler._werkbank_viewer = user.username
        return user

    def _refuse(self, handler, user, why: str):
        # As JupyterHub's provider refuses: no user, and the login redirect of @authenticated
        # becomes a 403 (raising here would break error pages that look for the user).
        def refuse(*args, **kwargs):
            raise web.HTTPError(403, f"{user.username} may not open this: {why}.")

        handler.redirect = refuse
        handler._jupyterhub_user = None
        return None

    async def viewer_access(self, viewer: str) -> ViewerAccess:
        now = time.monotonic()
        cached = self._answers.get(viewer)
        if cached and now - cached[0] < self.access_cache_seconds:
            return cached[1]
        reply = await self.ask_hub("GET", "viewers", quote(viewer, safe=""))
        access = ViewerAccess(full=reply["full"] is True, dashboards=frozenset(reply["dashboards"]))
        self._answers[viewer] = (now, access)
        return access

    async def ask_hub(self, method: str, *parts: str, body: dict | None = None) -> dict:
        """A request to the hub's dashboard API about this server's owner
        (``/hub/api/werkbank/dashboards/<owner>/<parts>``) with the server's own token; its JSON
        answer. Raises tornado's ``HTTPClientError`` for an error status."""
        url = url_path_join(self.hub_auth.api_url, "werkbank/dashboards", quote(self.owner, safe=""), *parts)
        request = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {self.hub_auth.api_token}", "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            request_timeout=10,
            ssl_options=hub_ssl_context(),  # internal_ssl: the hub's CAs, the server's certificate
        )
        return json.loads((await AsyncHTTPClient().fetch(request)).body)
