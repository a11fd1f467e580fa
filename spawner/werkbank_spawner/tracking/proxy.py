"""The hub's authenticating proxy in front of MLflow: a managed JupyterHub service named ``mlflow``.

Users and jobs never talk to the MLflow server; they talk to this service, which the hub's proxy
routes ``<hub>/services/mlflow/`` to. Every request is authenticated with JupyterHub:

- browsers by the hub's OAuth (``HubOAuth``: a GET without credentials is sent to the hub's login
  and comes back with a cookie for this service);
- API clients by ``Authorization: Bearer <token>`` (or ``token <token>``): MLflow's client sends
  ``MLFLOW_TRACKING_TOKEN`` as a bearer token, and werkbank sets it to the session's own
  ``JUPYTERHUB_API_TOKEN``, whose ``server`` role includes ``access:services!service=mlflow``.

A request without valid credentials is answered ``401`` (a user without the scope ``403``) with an
MLflow-style JSON error, and is never forwarded. An authenticated one is forwarded to the MLflow
server on loopback (started with ``--static-prefix <hub>/services/mlflow``, so paths are forwarded
unchanged, with one exception below) over a pool of kept-alive connections, bodies streamed both
ways. Before forwarding, the proxy

- removes hop-by-hop headers, ``Authorization``, ``Cookie`` (all of it: MLflow uses no cookies and
  must never see a hub token) and ``Origin`` (cross-site requests are judged here);
- removes any header the client sent whose name, lowercased and with ``_`` read as ``-``,
  starts with ``x-werkbank`` (the WSGI layer in MLflow reads both spellings as one), and adds who
  is asking, for MLflow's permission checks (:mod:`werkbank_spawner.tracking.auth`) to trust: an
  assertion of user, admin flag and groups, signed over this request's method, decoded path and
  query with the key the hub gave both services;
- frames every body it forwards: with ``Content-Length``, or chunked for a streamed upload
  (whose connection is then not reused); bodies on GET/HEAD/OPTIONS are refused;
- records the user server-side: ``runs/create`` gets ``user_id`` and the tag ``mlflow.user`` set to
  the authenticated user whatever the client sent, ``experiments/create`` the tag
  ``werkbank.owner``; setting or deleting those tags later (``set-tag``, ``delete-tag``,
  ``log-batch``, ``set-experiment-tag``, ``delete-experiment-tag``) is refused with 403.
  These rules are matched on the path as MLflow routes it: percent-decoded, and lowercased;
  paths that could be read two ways (an encoded unreserved character or ``/``, dot segments,
  empty segments, control characters, bytes that are not UTF-8) are refused with 400, and so
  are bodies these rules read that are not UTF-8 JSON objects (MLflow would read UTF-16 too).

The exception to "paths unchanged": MLflow serves its streaming artifact routes
(``api/2.0/mlflow-artifacts/artifacts/<path>``) only *without* the static prefix; under the prefix
the same requests reach a fallback that reads the whole body into memory first. The proxy sends
them to the unprefixed routes, so that a multi-GB upload streams end to end.

What each user may see and change, MLflow's own basic-auth app decides (``--permissions``; the
hub runs the server with it): users see their own experiments and registered models, those of
their hub groups' projects, and hub admins everything. The proxy adds the project rule: an
experiment name with a ``/`` starts with the creator's user name or one of their groups
(``alice/...``, ``workshop/...``), and members of the group get EDIT on a ``<group>/...``
experiment when it is created (or renamed into the group's namespace).

Run by the hub (``werkbank_spawner.site.services``)::

    python -m werkbank_spawner.tracking.proxy --upstream http://127.0.0.1:5000 --permissions

It listens where ``JUPYTERHUB_SERVICE_URL`` says and serves under ``JUPYTERHUB_SERVICE_PREFIX``;
the hub gives it its OAuth client and API token in the environment, and the key it signs
assertions with (shared with the MLflow server) in a file of its own, which
``WERKBANK_MLFLOW_SECRETS`` names (:func:`.auth.signing_key`): JupyterHub keeps the environment
it is given for a service in its database.

With the hub's ``internal_ssl`` the service URL is https: the proxy serves TLS with the key and
certificate in ``JUPYTERHUB_SSL_KEYFILE``/``CERTFILE`` (signed by the hub's CA for the names jobs
and the hub's proxy reach it at; :class:`werkbank_spawner.server_certs.ServiceCerts`), asks no
client for a certificate (MLflow's clients authenticate with their token), and checks the hub
API's certificate against ``JUPYTERHUB_SSL_CLIENT_CA``, as ``HubOAuth`` does for its own calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes, urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from jupyterhub.utils import make_ssl_context
from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from ..server_certs import serving_tls
from .auth import ASSERTION_HEADER, ROLE_PREFIX, ROLE_WORKSPACE, SECRETS_ENV, Identity, sign, signing_key
from .upstream import Body, Upstream, UpstreamError

log = logging.getLogger("werkbank.mlflow_proxy")

# The header that tells MLflow who is asking is defined where it is verified,
# werkbank_spawner.tracking.auth. Clients cannot set it: every header whose name could be read as
# ``X-Werkbank-*`` is removed first, and without the key no assertion verifies anyway.
#: What a header name must not start with, once lowercased and with "_" read as "-".
RESERVED_HEADER_PREFIX = "x-werkbank"
#: Tags the proxy sets and nobody may change: the run's user, the experiment's owner.
RUN_USER_TAG = "mlflow.user"
EXPERIMENT_OWNER_TAG = "werkbank.owner"

#: RFC 9110 7.6.1 plus the de-facto ones; never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers MLflow does not get. ``Host`` and ``Content-Length`` are set for the
#: upstream request; ``Expect: 100-continue`` was answered here already.
DROPPED_REQUEST_HEADERS = frozenset({"authorization", "cookie", "origin", "host", "content-length", "expect"})
#: Response headers not passed back: the proxy answers no cross-origin requests, and tornado
#: frames the response itself.
DROPPED_RESPONSE_PREFIXES = ("access-control-",)

_SINGLE_RESPONSE_HEADERS = frozenset({"date", "server", "content-type", "content-length"})

#: Bodies the proxy reads to check or rewrite (runs/create, log-batch, ...) are small JSON;
#: MLflow's own limits (1000 metrics, 100 params, 100 tags per batch) stay far below this.
REWRITE_LIMIT = 16 * 1024 * 1024
#: Bodies up to this size are read whole before they are sent on (request or response).
SMALL_BODY = 64 * 1024
#: Streamed bodies (artifact uploads) may be large.
DEFAULT_MAX_BODY_SIZE = 100 * 1024**3

_MLFLOW_API = r"(?:ajax-)?api/[23]\.0/mlflow/"
_ARTIFACTS = re.compile(r"(?:ajax-)?api/2\.0/mlflow-artifacts/artifacts/.")
#: Methods whose bodies the proxy streams (chunked if their length is not known); MLflow's API
#: sends bodies with no others but DELETE, whose small bodies are read whole.
STREAMED_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Methods that carry no body in MLflow's API: one sent anyway is refused, not forwarded.
BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Rejected(web.HTTPError):
    """A request refused with an MLflow-style ``error_code`` (``str()`` is the message)."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(status, "%s", message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Caller(Identity):
    """Who is asking, as the hub says: the name MLflow records, admin flag, hub groups."""

    @classmethod
    def from_model(cls, model: dict) -> Caller:
        """From the hub's user (or service) model."""
        return cls(identity(model), bool(model.get("admin")), tuple(sorted(model.get("groups") or ())))


