"""Login through an OpenID Connect provider: oauthenticator's GenericOAuthenticator, plus what a
centre needs of it: the id_token checked against the provider's keys, and the provider's groups
mapped onto the hub groups whose limits (``limits.groups``) they select.

Why not oauthenticator's own group handling (``manage_groups`` with ``auth_state_groups_key``):
with ``Authenticator.manage_groups`` JupyterHub sets *all* of a user's groups from the token at
every login (``User.sync_groups`` in jupyterhub/handlers/base.py ``auth_to_user``), so a login
would take a participant out of the course group (``course-<name>``) that werkbank-workshop put
them in through the hub's API (JupyterHub 5.3 and later let the API change groups beside
``manage_groups``, but the next login clobbers what it did). Here only the groups named in
``group_map``'s values follow the token; every other group is left as the API left it. It is done
where oauthenticator asks subclasses to extend it, its ``callback_handler``: right after JupyterHub
has made or found the user of a login, before the login cookie is set.

Why the id_token is checked here: GenericOAuthenticator reads the user from the userinfo endpoint
and never looks at the id_token (with ``userdata_from_id_token`` it decodes it *without* checking
its signature). With ``issuer`` set, a login needs an id_token signed by a key the issuer publishes
(its discovery document's ``jwks_uri``), issued by that issuer for this client, not expired, and
about the same subject (``sub``) as the userinfo answer (OpenID Connect Core 3.1.3.7 and 5.3.2).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import jwt
from jupyterhub import orm
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler
from tornado import web
from traitlets import Dict, Set, Unicode, observe

from .site.apply import CLIENT_SECRET_FILE
from .site.database import read_password

#: Signature algorithms an id_token may use: asymmetric only. ``none`` and the HMAC family (whose
#: key would be the client secret, or a public key misread as one) are never accepted.
ID_TOKEN_ALGORITHMS = tuple("RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA".split())
#: Seconds of clock difference tolerated between the provider and the hub.
CLOCK_LEEWAY = 60
#: Shortest time between two fetches of the provider's keys (an unknown ``kid`` makes the hub fetch
#: them again: the provider rotated its keys).
KEYS_REFETCH_AFTER = 30
#: The key of JupyterHub's auth model that carries a login's provider groups to the callback handler.
PROVIDER_GROUPS = "werkbank_provider_groups"


def claim_value(claims: Mapping, path: str) -> object:
    """The value at ``path`` in ``claims``: a claim name, or names joined by dots for a nested claim
    (``realm_access.roles``); None where any part is missing."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def provider_groups(claims: Mapping, path: str) -> set[str] | None:
    """The groups the provider says a user is in: the claim at ``path``, a list of names (or one
    name). An absent claim means no groups; None means the claim is there but malformed."""
    value = claim_value(claims, path)
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return set(value)
    return None


def mapped_groups(groups: Iterable[str], group_map: Mapping[str, str]) -> set[str]:
    """The hub groups that ``group_map`` gives a user in the provider's ``groups``."""
    return {group_map[g] for g in groups if g in group_map}


def sync_mapped_groups(user, wanted: set[str], managed: set[str], log=None) -> tuple[set[str], set[str]]:
    """Make ``user``'s membership of the ``managed`` hub groups what ``wanted`` says: add the user
    to each wanted group (made if it does not exist yet), take them out of each other managed group.
    Groups outside ``managed`` are not touched. Commits; returns (added, removed)."""
    db = user.db
    current = {g.name for g in user.orm_user.groups}
    added, removed = (wanted & managed) - current, (managed - wanted) & current
    for name in sorted(added):
        group = orm.Group.find(db, name)
        if group is None:
            group = orm.Group(name=name)
            db.add(group)
        user.orm_user.groups.append(group)
    if removed:
        user.orm_user.groups = [g for g in user.orm_user.groups if g.name not in removed]
    if added or removed:
        db.commit()
        if log is not None:
            log.info(
                "Groups of %s from the provider: added %s; removed %s",
                user.name,
                ", ".join(sorted(added)) or "none",
                ", ".join(sorted(removed)) or "none",
            )
    return added, removed


class WerkbankOAuthCallbackHandler(OAuthCallbackHandler):
    """The OAuth callback: a login as oauthenticator does it, then the mapped groups."""

    async def auth_to_user(self, authenticated, user=None):
        user = await super().auth_to_user(authenticated, user)
        # Only a login through this handler carries the provider's groups; a refresh of an existing
        # login (auth_state) does not, and leaves the groups as they are.
        groups = authenticated.get(PROVIDER_GROUPS)
        if groups is not None and self.authenticator.group_map:
            wanted = mapped_groups(groups, self.authenticator.group_map)
            managed = set(self.authenticator.group_map.values())
            sync_mapped_groups(user, wanted, managed, self.log)
        return user


class WerkbankOAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator with a checked id_token (``issuer``), the provider's groups mapped
    onto hub groups (``groups_claim``, ``group_map``) and logins by provider group
    (``allowed_provider_groups``). With none of them set it behaves as GenericOAuthenticator."""

    callback_handler = WerkbankOAuthCallbackHandler

    issuer = Unicode(
        "",
        config=True,
        help="""The OpenID Connect issuer (e.g. https://idp.example.org/realms/ai). When set, a login
        needs the provider's id_token, signed by a key of the issuer's JWKS (found through
        <issuer>/.well-known/openid-configuration), with this issuer, this client as audience, not
        expired, and the same subject as the userinfo answer. Empty: the id_token is not checked.""",
    )
    groups_claim = Unicode(
        "groups",
        config=True,
        help="""The claim (of the userinfo answer and, with issuer, the id_token) that lists the
        user's groups at the provider; names joined by dots for a nested claim (realm_access.roles).""",
    )
    group_map = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Provider group -> hub group. At each login the user is put into the hub groups mapped
        from their provider groups and taken out of the other hub groups named here; hub groups not
        named here (courses) are left alone.""",
    )
    allowed_provider_groups = Set(
        Unicode(),
        config=True,
        help="""Provider groups whose members may log in (besides allowed_users and admin_users).""",
    )

    client_secret_file = Unicode(
        "",
        config=True,
        help="""A file whose first line is client_secret, readable by its owner only (mode 0600 or
        0400); read when the authenticator is made, at the hub's start. Instead of client_secret,
        which would put the secret in the configuration (site key auth.oauth.client_secret_file).""",
    )

    _jwks: jwt.PyJWKSet | None = None
    _jwks_fetched: float = 0.0

    @observe("client_secret_file")
    def _read_client_secret(self, change):
        """Reads the secret from its file (at start: JupyterHub makes the authenticator from its
        configuration then). Raises SiteConfigError naming the site key for a file that cannot be
        read, is not private to its owner, or is empty."""
        if change.new:
            self.client_secret = read_password(Path(change.new), *CLIENT_SECRET_FILE)

    async def token_to_user(self, token_info):
        """The userinfo answer; with ``issuer``, merged over the checked id_token's claims."""
        user_info = await super().token_to_user(token_info)
        if not self.issuer:
            return user_info
        claims = await self.verified_id_token(token_info.get("id_token"))
        if user_info.get("sub") != claims["sub"]:
            self.log.warning(
                "Refused a login: userinfo is about %r, the id_token about %r",
                user_info.get("sub"),
                claims["sub"],
            )
            raise web.HTTPError(403, "The provider's userinfo and id_token name different users.")
        return {**claims, **user_info}

    async def update_auth_model(self, auth_model):
        """Adds the provider's groups of this login (``PROVIDER_GROUPS``), for the admission check
        and the group mapping."""
        auth_model = await super().update_auth_model(auth_model)
        claims = auth_model["auth_state"][self.user_auth_state_key]
        groups = provider_groups(claims, self.groups_claim)
        if groups is None:
            # Fewer groups, never more: a claim we cannot read gives no group and no admission.
            self.log.error(
                "The provider's %s claim for %s is not a list of names: %r",
                self.groups_claim,
                auth_model["name"],
                claim_value(claims, self.groups_claim),
            )
            groups = set()
        auth_model[PROVIDER_GROUPS] = sorted(groups)
        return auth_model

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        groups = set((auth_model or {}).get(PROVIDER_GROUPS) or ())
        return bool(self.allowed_provider_groups & groups)

    # -- the id_token

    async def verified_id_token(self, id_token: str | None) -> dict:
        """The claims of ``id_token`` once its signature, issuer, audience and times are checked.
        Raises HTTPError 403 (the login is refused) for a missing or bad token."""
        if not id_token:
            raise web.HTTPError(403, "The provider sent no id_token (is 'openid' in auth.oauth.scope?).")
        try:
            header = jwt.get_unverified_header(id_token)
            if header.get("alg") not in ID_TOKEN_ALGORITHMS:
                raise jwt.InvalidAlgorithmError(f"algorithm {header.get('alg')!r} is not accepted")
            key = await self._signing_key(header.get("kid"))
            claims = jwt.decode(
                id_token,
                key=key,
                algorithms=[header["alg"]],
                audience=self.client_id,
                issuer=self.issuer,
                leeway=CLOCK_LEEWAY,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.PyJWTError as e:
            self.log.warning("Refused a login: the id_token is not acceptable: %s", e)
            raise web.HTTPError(403, f"The provider's id_token was refused: {e}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise web.HTTPError(403, "The provider's id_token was refused: it names another party (azp).")
        return claims

    async def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        """The issuer's key ``kid`` (or its only key, for a token without ``kid``); the keys are
        fetched again when ``kid`` is unknown, at most every KEYS_REFETCH_AFTER seconds."""
        for attempt in range(2):
            if self._jwks is None or (attempt and time.monotonic() - self._jwks_fetched > KEYS_REFETCH_AFTER):
                await self._fetch_keys()
            keys = self._jwks.keys
            if kid is None and len(keys) == 1:
                return keys[0]
            for key in keys:
                if kid is not None and key.key_id == kid:
                    return key
        raise jwt.InvalidKeyError(f"the issuer publishes no key {kid!r}")

    async def _fetch_keys(self) -> None:
        discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        discovery = await self.httpfetch(discovery_url, "fetching the provider's discovery document")
        if not isinstance(discovery, dict) or discovery.get("issuer") != self.issuer:
            # OpenID Connect Discovery 4.3: the document must name the issuer it was fetched for.
            raise jwt.InvalidIssuerError(f"{discovery_url} names another issuer")
        jwks = await self.httpfetch(discovery["jwks_uri"], "fetching the provider's keys (JWKS)")
        try:
            self._jwks = jwt.PyJWKSet.from_dict(jwks)
        except jwt.PyJWKSetError as e:
            raise jwt.InvalidKeyError(f"the issuer's JWKS has no usable key: {e}") from None
        self._jwks_fetched = time.monotonic()
