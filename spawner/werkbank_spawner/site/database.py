"""The hub's database (``hub.db_url``): the URL JupyterHub gets, with the password read from
``hub.db_password_file`` at every start.

The password goes into the URL JupyterHub gets, not into ``JupyterHub.db_kwargs``: JupyterHub
hands alembic the URL and nothing else, when it stamps a new database and when ``jupyterhub
upgrade-db`` upgrades an old one (in a process of its own); a password passed beside the URL
would not reach it. JupyterHub replaces a password in a URL by ``[redacted]`` in its log lines.

:func:`read_private` and :func:`read_password` read the site's other secret files too (the OAuth
client secret, the proxy's TLS key), with the same rule: private to their owner.

MLflow's databases (``tracking.mlflow.backend_store_uri``, ``auth_database_uri``) get their
password from ``tracking.mlflow.db_password_file`` (:func:`mlflow_db_password`), which reaches the
server as libpq's ``PGPASSWORD`` (:func:`~.services.mlflow_server_service` says why). No site
URI may hold a password (:func:`refuse_password_in_url`).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .schema import Hub, MLflow, SiteConfigError


def hub_db_url(hub: Hub, state: Path) -> str:
    """``JupyterHub.db_url``: ``hub.db_url`` with the password from ``hub.db_password_file``
    (escaped as a URL needs it), or SQLite in ``state`` (``hub.data_dir``) when empty.

    Raises :class:`SiteConfigError` (path ``hub.db_password_file``) when the file cannot be
    read, is not private to its owner, or has no password."""
    if not hub.db_url:
        return f"sqlite:///{state / 'jupyterhub.sqlite'}"
    if not hub.db_password_file:
        return hub.db_url
    url = make_url(hub.db_url).set(password=read_password(Path(hub.db_password_file)))
    return url.render_as_string(hide_password=False)


def read_password(path: Path, key: str = "hub.db_password_file", what: str = "the database password") -> str:
    """The first line of ``path`` (:func:`read_private`), which must not be empty; ``key`` is
    the site key that names the file, ``what`` says what the line is, for the error."""
    text = read_private(path, key)
    password = text.splitlines()[0] if text else ""
    if not password:
        raise SiteConfigError(key, f"{path} is empty; its first line is {what}")
    return password


def read_private(path: Path, key: str) -> str:
    """The text of ``path``, a regular file that neither its group nor others may read or write
    (libpq's rule for ~/.pgpass): a secret anyone else can read is no secret. Raises
    :class:`SiteConfigError` (path ``key``, the site key naming the file) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise SiteConfigError(key, f"{path} is not a regular file")
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise SiteConfigError(key, f"cannot read {path}: {reason}") from None
    if info.st_mode & 0o077:
        raise SiteConfigError(
            key,
            f"{path} may be read or changed by others than its owner (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 {path}",
        )
    return text


def refuse_password_in_url(uri: str, key: str, password_file_key: str) -> None:
    """Raise :class:`SiteConfigError` (path ``key``) when the database URI ``uri`` holds a
    password, in its user part (``user:password@``) or in libpq's ``?password=``; the hint names
    ``password_file_key``, where the password belongs. The message never repeats the URI. A URI
    that SQLAlchemy cannot parse is read as a plain URL (MLflow's stores take other URIs too)."""
    try:
        url = make_url(uri)
        found = url.password is not None or "password" in url.query
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        try:
            parts = urlsplit(uri)
            found = parts.password is not None or "password" in parse_qs(parts.query)
        except ValueError:  # an unbalanced [ in the host
            found = False
    if found:
        raise SiteConfigError(
            key,
            "holds a password, which a site file must not: put it in a file readable by the hub "
            f"only (chmod 600) and name that file in {password_file_key}",
        )


#: SQLAlchemy's PostgreSQL drivers that connect through libpq, which reads ``PGPASSWORD``
#: (pg8000, pure Python, does not).
LIBPQ_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")


def mlflow_db_password(mlflow: MLflow) -> str:
    """The password of the PostgreSQL role(s) of ``tracking.mlflow.backend_store_uri`` and
    ``auth_database_uri``: the first line of ``tracking.mlflow.db_password_file``, read at every
    start; "" without that file.

    Raises :class:`SiteConfigError` (path ``tracking.mlflow.db_password_file``) when the file
    cannot be read, is not private to its owner (:func:`read_private`), has no password, or
    belongs to another account than the hub's: its owner would know the password."""
    if not mlflow.db_password_file:
        return ""
    key, path = "tracking.mlflow.db_password_file", Path(mlflow.db_password_file)
    password = read_password(path, key)
    owner, hub = path.stat().st_uid, os.geteuid()
    if owner != hub:
        raise SiteConfigError(
            key,
            f"{path} belongs to {_account(owner)}, not to the hub's account {_account(hub)}; "
            f"chown {_account(hub)} {path}",
        )
    return password


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