# --- pure parts: headers, paths, bodies -----------------------------------------------------


def identity(user: dict) -> str:
    """The name MLflow records for a hub user model: the user name, ``service:<name>`` for a
    hub service."""
    name = user["name"]
    return f"service:{name}" if user.get("kind") == "service" else name


def is_reserved_header(name: str) -> bool:
    """Whether a client's header could be read as one of werkbank's: ``X-Werkbank-*`` in any
    case, with ``_`` for ``-`` (WSGI servers map both to ``HTTP_X_WERKBANK_*``), padded."""
    return name.strip().lower().replace("_", "-").startswith(RESERVED_HEADER_PREFIX)


def forward_headers(headers: httputil.HTTPHeaders) -> list[tuple[str, str]]:
    """The client's request headers that MLflow gets: all but hop-by-hop headers (and those the
    client's ``Connection`` names), credentials, ``Origin``, ``Host``, ``Content-Length`` and
    any that :func:`is_reserved_header`."""
    named = {token.strip().lower() for value in headers.get_list("Connection") for token in value.split(",")}
    out = []
    for name, value in headers.get_all():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in DROPPED_REQUEST_HEADERS:
            continue
        if is_reserved_header(name):
            continue
        out.append((name, value))
    return out


def assertion_header(caller: Identity, key: bytes, method: str, target: str) -> tuple[str, str]:
    """The header that tells MLflow who ``caller`` is, signed for this request (``target``: the
    path and query the request goes to; the path is signed decoded, as MLflow routes it)."""
    path, _, query = target.partition("?")
    return ASSERTION_HEADER, sign(key, caller, method, unquote_to_bytes(path).decode(), query)


def relay_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response headers the client gets: MLflow's, less hop-by-hop and CORS headers."""
    named = set()
    items = list(headers)
    for name, value in items:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(","))
    return [
        (name, value)
        for name, value in items
        if name.lower() not in HOP_BY_HOP
        and name.lower() not in named
        and not name.lower().startswith(DROPPED_RESPONSE_PREFIXES)
    ]


#: Characters that no client needs to percent-encode in a path (RFC 3986's unreserved set)
#: and "/": encoded, they would make one path readable two ways.
_NEEDLESSLY_ENCODED = re.compile(r"%(?:[46][1-9a-f]|[57][0-9a]|3[0-9]|2[def]|5f|7e)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")


def routed_path(path: str) -> str:
    """The path as MLflow routes it: percent-decoded, UTF-8. Raises :class:`Rejected` (400) for
    a path that could be read more than one way or that no client of MLflow's sends: a bad or
    needless escape (``%2D`` for ``-``, ``%2F``), a dot or empty segment, a control character or
    backslash, or bytes that are not UTF-8."""
    if _BAD_ESCAPE.search(path) or _NEEDLESSLY_ENCODED.search(path):
        raise _odd_path("a needless or malformed percent-escape")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise _odd_path("bytes that are not UTF-8") from None
    if any(c < " " or c in "\x7f\\" for c in decoded):
        raise _odd_path("a control character or backslash")
    segments = decoded.split("/")[1:]
    if any(segment in (".", "..") for segment in segments) or "" in segments[:-1]:
        raise _odd_path("a dot segment or an empty segment")
    return decoded


def _odd_path(what: str) -> Rejected:
    return Rejected(400, "INVALID_PARAMETER_VALUE", f"the request path has {what}; send it plainly")


def upstream_path(path: str, prefix: str) -> str:
    """The path to request from MLflow for ``path`` (as sent; it starts with ``prefix``, the
    service's path with a trailing slash): unchanged, except artifact up- and downloads, which
    go to MLflow's streaming routes outside the static prefix."""
    rest = path[len(prefix) :]
    if _ARTIFACTS.match(unquote_to_bytes(rest).decode(errors="replace").lower()):
        return "/" + rest
    return path


