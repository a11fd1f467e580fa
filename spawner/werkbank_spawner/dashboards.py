"""Dashboard-only sharing, hub side: which of a user's notebooks other hub users may open as
Voila dashboards, and the JupyterHub share that lets their browsers reach the server at all.

Two layers, each necessary:

- **JupyterHub**: a viewer's browser reaches ``/user/<owner>/`` only with
  ``access:servers!server=<owner>/``, which a JupyterHub *share* grants (OAuth to a server
  needs that exact scope; a narrower custom scope cannot pass it). That scope alone would open
  the whole server, so it is never granted without the second layer.
- **The owner's server** (``werkbank_lab.dashboards``, started with it by the spawner) asks
  :class:`ViewerAccessHandler` about every request of a user who is not the owner: those who
  reach the server through a role (hub admins, a course's trainers) keep full access; everybody
  else may open the dashboards shared with them and nothing else.

The shares live here, one JSON file per owner in ``dashboards_dir`` (root only): a share is a
notebook path and one of a user, a hub group, or a link (a secret URL; whoever opens it while
logged in joins that share). The JupyterHub shares follow them: a user or group holds one
exactly while some dashboard of the owner is shared with them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import posixpath
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

from jupyterhub import orm
from jupyterhub import roles as jupyterhub_roles
from jupyterhub import scopes as jupyterhub_scopes
from jupyterhub.apihandlers import APIHandler
from jupyterhub.handlers import BaseHandler
from tornado import web

from werkbank_core.script import USERNAME

from .server_tokens import server_of_token

#: Longest notebook path a share may name (characters).
MAX_PATH = 400
#: A link lives this long unless the owner asks for less (seconds).
LINK_LIFETIME = 30 * 24 * 3600
#: A hub group name as JupyterHub allows them (no slash: they appear in URLs and scopes).
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}\Z")


class ShareError(ValueError):
    """A share request that cannot be met; the message says why (shown to the owner)."""


def notebook_path(path: object) -> str:
    """``path`` as the owner's server names the notebook: relative to its root, '/'-separated,
    ending in .ipynb, no dot segments, empty parts or control characters. Raises
    :class:`ShareError` otherwise: the server compares request paths with this exact spelling."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise ShareError(f"a notebook path of 1 to {MAX_PATH} characters")
    if any(ord(ch) < 32 or ch in "%\\\x7f" for ch in path):
        # The server's gate refuses these in request paths (werkbank_lab.dashboards.request_path).
        raise ShareError("the path has control characters, backslashes or %")
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ShareError(f"{path!r}: a path relative to your server's root without . or .. parts")
    if posixpath.splitext(path)[1] != ".ipynb":
        raise ShareError(f"{path!r} is not a notebook (.ipynb)")
    return path


@dataclass
class Share:
    """One notebook shared with one user, one group or through one link."""

    id: str
    path: str
    user: str = ""
    group: str = ""
    #: SHA-256 of the link's secret (the secret itself is shown to the owner once).
    link: str = ""
    #: Unix time the link stops working (0: not a link).
    expires: float = 0
    #: Users who joined through the link.
    joined: list[str] = field(default_factory=list)
    created: float = 0

    def describe(self) -> dict:
        """The share as the owner sees it (no secret)."""
        out = {"id": self.id, "path": self.path, "created": self.created}
        if self.user:
            out["user"] = self.user
        elif self.group:
            out["group"] = self.group
        else:
            out.update(link=True, expires=self.expires, joined=sorted(self.joined))
        return out

    def admits(self, viewer: str, groups: set[str], now: float) -> bool:
        if self.user:
            return self.user == viewer
        if self.group:
            return self.group in groups
        return viewer in self.joined and now < self.expires


