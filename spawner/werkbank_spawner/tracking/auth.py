"""Who is asking, for MLflow's own permission checks: runs *inside* the MLflow server.

werkbank's MLflow server runs MLflow's basic-auth app (``mlflow server --app-name basic-auth``),
which checks every request against per-experiment and per-model permissions, filters searches,
and gives the creator of an experiment or registered model MANAGE on it. Its question "who is
this?" is answered here instead of by a password: by an assertion that only werkbank's proxy
(:mod:`werkbank_spawner.tracking.proxy`) can make, because it is signed (HMAC-SHA256) with a key
that the hub makes anew at every start and writes only into the two services' secrets files
(:data:`SECRETS_ENV`, :func:`signing_key`)::

    X-Werkbank-Assertion: v1;<unix time>;<user>;<admin 0|1>;<groups>;<signature>

The signature covers the user (or ``service:<name>``), the admin flag, the hub groups, and the
request it is for: method, decoded path (as MLflow routes it) and raw query string, and the time.
So an assertion cannot be made up, nor moved to another request, nor used after
:data:`MAX_AGE` seconds. A bare header, whatever its spelling, proves nothing: the server
listens on loopback, which every job on the hub's machine can reach.

MLflow knows only users it has a record of, so a user's first request creates one (with a random
password nobody knows: MLflow's password logins stay impossible). Admin flag and groups are
mirrored on every change: each hub group is an MLflow role ``hub-group:<group>``, which the
proxy grants EDIT on the experiments of that project (``<group>/...``).

Configured in the auth app's ini file (``MLFLOW_AUTH_CONFIG_PATH``), which the hub writes::

    authorization_function = werkbank_spawner.tracking.auth:authenticate
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote

# Flask and MLflow are imported in the functions: the proxy imports this module to sign, and
# needs neither.

#: The environment variable that names a service's secrets file, which the hub writes at every
#: start (:func:`read_secrets`): the signing key (the same in both services) and, for the MLflow
#: server, the variables its launcher sets (:mod:`.server_launcher`). A path: JupyterHub keeps
#: each managed service's environment in its database, so no secret goes there.
SECRETS_ENV = "WERKBANK_MLFLOW_SECRETS"
#: Without :data:`SECRETS_ENV`: the environment variable that holds the signing key itself, for a
#: proxy or server started by hand (the tests' own MLflow server); never the hub's services.
KEY_ENV = "WERKBANK_MLFLOW_SIGNING_KEY"
ASSERTION_HEADER = "X-Werkbank-Assertion"
#: Seconds an assertion is good for: the proxy signs a request just before sending it on, and
#: MLflow reads it when the request arrives; the slack is for a busy machine.
MAX_AGE = 30
#: MLflow roles that mirror hub groups, in MLflow's default workspace.
ROLE_PREFIX = "hub-group:"
ROLE_WORKSPACE = "default"
_VERSION = "v1"

# The per-process record of what was last written to the auth database for each user, so that
# the common case (several calls per request: MLflow asks once per validator) is a dict lookup.
_synced: dict[str, tuple[bool, tuple[str, ...]]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Identity:
    """Who a verified assertion says is asking."""

    name: str
    admin: bool = False
    groups: tuple[str, ...] = ()


class InvalidAssertion(ValueError):
    """An assertion that is missing, malformed, stale, or not signed with the key."""


def encode(name: str) -> str:
    """A user or group name as (part of) a header value: percent-encoded UTF-8, except the
    characters names usually consist of, so that headers stay readable in logs. Never contains
    ``;``, ``,``, white space or control characters."""
    return quote(name, safe="@+.-_~:")


def encode_groups(groups) -> str:
    """Groups as one field of an assertion: sorted, encoded, comma-separated."""
    return ",".join(encode(g) for g in sorted(groups))


def parse_groups(value: str) -> tuple[str, ...]:
    """The groups of an :func:`encode_groups` value, sorted."""
    return tuple(sorted({unquote(g) for g in value.split(",") if g.strip()}))


def _mac(key: bytes, fields: tuple[str, ...]) -> str:
    # Every field is free of newlines: names are encoded, the proxy refuses control characters
    # in paths, and a query string cannot hold one. So the message has one reading.
    message = "\n".join(("werkbank-mlflow", *fields)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(key: bytes, identity: Identity, method: str, path: str, query: str, now: float | None = None) -> str:
    """The :data:`ASSERTION_HEADER` value for one request: ``path`` decoded (what MLflow routes),
    ``query`` as sent."""
    fields = (
        _VERSION,
        str(int(time.time() if now is None else now)),
        encode(identity.name),
        "1" if identity.admin else "0",
        encode_groups(identity.groups),
    )
    return ";".join((*fields, _mac(key, (*fields, method, path, query))))


def verify(key: bytes, value: str, method: str, path: str, query: str, now: float | None = None) -> Identity:
    """The identity an assertion states for this request; raises :class:`InvalidAssertion`."""
    if not key:
        raise InvalidAssertion("no signing key")
    parts = value.split(";")
    if len(parts) != 6 or parts[0] != _VERSION:
        raise InvalidAssertion("malformed assertion")
    version, stamp, user, admin, groups, mac = parts
    if not hmac.compare_digest(mac, _mac(key, (version, stamp, user, admin, groups, method, path, query))):
        raise InvalidAssertion("bad signature")
    age = (time.time() if now is None else now) - int(stamp)
    if not -MAX_AGE <= age <= MAX_AGE:
        raise InvalidAssertion(f"assertion is {age:.0f} s old")
    name = unquote(user, errors="strict")
    if not name or admin not in ("0", "1"):
        raise InvalidAssertion("malformed assertion")
    return Identity(name, admin == "1", parse_groups(groups))


def read_secrets(path: str | os.PathLike) -> dict:
    """The secrets file the hub writes for one of its services: a JSON object with
    ``signing_key`` (a string) and ``environment`` (names to strings), either optional.

    Raises :class:`OSError` for a file that cannot be read or is a symbolic link, and
    :class:`ValueError` for one that is not this process's account's own and private to it
    (mode 0600 or stricter), or not of that form: a secret others could have read or written is
    none."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8") as f:
        info = os.fstat(f.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise ValueError(
                f"{path} is not private to this account (owner uid {info.st_uid}, "
                f"mode {info.st_mode & 0o777:o}; the hub writes it 0600)"
            )
        data = json.load(f)
    environment = data.get("environment", {}) if isinstance(data, dict) else None
    if (
        not isinstance(environment, dict)
        or not isinstance(data.get("signing_key", ""), str)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items())
    ):
        raise ValueError(f"{path} is not a secrets file of werkbank's hub")
    return data