@dataclass(frozen=True)
class BodyRule:
    """What the proxy does with the JSON body of one endpoint before MLflow gets it."""

    # "create-run", "create-experiment", "rename-experiment", "tag-key", "tag-list"
    action: str
    protected: str = ""  # the tag key nobody may set or delete here


_BODY_RULES = {
    "runs/create": BodyRule("create-run"),
    "runs/create-promptlab-run": BodyRule("create-run"),
    "experiments/create": BodyRule("create-experiment"),
    "experiments/update": BodyRule("rename-experiment"),
    "runs/set-tag": BodyRule("tag-key", RUN_USER_TAG),
    "runs/delete-tag": BodyRule("tag-key", RUN_USER_TAG),
    "runs/log-batch": BodyRule("tag-list", RUN_USER_TAG),
    "experiments/set-experiment-tag": BodyRule("tag-key", EXPERIMENT_OWNER_TAG),
    "experiments/delete-experiment-tag": BodyRule("tag-key", EXPERIMENT_OWNER_TAG),
}
_BODY_RULE_PATH = re.compile(_MLFLOW_API + "(" + "|".join(map(re.escape, _BODY_RULES)) + ")/?$")


def body_rule(method: str, path: str, prefix: str) -> BodyRule | None:
    """The rule for a request's body, or None if the body is forwarded as it comes.

    ``path`` is the :func:`routed_path`; it is matched lowercased, with or without a trailing
    slash: a spelling MLflow does not route gets the rule too, which does no harm. Every method
    but GET/HEAD/OPTIONS (which carry no body) is checked: MLflow answers 405 to the others, but
    a rule that holds regardless needs no knowledge of MLflow's routing table.
    """
    if method in BODILESS_METHODS or not path.lower().startswith(prefix.lower()):
        return None
    match = _BODY_RULE_PATH.match(path[len(prefix) :].lower())
    return _BODY_RULES[match.group(1)] if match else None


@dataclass(frozen=True)
class Rewrite:
    """A request body as MLflow gets it, and what to do once MLflow has answered."""

    body: bytes
    #: A hub group that gets EDIT on the experiment once MLflow has created (or renamed) it.
    share_with: str = ""
    #: The renamed experiment; a created one's id comes with MLflow's answer.
    experiment_id: str = ""


def project_group(name: str, caller: Caller) -> str:
    """The hub group whose project an experiment called ``name`` is part of, or "".

    A name with a ``/`` starts with a namespace: the caller's user name (their own experiment,
    "") or one of their hub groups (that group's project). Admins may use any namespace other
    than their own, for a group they do not belong to (a trainer preparing a workshop's
    experiment). Raises :class:`Rejected` (403) for a namespace that is not the caller's.
    """
    namespace, slash, _ = name.partition("/")
    if not slash or namespace == caller.name:
        return ""
    if namespace in caller.groups or caller.admin:
        return namespace
    yours = ", ".join(f"'{n}/...'" for n in (caller.name, *caller.groups))
    raise Rejected(
        403,
        "PERMISSION_DENIED",
        f"the experiment name {name!r} is in the namespace of another user or group: names with a "
        f"'/' start with your user name or one of your groups ({yours})",
    )


def rewrite_body(rule: BodyRule, body: bytes, caller: Caller, *, projects: bool = False) -> Rewrite:
    """Apply ``rule`` to a JSON request body on behalf of ``caller``.

    ``create-run``: ``user_id`` and the tag ``mlflow.user`` become the caller's name.
    ``create-experiment``: the tag ``werkbank.owner`` becomes the caller's name.
    ``create-experiment``/``rename-experiment`` with ``projects``: the name must be the caller's
    (:func:`project_group`); a group's project experiment is to be shared with the group.
    ``tag-key``/``tag-list``: refused (:class:`Rejected`, 403) if they touch the protected tag;
    the body is returned unchanged otherwise. Raises :class:`Rejected` (400) for a body that
    is not a UTF-8 JSON object with unique keys (MLflow's Flask would also read UTF-16 and
    UTF-32, and a JSON string holding JSON, which the checks here would not see through).
    """
    try:
        # The encoding MLflow would read the body in, from its first bytes (UTF-16 without a BOM
        # is valid UTF-8 too: NULs between the characters).
        if body and json.detect_encoding(body) != "utf-8":
            raise UnicodeError
        text = body.decode("utf-8")
    except UnicodeError:
        raise Rejected(400, "MALFORMED_REQUEST", "the request body is not UTF-8 JSON") from None
    if rule.action in ("tag-key", "tag-list") and rule.protected not in text and "\\u" not in text:
        # Fast path for log-batch, once a second per session: in UTF-8 JSON, a string equal to
        # the protected key holds its characters or a \u escape; without either, nothing to check.
        return Rewrite(body)
    try:
        data = json.loads(text or "{}", object_pairs_hook=_unique_keys)
    except ValueError as e:
        raise Rejected(400, "MALFORMED_REQUEST", f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise Rejected(400, "MALFORMED_REQUEST", "the request body is not a JSON object")
    if rule.action == "rename-experiment" and not projects:
        return Rewrite(body)
    user = caller.name
    if rule.action == "create-run":
        data["user_id"] = user
        data["tags"] = [*_other_tags(data.get("tags"), RUN_USER_TAG), {"key": RUN_USER_TAG, "value": user}]
    elif rule.action == "create-experiment":
        data["tags"] = [
            *_other_tags(data.get("tags"), EXPERIMENT_OWNER_TAG),
            {"key": EXPERIMENT_OWNER_TAG, "value": user},
        ]
        group = project_group(_name(data.get("name")), caller) if projects else ""
        return Rewrite(json.dumps(data, separators=(",", ":")).encode(), share_with=group)
    elif rule.action == "rename-experiment":
        group = project_group(_name(data.get("new_name")), caller)
        return Rewrite(body, share_with=group, experiment_id=str(data.get("experiment_id") or ""))
    elif rule.action == "tag-key":
        if data.get("key") == rule.protected:
            raise _protected(rule.protected)
        return Rewrite(body)
    elif rule.action == "tag-list":
        if any(tag.get("key") == rule.protected for tag in _tag_list(data.get("tags"))):
            raise _protected(rule.protected)
        return Rewrite(body)
    return Rewrite(json.dumps(data, separators=(",", ":")).encode())


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice in one object")
    return dict(pairs)


def _name(value: object) -> str:
    return value if isinstance(value, str) else ""


def _tag_list(tags: object) -> list[dict]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(tag, dict) for tag in tags):
        raise Rejected(400, "INVALID_PARAMETER_VALUE", "tags must be a list of {key, value} objects")
    return tags


