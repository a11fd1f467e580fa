"""The MLflow UI inside the session, at ``<server>/werkbank/mlflow/``: no other port for the user to reach.

Two ways, chosen once at start (``mlflow_route``):

- **proxy** (an ``http://`` tracking URI, the hub-managed server today; or an ``https://`` one checked against
  a CA bundle of its own, ``MLFLOW_TRACKING_SERVER_CERT_PATH``: the hub's MLflow service under
  ``hub.internal_ssl``, whose certificate only the hub's internal CA signed, so browsers do not trust it): the
  session forwards requests to the tracking server with jupyter-server-proxy's ``ProxyHandler``. Its named
  servers only reach ``localhost``, but the session usually runs on a compute node and MLflow on the hub host,
  so this subclass targets the tracking server's host and port. It only ever reaches that one server (no
  user-chosen hosts); over https it checks the server against that bundle alone, as MLflow's client does.
- **redirect** (``WerkbankLab.mlflow_ui_url`` set, e.g. the hub service ``/services/mlflow/``, or an
  ``https://`` tracking URI that browsers reach directly): ``/werkbank/mlflow/`` redirects there.

Headers on the proxied request: ``Host`` becomes the tracking server's (MLflow refuses unknown hosts, a DNS
rebinding guard); the user's Jupyter cookies and token are not passed on (nor a ``?token=`` in the URL, which
Jupyter accepts too); the session's MLflow credentials
(``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) are added. MLflow refuses
state-changing cross-origin requests by their ``Origin``; a request from the page's own origin (as
jupyter_server's ``check_origin`` judges it) is rewritten to the tracking server's origin, any other keeps its
foreign ``Origin`` and MLflow refuses it.

Cookie-authenticated requests need the server's XSRF token, as every Jupyter API does (jupyter-server-proxy
leaves that to the proxied app, and MLflow has no such check): all servers on a hub share one origin, so
without it a page from another user's server could make the owner's browser act in MLflow as the owner. The
UI's pages, as the hub's MLflow service relays them, load a script that sends it (``werkbank-xsrf.js``).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import web

PROXY_BASE = "werkbank/mlflow"


@dataclass(frozen=True)
class ProxyTarget:
    """Where the proxy sends requests: ``<scheme>://host:port/prefix``, with the session's credentials."""

    host: str
    port: int
    prefix: str  # "" or "/some/path", no trailing slash
    authorization: str  # the Authorization header to send, or ""
    scheme: str = "http"  # or "https", checked against ca_file only
    ca_file: str = ""

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True)
class Route:
    """How ``/werkbank/mlflow/`` reaches the UI: ``kind`` "proxy", "redirect" or "none" (with ``reason``)."""

    kind: str
    target: ProxyTarget | None = None
    url: str = ""
    reason: str = ""


def mlflow_route(tracking_uri: str, ui_url: str, environ: Mapping[str, str]) -> Route:
    """Decide how the session shows the MLflow UI (pure; see the module docstring)."""
    if ui_url:
        return Route("redirect", url=ui_url)
    parts = urlsplit(tracking_uri)
    ca_file = environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", "")
    if parts.scheme == "https" and parts.hostname and not ca_file:
        return Route("redirect", url=tracking_uri.rstrip("/") + "/")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        reason = (
            f"MLFLOW_TRACKING_URI is {tracking_uri!r}, not an MLflow server URL"
            if tracking_uri
            else "MLFLOW_TRACKING_URI is not set in this session"
        )
        return Route("none", reason=reason)
    return Route(
        "proxy",
        target=ProxyTarget(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            prefix=parts.path.rstrip("/"),
            authorization=_authorization(environ),
            scheme=parts.scheme,
            ca_file=ca_file if parts.scheme == "https" else "",
        ),
    )


def _authorization(environ: Mapping[str, str]) -> str:
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        return f"Bearer {environ['MLFLOW_TRACKING_TOKEN']}"
    user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return ""