@functools.cache
def _signing_key_from(path: str) -> bytes:
    return read_secrets(path).get("signing_key", "").encode()


def signing_key() -> bytes:
    """The key assertions are signed with: from the secrets file :data:`SECRETS_ENV` names (read
    once per process: the hub restarts both services with a new key), else :data:`KEY_ENV`;
    empty if neither. Raises what :func:`read_secrets` raises."""
    path = os.environ.get(SECRETS_ENV, "")
    return _signing_key_from(path) if path else os.environ.get(KEY_ENV, "").encode()


def authenticate():
    """MLflow's ``authorization_function``: the user the proxy vouches for in a valid assertion
    for this very request (a werkzeug ``Authorization``), or a 401 response."""
    from flask import make_response, request
    from werkzeug.datastructures import Authorization

    # Several headers of the name (in any spelling: the WSGI layer joins them) make one value
    # that no signature matches.
    value = ",".join(request.headers.getlist(ASSERTION_HEADER))
    query = request.query_string.decode("latin-1")
    try:
        who = verify(signing_key(), value, request.method, request.path, query)
    except (InvalidAssertion, ValueError):
        return make_response("MLflow is reached through the hub: <hub>/services/mlflow/\n", 401)
    state = (who.admin, who.groups)
    if _synced.get(who.name) != state:
        with _lock:
            if _synced.get(who.name) != state:
                _sync(who.name, *state)
                _synced[who.name] = state
    return Authorization("basic", {"username": who.name, "password": None})


def _sync(username: str, is_admin: bool, groups: tuple[str, ...]) -> None:
    """Make the auth database's record of ``username`` match the hub: exists, admin flag, roles.

    Several server workers may do this at once for the same user: each step tolerates another
    process having done it first.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import store  # the auth app's store, set up before any request

    if not store.has_user(username, use_primary=True):
        try:
            store.create_user(username, secrets.token_urlsafe(32), is_admin=is_admin)
        except MlflowException:
            pass  # created by another worker meanwhile
    user = store.get_user(username)
    if user.is_admin != is_admin:
        store.update_user(username, is_admin=is_admin)
    wanted = {ROLE_PREFIX + group for group in groups}
    have = {role.name: role for role in store.list_user_roles(user.id) if role.name.startswith(ROLE_PREFIX)}
    for name in sorted(wanted - have.keys()):
        role = _role(store, name)
        try:
            store.assign_role_to_user(user.id, role.id)
        except MlflowException:
            pass  # assigned by another worker meanwhile
    for name in sorted(have.keys() - wanted):
        store.unassign_role_from_user(user.id, have[name].id)


def _role(store, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return store.get_role_by_name(ROLE_WORKSPACE, name)
    except MlflowException:
        pass
    try:
        return store.create_role(name, ROLE_WORKSPACE, "members of the JupyterHub group (werkbank)")
    except MlflowException:
        return store.get_role_by_name(ROLE_WORKSPACE, name)  # created by another worker meanwhile
