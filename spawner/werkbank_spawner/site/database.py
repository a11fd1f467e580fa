"""The hub's database (``hub.db_url``): the URL JupyterHub gets, with the password read from
``hub.db_password_file`` at every start.

The password goes into the URL JupyterHub gets, not into ``JupyterHub.db_kwargs``: JupyterHub
hands alembic the URL and nothing else, when it stamps a new database and when ``jupyterhub
upgrade-db`` upgrades an old one (in a process of its own); a password passed beside the URL
would not reach it. JupyterHub replaces a password in a URL by ``[redacted]`` in its log lines.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from .schema import Hub, SiteConfigError


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


def read_password(path: Path) -> str:
    """The first line of ``path``, a regular file that neither its group nor others may read or
    write (libpq's rule for ~/.pgpass): a password anyone else can read is no secret."""
    key = "hub.db_password_file"
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
    password = text.splitlines()[0] if text else ""
    if not password:
        raise SiteConfigError(key, f"{path} is empty; its first line is the database password")
    return password