class MlflowProxyHandler(ProxyHandler):
    """``/werkbank/mlflow/<path>`` → ``<tracking server>/<path>``, for the authenticated session owner."""

    def initialize(self, target: ProxyTarget):
        self.target = target
        self.proxy_base = PROXY_BASE  # Location headers from MLflow are rewritten under it

    def check_xsrf_cookie(self):
        """Jupyter's own check (JupyterHub's, in a hub's server), which jupyter-server-proxy turns off."""
        return JupyterHandler.check_xsrf_cookie(self)

    def proxy_request_headers(self):
        headers = super().proxy_request_headers()
        for name in ("Cookie", "Authorization"):  # the user's Jupyter credentials stay here
            headers.pop(name, None)
        headers["Host"] = self.target.netloc
        if "Origin" in headers and self.check_origin():
            headers["Origin"] = self.target.origin
        if self.target.authorization:
            headers["Authorization"] = self.target.authorization
        return headers

    def get_client_uri(self, protocol, host, port, proxied_path):
        """The tracking server's URI, less a Jupyter ``token`` in the query: a ``?token=`` logs the user in
        here, and MLflow must not get it (nor write it to its access log)."""
        if self.target.scheme == "https":  # jupyter-server-proxy asks for http:// and ws:// only
            protocol = {"http": "https", "ws": "wss"}[protocol]
        uri = super().get_client_uri(protocol, host, port, proxied_path)
        query = self.request.query
        if not query:
            return uri
        kept = [part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) != "token"]
        return uri.removesuffix("?" + query) + ("?" + "&".join(kept) if kept else "")

    def proxy_request_options(self):
        # MLflow's UI deletes registered models, versions and tags with DELETE and a JSON body;
        # tornado's client refuses a body on DELETE unless told (and then frames it with its
        # Content-Length).
        options = {**super().proxy_request_options(), "allow_nonstandard_methods": True}
        if self.target.scheme == "https":
            # The tracking server's CA bundle only (MLflow's client trusts no other either).
            options["ssl_options"] = ssl.create_default_context(cafile=self.target.ca_file)
        return options

    def proxy(self, proxied_path):
        return super().proxy(self.target.host, self.target.port, self.target.prefix + "/" + proxied_path)

    async def http_get(self, proxied_path):
        if self.request.headers.get("Sec-Fetch-Mode", "navigate") == "navigate":
            self.xsrf_token  # noqa: B018  (sets the _xsrf cookie the UI's script sends back)
        return await self.proxy(proxied_path)

    async def open(self, proxied_path):
        return await self.proxy_open(
            self.target.host, self.target.port, self.target.prefix + "/" + proxied_path
        )

    def post(self, proxied_path):
        return self.proxy(proxied_path)

    def put(self, proxied_path):
        return self.proxy(proxied_path)

    def delete(self, proxied_path):
        return self.proxy(proxied_path)

    def head(self, proxied_path):
        return self.proxy(proxied_path)

    def patch(self, proxied_path):
        return self.proxy(proxied_path)

    def options(self, proxied_path):
        return self.proxy(proxied_path)


class MlflowRedirectHandler(JupyterHandler):
    """``/werkbank/mlflow/`` → the MLflow UI's own URL (the hub service, or a URL browsers reach)."""

    def initialize(self, route: Route):
        self.route = route

    @web.authenticated
    def get(self, proxied_path=""):
        if self.route.kind != "redirect":
            raise web.HTTPError(404, f"No MLflow UI in this session: {self.route.reason}".replace("%", "%25"))
        self.redirect(self.route.url)


def handlers(base_url: str, route: Route) -> list[tuple]:
    """The tornado handlers for the route (``url_path_join`` done by the caller's ``base_url``)."""
    from jupyter_server.utils import url_path_join

    slash = url_path_join(base_url, PROXY_BASE)
    pattern = url_path_join(base_url, PROXY_BASE, "(.*)")
    if route.kind == "proxy":
        kwargs = {"target": route.target, "host_allowlist": [route.target.host], "absolute_url": False}
        return [(pattern, MlflowProxyHandler, kwargs), (slash, _AddSlash)]
    return [
        (pattern, MlflowRedirectHandler, {"route": route}),
        (slash, MlflowRedirectHandler, {"route": route}),
    ]


class _AddSlash(JupyterHandler):
    """``/werkbank/mlflow`` → ``/werkbank/mlflow/``: the UI loads its assets relative to the page."""

    @web.authenticated
    def get(self):
        uri = self.request.uri
        path, _, query = uri.partition("?")
        self.redirect(path + "/" + (f"?{query}" if query else ""))