def _other_tags(tags: object, key: str) -> list[dict]:
    return [tag for tag in _tag_list(tags) if tag.get("key") != key]


def _protected(key: str) -> Rejected:
    return Rejected(403, "PERMISSION_DENIED", f"the tag {key} is set by werkbank and cannot be changed")


def _too_large(limit: int) -> Rejected:
    return Rejected(413, "REQUEST_LIMIT_EXCEEDED", f"bodies of this request are limited to {limit} bytes")


def is_api_path(path: str, prefix: str) -> bool:
    """REST and UI-data paths: answered 401 without credentials, never redirected to a login page."""
    rest = path[len(prefix) :] if path.startswith(prefix) else path
    return rest.startswith(("api/", "ajax-api/", "graphql", READABLE_EXPERIMENTS))


# --- the application ------------------------------------------------------------------------


@dataclass
class MlflowProxy:
    """The proxy's shared state: where MLflow is, how users are authenticated and authorized,
    and the pool of connections to MLflow. :meth:`app` builds the tornado application."""

    upstream: str  # e.g. http://127.0.0.1:5000, no path
    prefix: str  # the service's path, with a trailing slash: /services/mlflow/
    hub_auth: HubOAuth
    #: MLflow runs its basic-auth app with werkbank's authorization function: apply the
    #: project rule to experiment names and share project experiments with their group.
    permissions: bool = False
    #: Signs the assertions that tell MLflow who is asking (WERKBANK_MLFLOW_SIGNING_KEY); without
    #: one (MLflow without permission checks) requests go without.
    key: bytes = b""
    #: This service's name: MLflow knows the proxy itself as the admin ``service:<name>``.
    service_name: str = "mlflow"
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    cookie_secret: bytes = field(default_factory=lambda: os.urandom(32))
    #: How this service's own calls to the hub API check the hub (internal_ssl): the hub's CA,
    #: and this service's certificate shown; None for plain http.
    hub_ssl: ssl.SSLContext | None = None
    #: Kept-alive connections to the MLflow server. No automatic retries: MLflow's client
    #: retries what is safe to.
    mlflow: Upstream = field(init=False)

    def __post_init__(self):
        self.upstream = self.upstream.rstrip("/")
        if not self.prefix.endswith("/"):
            self.prefix += "/"
        self.mlflow = Upstream(self.upstream)

    def app(self) -> web.Application:
        settings = {
            "cookie_secret": self.cookie_secret,
            "login_url": self.hub_auth.login_url,
            "log_function": _log_request,
            # Cookie-authenticated requests are checked by JupyterHub's own XSRF check, which
            # HubOAuth runs before it accepts a cookie (token-authenticated ones need none).
            "xsrf_cookies": False,
        }
        p = re.escape(self.prefix)
        return web.Application(
            [
                (p + "oauth_callback", OAuthCallbackHandler, {"proxy": self}),
                (p + "health", HealthHandler, {"proxy": self}),
                (p + re.escape(XSRF_SCRIPT), XsrfScriptHandler),
                (p + re.escape(READABLE_EXPERIMENTS), ReadableExperimentsHandler, {"proxy": self}),
                (p + ".*", ProxyHandler, {"proxy": self}),
                (re.escape(self.prefix.rstrip("/")), web.RedirectHandler, {"url": self.prefix}),
            ],
            **settings,
        )

    def close(self) -> None:
        self.mlflow.close()

    def identify(self, caller: Identity, method: str, target: str) -> list[tuple[str, str]]:
        """The headers that tell MLflow who is asking, for a request to ``target``."""
        return [assertion_header(caller, self.key, method, target)] if self.key else []

    # -- sharing project experiments with their hub group, through MLflow's role API

    async def share_experiment(self, experiment_id: str, group: str) -> None:
        """Give the members of hub ``group`` (MLflow role ``hub-group:<group>``) EDIT on an
        experiment. Raises :class:`Rejected` (502) if MLflow refuses."""
        role_id = await self._group_role(group)
        await self._as_admin(
            "POST",
            "api/3.0/mlflow/roles/permissions/add",
            {"role_id": role_id, "resource_type": "experiment", "resource_pattern": experiment_id,
             "permission": "EDIT"},
            tolerate="RESOURCE_ALREADY_EXISTS",
        )  # fmt: skip

    async def _group_role(self, group: str) -> int:
        """The id of the group's role; created if no member has used MLflow yet."""
        name = ROLE_PREFIX + group
        for attempt in range(2):
            roles = await self._as_admin("GET", f"api/3.0/mlflow/roles/list?workspace={ROLE_WORKSPACE}")
            for role in roles.get("roles", []):
                if role.get("name") == name:
                    return int(role["id"])
            if attempt == 0:
                await self._as_admin(
                    "POST",
                    "api/3.0/mlflow/roles/create",
                    {"name": name, "workspace": ROLE_WORKSPACE, "description": "a JupyterHub group"},
                    tolerate="RESOURCE_ALREADY_EXISTS",  # a member's first request created it meanwhile
                )
        raise Rejected(502, "TEMPORARILY_UNAVAILABLE", f"MLflow has no role {name} after creating it")

    async def _as_admin(self, method: str, path: str, body: dict | None = None, tolerate: str = "") -> dict:
        """A request of the proxy's own to MLflow, as the admin ``service:<service_name>``."""
        caller = Caller(f"service:{self.service_name}", admin=True)
        headers = self.identify(caller, method, self.prefix + path)
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers.append(("Content-Type", "application/json"))
        try:
            response = await self.mlflow.fetch(method, self.prefix + path, headers, content)
        except UpstreamError as e:
            raise unavailable(e) from None
        answer = response.json()
        if response.code != 200 and answer.get("error_code") != tolerate:
            raise Rejected(
                502,
                "TEMPORARILY_UNAVAILABLE",
                f"MLflow refused {method} {path} ({response.code}): "
                f"{response.body[:300].decode(errors='replace')}",
            )
        return answer