class DashboardShares:
    """The shares of one owner, in ``<folder>/<owner>.json``. The hub is one process and these
    methods do not await, so a read-change-write is never interleaved with another."""

    def __init__(self, folder: str | os.PathLike, owner: str):
        if not USERNAME.match(owner):
            raise ShareError(f"{owner!r} is not a user name")
        self.owner = owner
        self.file = Path(folder) / f"{owner}.json"

    def load(self) -> list[Share]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return []
        return [Share(**item) for item in data.get("shares", [])]

    def save(self, shares: list[Share]) -> None:
        self.file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.file.with_suffix(".json.partial")
        partial.write_text(json.dumps({"shares": [asdict(s) for s in shares]}, indent=1))
        partial.chmod(0o600)
        partial.replace(self.file)

    def add(
        self, path: str, *, user: str = "", group: str = "", link_lifetime: float = 0
    ) -> tuple[Share, str]:
        """Share ``path`` with ``user``, ``group`` or (``link_lifetime`` > 0) a new link.
        Returns the share and, for a link, its secret (empty otherwise). Sharing the same path
        with the same user or group again returns the existing share."""
        path, now, secret = notebook_path(path), time.time(), ""
        shares = self.load()
        if user or group:
            for share in shares:
                if share.path == path and (share.user, share.group) == (user, group):
                    return share, ""
            share = Share(id=_new_id(), path=path, user=user, group=group, created=now)
        else:
            secret = secrets.token_urlsafe(24)
            share = Share(
                id=_new_id(), path=path, link=_digest(secret), expires=now + link_lifetime, created=now
            )
        self.save([*shares, share])
        return share, secret

    def remove(self, share_id: str) -> Share | None:
        shares = self.load()
        gone = next((s for s in shares if s.id == share_id), None)
        if gone is not None:
            self.save([s for s in shares if s is not gone])
        return gone

    def join(self, secret: str, viewer: str) -> Share | None:
        """The link share whose secret this is, with ``viewer`` added to it; None for an unknown
        or expired secret."""
        digest, now = _digest(secret), time.time()
        shares = self.load()
        for share in shares:
            if share.link and hmac.compare_digest(share.link, digest) and now < share.expires:
                if viewer != self.owner and viewer not in share.joined:
                    share.joined.append(viewer)
                    self.save(shares)
                return share
        return None

    def dashboards_for(self, viewer: str, groups: set[str]) -> list[str]:
        now = time.time()
        return sorted({s.path for s in self.load() if s.admits(viewer, groups, now)})

    def holders(self) -> tuple[set[str], set[str]]:
        """Users and groups that some live share admits."""
        users, groups, now = set(), set(), time.time()
        for share in self.load():
            if share.user:
                users.add(share.user)
            elif share.group:
                groups.add(share.group)
            elif now < share.expires:
                users.update(share.joined)
        return users, groups


def _new_id() -> str:
    return secrets.token_hex(6)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def access_scope(owner: str) -> str:
    return f"access:servers!server={owner}/"


def sync_hub_shares(db, owner: orm.User, shares: DashboardShares) -> None:
    """Make the JupyterHub shares of ``owner``'s default server match :meth:`holders`: grant
    ``access:servers`` to each user and group a dashboard is shared with, revoke it from the
    rest (only that scope; shares made by other means keep their other scopes)."""
    spawner = owner.orm_spawners.get("")
    if spawner is None:
        return
    scope = access_scope(owner.name)
    users, groups = shares.holders()
    # JupyterHub 6.1 resolves an OAuth token's scopes with its user's own shares only, not
    # their groups' (scopes.get_scopes_for reads User.shared_with_me, not all_shared_with_me):
    # a group share alone lets members pass the OAuth step and then drops the access from the
    # token. So each member gets a share of their own too, brought up to date whenever anyone
    # opens a dashboard through the hub (OpenDashboardHandler), so that later members get in.
    for name in groups:
        group = orm.Group.find(db, name)
        users.update(u.name for u in (group.users if group is not None else []))
    for share in list(spawner.shares):
        holder = share.user or share.group
        wanted = users if share.user is not None else groups
        if holder is not None and holder.name not in wanted:
            orm.Share.revoke(db, spawner, holder, scopes=[scope])
    for name in users:
        user = orm.User.find(db, name)
        if user is not None and user is not owner:
            orm.Share.grant(db, spawner, user, scopes=[scope])
    for name in groups:
        group = orm.Group.find(db, name)
        if group is not None:
            orm.Share.grant(db, spawner, group, scopes=[scope])


def has_role_access(db, viewer: orm.User, owner: str) -> bool:
    """Whether ``viewer`` may use ``owner``'s default server through their roles (admins, a
    course's trainers, their groups' roles), i.e. not only through a share."""
    expanded = jupyterhub_roles.roles_to_expanded_scopes(jupyterhub_roles.get_roles_for(viewer), viewer)
    return jupyterhub_scopes.has_scope(access_scope(owner), expanded, db=db)


