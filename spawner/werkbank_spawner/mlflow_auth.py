"""Who is asking, for MLflow's own permission checks: runs *inside* the MLflow server.

werkbank's MLflow server runs MLflow's basic-auth app (``mlflow server --app-name basic-auth``),
which checks every request against per-experiment and per-model permissions, filters searches,
and gives the creator of an experiment or registered model MANAGE on it. Its question "who is
this?" is answered here instead of by a password: by headers that only werkbank's proxy
(:mod:`werkbank_spawner.mlflow_proxy`) can send, as proven by a secret shared with it through
the environment of both services::

    X-Werkbank-Proxy-Secret: <WERKBANK_MLFLOW_PROXY_SECRET>
    X-Werkbank-User:   the hub user (or ``service:<name>``), percent-encoded
    X-Werkbank-Admin:  "1" for hub admins, who see and may change everything
    X-Werkbank-Groups: the user's hub groups, comma-separated, each percent-encoded

The proxy removes any ``X-Werkbank-*`` header a client sent. The secret matters because the
server listens on loopback, which every job on the hub's machine can reach.

MLflow knows only users it has a record of, so a user's first request creates one (with a random
password nobody knows: MLflow's password logins stay impossible). Admin flag and groups are
mirrored on every change: each hub group is an MLflow role ``hub-group:<group>``, which the
proxy grants EDIT on the experiments of that project (``<group>/...``).

Configured in the auth app's ini file (``MLFLOW_AUTH_CONFIG_PATH``), which the hub writes::

    authorization_function = werkbank_spawner.mlflow_auth:authenticate
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from urllib.parse import quote, unquote

# Flask and MLflow are imported in the functions: the proxy imports this module for its names
# and header encoding, and needs neither.

SECRET_ENV = "WERKBANK_MLFLOW_PROXY_SECRET"
SECRET_HEADER = "X-Werkbank-Proxy-Secret"
USER_HEADER = "X-Werkbank-User"
ADMIN_HEADER = "X-Werkbank-Admin"
GROUPS_HEADER = "X-Werkbank-Groups"
#: MLflow roles that mirror hub groups, in MLflow's default workspace.
ROLE_PREFIX = "hub-group:"
ROLE_WORKSPACE = "default"

# The per-process record of what was last written to the auth database for each user, so that
# the common case (several calls per request: MLflow asks once per validator) is a dict lookup.
_synced: dict[str, tuple[bool, tuple[str, ...]]] = {}
_lock = threading.Lock()


def encode(name: str) -> str:
    """A user or group name as (part of) a header value: percent-encoded UTF-8, except the
    characters names usually consist of, so that headers stay readable in logs."""
    return quote(name, safe="@+.-_~:")


def encode_groups(groups) -> str:
    """An ``X-Werkbank-Groups`` value."""
    return ",".join(encode(g) for g in sorted(groups))


def parse_groups(value: str) -> tuple[str, ...]:
    """The groups of an ``X-Werkbank-Groups`` value, sorted."""
    return tuple(sorted({unquote(g) for g in value.split(",") if g.strip()}))


def authenticate():
    """MLflow's ``authorization_function``: the user the proxy vouches for (a werkzeug
    ``Authorization``), or a 401 response."""
    from flask import make_response, request
    from werkzeug.datastructures import Authorization

    secret = os.environ.get(SECRET_ENV, "")
    sent = request.headers.get(SECRET_HEADER, "")
    if not secret or not hmac.compare_digest(sent.encode(), secret.encode()):
        return make_response("MLflow is reached through the hub: <hub>/services/mlflow/\n", 401)
    username = unquote(request.headers.get(USER_HEADER, "")).strip()
    if not username:
        return make_response("no user\n", 401)
    state = (request.headers.get(ADMIN_HEADER) == "1", parse_groups(request.headers.get(GROUPS_HEADER, "")))
    if _synced.get(username) != state:
        with _lock:
            if _synced.get(username) != state:
                _sync(username, *state)
                _synced[username] = state
    return Authorization("basic", {"username": username, "password": None})


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