#: Path (below the service's) of :class:`ReadableExperimentsHandler`; not an MLflow route.
READABLE_EXPERIMENTS = "werkbank/readable-experiments"
#: Experiments one question may name at most.
MAX_READABLE_QUESTION = 100


def unavailable(error: UpstreamError) -> Rejected:
    """The answer to a request MLflow did not answer."""
    if error.reason == "connect":
        return Rejected(
            503, "TEMPORARILY_UNAVAILABLE", f"the MLflow server does not answer (starting?): {error}"
        )
    if error.reason == "timeout":
        return Rejected(504, "TEMPORARILY_UNAVAILABLE", f"the MLflow server did not answer in time: {error}")
    return Rejected(502, "TEMPORARILY_UNAVAILABLE", f"error talking to the MLflow server: {error}")


def _log_request(handler: web.RequestHandler) -> None:
    """Successful requests at debug level (log-batch every second per session would flood the
    hub's log); everything else at info or warning."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    if log.isEnabledFor(level):
        request = handler.request
        user = getattr(handler, "user_name", "-")
        log.log(
            level,
            "%d %s %s (%s, %s) %.1f ms",
            status,
            request.method,
            request.path,
            user,
            request.remote_ip,
            1000 * request.request_time(),
        )


class _JsonErrors(web.RequestHandler):
    #: Whether the request's body has been read (streaming handlers read it after prepare()).
    body_read = True

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, Rejected):
            code, message = error.error_code, error.message
        else:
            code = _ERROR_CODES.get(status_code, "INTERNAL_ERROR")
            message = getattr(error, "log_message", None) or self._reason
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="werkbank"')
        if not self.body_read:
            # Refused in prepare(), before tornado finished reading the request (with a body or
            # without: a streaming handler's prepare runs as the headers arrive): tornado closes
            # the connection after this answer, but says so only when it knew before the headers
            # went out. Without the header, configurable-http-proxy reuses the connection for the
            # next request and gets a "socket hang up" (a 503 for a request that did nothing wrong).
            self.set_header("Connection", "close")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error_code": code, "message": message}))


_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    413: "REQUEST_LIMIT_EXCEEDED",
    502: "TEMPORARILY_UNAVAILABLE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "TEMPORARILY_UNAVAILABLE",
}


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """The end of the hub's OAuth login: sets this service's cookie, back to where the user was.
    Uses the proxy's ``HubOAuth``, which holds the login's state (not a second instance)."""

    def initialize(self, proxy: MlflowProxy):
        self.hub_auth = proxy.hub_auth


#: Served by the proxy beside MLflow's UI, and loaded by every UI page it relays (see
#: :func:`with_xsrf_script`); it also switches the UI's own telemetry off. MLflow's UI knows
#: nothing of JupyterHub's XSRF token, which
#: the proxy (and a session's ``/werkbank/mlflow/`` path) require of cookie-authenticated
#: requests that are not plain navigations. All the hub's servers share one origin, so without
#: it any user's page could make a visitor's browser write to MLflow as the visitor.
XSRF_SCRIPT = "werkbank-xsrf.js"
XSRF_SCRIPT_SOURCE = b"""\
// werkbank: send JupyterHub's XSRF token (the _xsrf cookie of this path) with the MLflow UI's
// own requests; the hub refuses cookie-authenticated requests without it.
(function () {
  function token() {
    var match = document.cookie.match(/(?:^|;\\s*)_xsrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : "";
  }
  function sameOrigin(url) {
    try { return new URL(url, location.href).origin === location.origin; } catch (e) { return false; }
  }
  var fetch0 = window.fetch;
  window.fetch = function (input, init) {
    var url = input instanceof Request ? input.url : String(input);
    if (token() && sameOrigin(url)) {
      init = Object.assign({}, init || {});
      var headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      headers.set("X-XSRFToken", token());
      init.headers = headers;
    }
    return fetch0.call(this, input, init);
  };
  var open0 = XMLHttpRequest.prototype.open, send0 = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.werkbankSameOrigin = sameOrigin(url);
    return open0.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.werkbankSameOrigin && token()) this.setRequestHeader("X-XSRFToken", token());
    return send0.apply(this, arguments);
  };
  // MLflow's usage telemetry is off on this server (werkbank_spawner.tracking.NO_TELEMETRY); the
  // UI keeps its own choice in the browser and asks every user with a notice until dismissed.
  // Set that choice (MLflow 3.17's keys: <key>_v<version>) before the UI reads it.
  try {
    localStorage.setItem("mlflow.settings.telemetry.enabled_v1", "false");
    localStorage.setItem("mlflow.telemetry.info.alert.dismissed_v1", "true");
  } catch (e) {}
})();
"""
_HEAD = re.compile(rb"<head(?:\s[^>]*)?>", re.IGNORECASE)


def with_xsrf_script(html: bytes) -> bytes:
    """An HTML page of MLflow's UI with :data:`XSRF_SCRIPT` loaded first in its ``<head>``
    (relative, like MLflow's own assets: the page works under any path it is served from)."""
    tag = f'<script src="{XSRF_SCRIPT}"></script>'.encode()
    match = _HEAD.search(html)
    if match is None:
        return tag + html
    return html[: match.end()] + tag + html[match.end() :]


class XsrfScriptHandler(web.RequestHandler):
    """:data:`XSRF_SCRIPT_SOURCE`, for anyone: it holds nothing secret."""

    def get(self):
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(XSRF_SCRIPT_SOURCE)


class HealthHandler(_JsonErrors):
    """``<prefix>health`` without credentials, as MLflow answers it (``OK``), so that monitoring
    and the onboarding notebook can tell "up" from "down" without a token. Says nothing else."""

    def initialize(self, proxy: MlflowProxy):
        self.proxy = proxy

    async def get(self):
        try:
            response = await self.proxy.mlflow.fetch("GET", f"{self.proxy.prefix}health")
        except UpstreamError as e:
            raise Rejected(
                503, "TEMPORARILY_UNAVAILABLE", f"the MLflow server does not answer ({e})"
            ) from None
        self.set_status(200 if response.code == 200 else 503)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(response.body if response.code == 200 else "MLflow server not ready")


@web.stream_request_body
class ProxyHandler(HubOAuthenticated, _JsonErrors):
    """Everything under the service's path: authenticate, authorize, forward, relay."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, proxy: MlflowProxy):
        self.proxy = proxy
        self.hub_auth = proxy.hub_auth
        self.user_name = "-"
        self.caller: Caller | None = None
        self._rule: BodyRule | None = None
        self._buffer: bytearray | None = None  # a body read whole for its rule
        self._limit = proxy.max_body_size  # the most body bytes this request may send
        self._received = 0
        self._queue: asyncio.Queue | None = None  # a body streamed to MLflow as it comes
        self._upstream: asyncio.Future | None = None
        self.body_read = False

    # -- authentication

    def compute_etag(self):
        return None  # MLflow's headers are relayed as they are; tornado adds none of its own

    async def prepare(self):
        request = self.request
        request.connection.set_max_body_size(self.proxy.max_body_size)
        headers = request.headers
        if "upgrade" in headers.get("Connection", "").lower() or headers.get("Sec-Fetch-Mode") == "websocket":
            raise Rejected(400, "BAD_REQUEST", "websockets are not supported here")
        path = routed_path(request.path)
        chunked = "Transfer-Encoding" in headers  # tornado accepts only "chunked" here
        length = int(headers.get("Content-Length") or 0)
        if request.method in BODILESS_METHODS and (chunked or length):
            raise Rejected(400, "BAD_REQUEST", f"{request.method} requests carry no body here")
        user = await self._authenticate()
        if user is None:
            return  # redirected to the hub's login
        self.caller = Caller.from_model(user)
        self.user_name = self.caller.name
        if user.get("kind", "user") == "user" and self.user_name.startswith("service:"):
            # MLflow would take this user for the hub service of that name.
            raise Rejected(403, "PERMISSION_DENIED", "user names starting with 'service:' cannot use MLflow")
        self._rule = body_rule(request.method, path, self.proxy.prefix)
        # Uploads (POST/PUT/PATCH, large or of unknown length) stream to MLflow, framed as they
        # came; every other body is read whole, so that it goes out with its Content-Length.
        streamed = request.method in STREAMED_METHODS and (chunked or length > SMALL_BODY)
        buffered = self._rule is not None or (not streamed and (chunked or length))
        if buffered:
            self._limit = min(REWRITE_LIMIT, self.proxy.max_body_size)
        if length > self._limit:
            raise _too_large(self._limit)  # before MLflow hears of it
        if chunked:
            # tornado refuses a chunked body past its limit with a bare 400; data_received counts
            # instead, and answers as MLflow would.
            request.connection.set_max_body_size(sys.maxsize)
        if buffered:
            self._buffer = bytearray()
        elif streamed:
            # Start the upstream request now and feed it the body as it arrives.
            self._queue = asyncio.Queue(maxsize=4)
            self._upstream = asyncio.ensure_future(self._exchange(self._streamed_body()))

    async def _authenticate(self) -> dict | None:
        """The hub user model of the request, or None after redirecting a browser to log in.

        Raises 401 without valid credentials and 403 for a user lacking the service's scope.
        """
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            path = self.request.path
            if (
                self.request.method in ("GET", "HEAD")
                and "Authorization" not in self.request.headers
                and not is_api_path(path, self.proxy.prefix)
            ):
                # Answered in prepare(), like a refusal: tornado closes the connection (_JsonErrors).
                self.set_header("Connection", "close")
                self.redirect(self.get_login_url())
                return None
            if self.get_cookie(self.hub_auth.cookie_name) and "Authorization" not in self.request.headers:
                # HubOAuth ignores a login cookie that comes without the XSRF token.
                raise Rejected(
                    403,
                    "PERMISSION_DENIED",
                    "requests with the hub's login cookie need JupyterHub's XSRF token: send the "
                    "_xsrf cookie's value as X-XSRFToken (MLflow's UI pages do), or a hub API token",
                )
            raise Rejected(
                401,
                "UNAUTHENTICATED",
                "log in to the hub, or send a hub API token (MLFLOW_TRACKING_TOKEN) as "
                "'Authorization: Bearer <token>'",
            )
        try:
            model = self.check_hub_user(model)
        except UserNotAllowed:
            raise Rejected(
                403,
                "PERMISSION_DENIED",
                f"{model.get('kind', 'user')} {model['name']} may not use MLflow here "
                f"(it needs one of the hub scopes {', '.join(sorted(self.hub_scopes or ()))})",
            ) from None
        self._hub_auth_user_cache = model  # what tornado's current_user returns
        return model

    # -- the body

    async def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._limit and (self._upstream is None or not self._upstream.done()):
            # A chunked body past its limit: refused now, MLflow's request (an upload on its way)
            # ended unfinished; tornado closes the connection after the answer, the rest unread.
            if self._upstream is not None:
                self._upstream.cancel()
            self._buffer = None
            self.send_error(413, exc_info=(Rejected, _too_large(self._limit), None))
        elif self._buffer is not None:
            self._buffer += chunk
        elif self._queue is not None:
            await self._feed(chunk)

    async def _feed(self, item: bytes | None) -> None:
        """Hand a chunk (None: the end) to the upstream request, waiting while MLflow is slower
        than the client; dropped once the upstream request has ended (MLflow answered early)."""
        if self._upstream.done():
            return
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._upstream}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    async def _streamed_body(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    def on_connection_close(self):
        if self._upstream is not None and not self._upstream.done():
            self._upstream.cancel()  # the client went away mid-upload
        super().on_connection_close()  # ends the wait for the body (else the handler is never freed)

    # -- forwarding

    def _upstream_request(self) -> tuple[str, list[tuple[str, str]]]:
        """The target (path and query) and headers MLflow gets for this request."""
        request = self.request
        target = upstream_path(request.path, self.proxy.prefix)
        if request.query:
            target += "?" + request.query
        headers = forward_headers(request.headers)
        headers.extend(self.proxy.identify(self.caller, request.method, target))
        return target, headers

    async def _exchange(self, body: Body) -> None:
        """Send the request to MLflow and relay its answer to the client as it arrives."""
        target, headers = self._upstream_request()
        if body is not None and not isinstance(body, bytes) and "Content-Length" in self.request.headers:
            headers.append(("Content-Length", self.request.headers["Content-Length"]))
        relay = _Relay(self)
        try:
            await self.proxy.mlflow.stream(self.request.method, target, headers, body, relay)
            relay.end()
        except (UpstreamError, StreamClosedError) as e:
            if not relay.started:
                if isinstance(e, UpstreamError):
                    raise unavailable(e) from None
                raise
            # Status and headers are out: all that is left is to end the client's connection.
            log.info("%s %s: transfer interrupted: %s", self.request.method, self.request.path, e)
            self.request.connection.close()

    async def _forward(self, *args) -> None:
        self.body_read = True
        if self._finished:
            return
        if self._rule is not None:
            body = bytes(self._buffer)
            rewrite = rewrite_body(self._rule, body, self.caller, projects=self.proxy.permissions)
            if rewrite.share_with:
                await self._create_shared(rewrite)
                return
            await self._exchange(rewrite.body)
        elif self._buffer is not None:
            await self._exchange(bytes(self._buffer))
        elif self._upstream is not None:
            await self._feed(None)
            await self._upstream
        else:
            await self._exchange(None)

    get = head = post = put = delete = patch = options = _forward

    async def _create_shared(self, rewrite: Rewrite) -> None:
        """Create or rename a project experiment, then share it with its group before the
        client hears of it, so that the group's members can use it as soon as it exists."""
        target, headers = self._upstream_request()
        try:
            response = await self.proxy.mlflow.fetch(self.request.method, target, headers, rewrite.body)
        except UpstreamError as e:
            raise unavailable(e) from None
        if response.code == 200:
            experiment_id = rewrite.experiment_id or str(json.loads(response.body).get("experiment_id", ""))
            try:
                await self.proxy.share_experiment(experiment_id, rewrite.share_with)
            except Rejected as e:
                log.error("experiment %s: not shared with group %s: %s", experiment_id, rewrite.share_with, e)
                raise Rejected(
                    502,
                    "TEMPORARILY_UNAVAILABLE",
                    f"experiment {experiment_id} was saved, but sharing it with the group "
                    f"{rewrite.share_with} failed; ask an admin ({e.message})",
                ) from None
        self.start_answer(response.code, response.reason, response.headers)
        self.write(response.body)

    def start_answer(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> None:
        """MLflow's status and headers, as the client's answer."""
        self.set_status(code, reason or "Unknown")
        for name in ("Content-Type", "Server", "Date"):
            self.clear_header(name)
        for name, value in relay_headers(headers.get_all()):
            if name.lower() in _SINGLE_RESPONSE_HEADERS:
                self.set_header(name, value)  # MLflow sends Date twice (uvicorn's and Flask's)
            else:
                self.add_header(name, value)


class ReadableExperimentsHandler(ProxyHandler):
    """``GET <service>/werkbank/readable-experiments?viewer=<user>&experiment_id=<id>...``: those
    of the experiments that the caller AND the hub user ``viewer`` may both read, as MLflow's
    permission checks decide for each of them (``{"experiment_ids": [...]}``).

    For shared dashboards (werkbank_lab.tracking.readable_experiments): the owner's session
    renders a page for a viewer and shows only what the viewer's own permissions allow. The
    caller learns nothing they could not read already, except whether ``viewer`` may read it
    too. The viewer's groups and admin flag come from the hub, never from the request."""

    async def prepare(self):
        user = await self._authenticate()
        if user is None:
            return
        self.caller = Caller.from_model(user)
        self.user_name = self.caller.name

    async def get(self):
        viewer_name = self.get_argument("viewer", "")
        ids = self.get_arguments("experiment_id")
        if not viewer_name or not ids or len(ids) > MAX_READABLE_QUESTION:
            raise Rejected(
                400,
                "INVALID_PARAMETER_VALUE",
                f"expected viewer=<user> and 1 to {MAX_READABLE_QUESTION} experiment_id=<id>",
            )
        if not all(i.isdigit() for i in ids):
            raise Rejected(400, "INVALID_PARAMETER_VALUE", "experiment ids are numbers")
        viewer = await self._hub_user(viewer_name)
        readable = []
        for experiment_id in dict.fromkeys(ids) if viewer is not None else ():
            if await self._may_read(self.caller, experiment_id) and await self._may_read(
                viewer, experiment_id
            ):
                readable.append(experiment_id)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"experiment_ids": readable}))

    async def _hub_user(self, name: str) -> Caller | None:
        """The hub's word on ``name`` (None for no such user); needs ``read:users`` for this service."""
        url = f"{self.hub_auth.api_url}/users/{quote(name, safe='')}"
        request = HTTPRequest(
            url,
            headers={"Authorization": f"token {self.hub_auth.api_token}"},
            request_timeout=10,
            ssl_options=self.proxy.hub_ssl,
        )
        try:
            reply = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.code == 404:
                return None
            raise Rejected(
                502, "TEMPORARILY_UNAVAILABLE", f"the hub did not say who {name} is ({e.code})"
            ) from None
        model = json.loads(reply.body)
        return Caller.from_model(model) if model.get("kind", "user") == "user" else None

    async def _may_read(self, who: Caller, experiment_id: str) -> bool:
        target = f"{self.proxy.prefix}api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
        try:
            response = await self.proxy.mlflow.fetch("GET", target, self.proxy.identify(who, "GET", target))
        except UpstreamError as e:
            raise unavailable(e) from None
        return response.code == 200