# --- the hub's API ----------------------------------------------------------------------------

ROUTE = r"/api/werkbank/dashboards/([^/]+)"
ACCESS_ROUTE = r"/api/werkbank/dashboards/([^/]+)/viewers/([^/]+)"
SHARE_ROUTE = r"/api/werkbank/dashboards/([^/]+)/shares/([0-9a-f]+)"
#: The hub page a link points at: /hub/werkbank/dashboard-links/<owner>/<secret>.
LINK_ROUTE = r"/werkbank/dashboard-links/([^/]+)/([A-Za-z0-9_-]+)"
#: The hub page a dashboard is shared under: /hub/werkbank/dashboards/<owner>/<path>.
OPEN_ROUTE = r"/werkbank/dashboards/([^/]+)/(.+)"


class _OwnerServerAPI(APIHandler):
    """Requests made with the owner's own server token: the server's extension manages shares for
    its owner, and its gate asks about viewers. No other token (not even the owner's others, which
    may be narrower) manages shares."""

    #: Whether the handler answers 404 when the hub keeps no shares (``dashboards_dir`` empty).
    sharing_needed = True

    def _shares_of(self, owner_name: str) -> tuple[orm.User, DashboardShares]:
        user = self.current_user
        if server_of_token(self) is None or user.name != owner_name:
            raise web.HTTPError(403, "only the owner's server manages its dashboard shares")
        folder = getattr(user.spawner, "dashboards_dir", "")
        if not folder and self.sharing_needed:
            raise web.HTTPError(404, "dashboard sharing is not enabled on this hub")
        return user.orm_user, DashboardShares(folder, owner_name) if folder else None

    def _reply(self, shares: DashboardShares, **extra) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"shares": [s.describe() for s in shares.load()], **extra}))


class SharesHandler(_OwnerServerAPI):
    """``GET``: the owner's shares. ``POST {"path", "user"|"group"|"link": true, "expires_in"?}``:
    share a notebook; a link's URL (with its secret) is in the answer, once."""

    @web.authenticated
    def get(self, owner_name):
        _, shares = self._shares_of(owner_name)
        self._reply(shares)

    @web.authenticated
    def post(self, owner_name):
        owner, shares = self._shares_of(owner_name)
        body = self.get_json_body()
        kinds = {"user", "group", "link"} & set(body) if isinstance(body, dict) else set()
        if len(kinds) != 1 or not set(body) <= {"path", "expires_in", *kinds}:
            raise web.HTTPError(400, 'expected {"path": ..., and one of "user", "group", "link": true}')
        user, group = body.get("user", ""), body.get("group", "")
        try:
            if "user" in body:
                self._existing("user", user, USERNAME, orm.User)
                if user == owner_name:
                    raise ShareError("that is you")
            elif "group" in body:
                self._existing("group", group, GROUP_NAME, orm.Group)
            elif body["link"] is not True:
                raise ShareError('"link" must be true')
            lifetime = body.get("expires_in", LINK_LIFETIME)
            if (
                isinstance(lifetime, bool)
                or not isinstance(lifetime, int)
                or not 60 <= lifetime <= LINK_LIFETIME
            ):
                raise ShareError(f"expires_in: 60 to {LINK_LIFETIME} seconds")
            share, secret = shares.add(body.get("path"), user=user, group=group, link_lifetime=lifetime)
        except ShareError as e:
            raise web.HTTPError(400, str(e)) from None
        sync_hub_shares(self.db, owner, shares)
        self.log.info("werkbank: %s shares dashboard %s (%s)", owner_name, share.path, share.describe())
        extra = {"share": share.describe()}
        if secret:
            extra["url"] = self.hub.base_url + f"werkbank/dashboard-links/{owner_name}/{secret}"
        self.set_status(201)
        self._reply(shares, **extra)

    def _existing(self, kind: str, name: object, spelling: re.Pattern, model) -> None:
        if not isinstance(name, str) or not spelling.match(name) or model.find(self.db, name) is None:
            raise ShareError(f"there is no hub {kind} {name!r}")


class ShareHandler(_OwnerServerAPI):
    """``DELETE``: revoke one share (for a link: everyone who joined through it)."""

    @web.authenticated
    def delete(self, owner_name, share_id):
        owner, shares = self._shares_of(owner_name)
        gone = shares.remove(share_id)
        if gone is None:
            raise web.HTTPError(404, f"no share {share_id}")
        sync_hub_shares(self.db, owner, shares)
        self.log.info("werkbank: %s revoked dashboard share %s", owner_name, gone.describe())
        self._reply(shares)


class ViewerAccessHandler(_OwnerServerAPI):
    """``GET``: what ``viewer`` may do on the owner's server, for the server's gate:
    ``{"full": bool, "dashboards": [path, ...]}``. ``full`` only from roles, never from shares;
    groups as the hub knows them now, never as the server was told."""

    sharing_needed = False

    @web.authenticated
    def get(self, owner_name, viewer_name):
        owner, shares = self._shares_of(owner_name)
        viewer = orm.User.find(self.db, viewer_name)
        if viewer is None:
            answer = {"full": False, "dashboards": []}
        else:
            groups = {g.name for g in viewer.groups}
            answer = {
                "full": has_role_access(self.db, viewer, owner.name),
                "dashboards": shares.dashboards_for(viewer.name, groups) if shares else [],
            }
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))


def owner_shares(handler: BaseHandler, owner_name: str) -> tuple[orm.User, DashboardShares] | None:
    """For the hub's dashboard pages: the owner (a hub user) and their shares, or None when there
    is no such user or the hub keeps no shares."""
    owner = handler.find_user(owner_name) if USERNAME.match(owner_name) else None
    folder = getattr(owner.spawner, "dashboards_dir", "") if owner is not None else ""
    return (owner.orm_user, DashboardShares(folder, owner_name)) if folder else None


class OpenDashboardHandler(BaseHandler):
    """The address a dashboard is shared under, ``/hub/werkbank/dashboards/<owner>/<path>``: for a
    logged-in user it is shared with, bring their access up to date (a group's new member) and
    go to the dashboard; 404 for anyone else."""

    @web.authenticated
    def get(self, owner_name, path):
        viewer = self.current_user
        found = owner_shares(self, owner_name)
        if found is None:
            raise web.HTTPError(404, "There is no such dashboard.")
        owner, shares = found
        groups = {g.name for g in viewer.orm_user.groups}
        if viewer.name != owner_name and path not in shares.dashboards_for(viewer.name, groups):
            raise web.HTTPError(404, f"No dashboard {path} of {owner_name} is shared with you.")
        sync_hub_shares(self.db, owner, shares)
        self.redirect(dashboard_url(self.base_url, owner_name, path))


class LinkHandler(BaseHandler):
    """A share link: the logged-in visitor joins the share and goes to the dashboard."""

    @web.authenticated
    def get(self, owner_name, secret):
        found = owner_shares(self, owner_name)
        owner, shares = found if found is not None else (None, None)
        share = shares.join(secret, self.current_user.name) if shares is not None else None
        if share is None:
            raise web.HTTPError(404, "This dashboard link is unknown, revoked or expired.")
        sync_hub_shares(self.db, owner, shares)
        self.redirect(dashboard_url(self.base_url, owner_name, share.path))


def dashboard_url(base_url: str, owner: str, path: str) -> str:
    """Where a notebook opens as a dashboard: Voila's route in the owner's server."""
    return f"{base_url}user/{quote(owner, safe='')}/voila/render/{quote(path)}"


def install_handlers(api_handlers: list, page_handlers: list) -> None:
    ours = (ROUTE, ACCESS_ROUTE, SHARE_ROUTE, LINK_ROUTE, OPEN_ROUTE)
    for handlers in (api_handlers, page_handlers):
        handlers[:] = [h for h in handlers if h[0] not in ours]
    # The longer routes first: tornado takes the first that matches.
    api_handlers.extend(
        [(ACCESS_ROUTE, ViewerAccessHandler), (SHARE_ROUTE, ShareHandler), (ROUTE, SharesHandler)]
    )
    page_handlers.extend([(LINK_ROUTE, LinkHandler), (OPEN_ROUTE, OpenDashboardHandler)])