class _Relay:
    """MLflow's answer on its way to the client (a :class:`~werkbank_spawner.tracking.upstream.Sink`):
    a small body goes out in one write with the headers when the handler finishes; a large
    one (an artifact download) chunk by chunk, MLflow slowed down to the client's pace."""

    def __init__(self, handler: ProxyHandler):
        self.handler = handler
        self.started = False
        self.streaming = False
        self.page: bytearray | None = None  # a UI page, held to add the XSRF script

    def start(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> None:
        self.started = True
        self.handler.start_answer(code, reason, headers)
        length = headers.get("Content-Length", "")
        small = length.isdigit() and int(length) <= SMALL_BODY
        self.streaming = not small
        if (
            small
            and code == 200
            and self.handler.request.method == "GET"
            and headers.get("Content-Type", "").startswith("text/html")
            and "Content-Encoding" not in headers
        ):
            self.page = bytearray()
            self.handler.clear_header("Content-Length")  # tornado sets the new one

    def chunk(self, data: bytes):
        if self.page is not None:
            self.page += data
            return None
        self.handler.write(data)
        return self.handler.flush() if self.streaming else None

    def end(self) -> None:
        """After MLflow's answer is complete: a held page goes out, with the XSRF script."""
        if self.page is not None:
            self.handler.write(with_xsrf_script(bytes(self.page)))


# --- command line -------------------------------------------------------------------------


async def serve(
    upstream: str, *, permissions: bool = False, max_body_size: int = DEFAULT_MAX_BODY_SIZE
) -> None:
    """Run the proxy as the hub's managed service until SIGTERM or SIGINT."""
    service_url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
    if not service_url or not prefix:
        raise SystemExit(
            "mlflow_proxy: run me as a JupyterHub service with a url (no JUPYTERHUB_SERVICE_URL)"
        )
    listen = urlsplit(service_url)
    # Tokens in URLs would be forwarded to MLflow in the query; only headers and cookies count.
    # What the hub says of a token (user, admin flag, groups) is cached for a minute, not
    # JupyterHub's five: a user added to a group sees its projects soon after.
    hub_auth = HubOAuth(base_url=prefix, allow_token_in_url=False, cache_max_age=60)
    try:
        key = signing_key()
    except (OSError, ValueError) as e:
        raise SystemExit(f"mlflow_proxy: cannot read the signing key from {SECRETS_ENV}: {e}") from None
    # The MLflow server is asked over plain HTTP (or what --upstream says): with the proxy in
    # front, the hub binds it to a loopback address only (site rules), on this machine.
    proxy = MlflowProxy(
        upstream=upstream,
        prefix=prefix,
        hub_auth=hub_auth,
        permissions=permissions,
        key=key,
        service_name=os.environ.get("JUPYTERHUB_SERVICE_NAME", "mlflow"),
        max_body_size=max_body_size,
        hub_ssl=make_ssl_context(hub_auth.keyfile, hub_auth.certfile, cafile=hub_auth.client_ca),
    )
    if permissions and not proxy.key:
        raise SystemExit(f"mlflow_proxy: --permissions needs the key shared with MLflow ({SECRETS_ENV})")
    server = HTTPServer(
        proxy.app(), xheaders=True, max_body_size=max_body_size, ssl_options=serving_tls(listen.scheme)
    )
    server.listen(listen.port or (443 if listen.scheme == "https" else 80), listen.hostname or "127.0.0.1")
    log.info("werkbank MLflow proxy: %s%s -> %s", service_url.rstrip("/"), prefix, proxy.upstream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()
    proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m werkbank_spawner.tracking.proxy",
        description="Authenticating proxy in front of MLflow, run by JupyterHub as a managed service.",
    )
    parser.add_argument("--upstream", required=True, help="the MLflow server, e.g. http://127.0.0.1:5000")
    parser.add_argument(
        "--permissions",
        action="store_true",
        help="MLflow runs its basic-auth app with werkbank_spawner.tracking.auth: enforce the project "
        f"rule on experiment names and share project experiments with their group (needs {SECRETS_ENV})",
    )
    parser.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY_SIZE,
        help=f"largest request body in bytes (artifact uploads; default {DEFAULT_MAX_BODY_SIZE})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("WERKBANK_MLFLOW_PROXY_LOG_LEVEL", "INFO"),
        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args.upstream, permissions=args.permissions, max_body_size=args.max_body_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
