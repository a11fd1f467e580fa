"""OpenID Connect login without a hub: the site keys (auth.oauth.issuer, groups_claim, group_map,
allowed_groups), their rules and the traits they give; WerkbankOAuthenticator's claim reading,
group mapping (on JupyterHub's own database models), admission by provider group and id_token
checks (real RS256 keys and tokens). The whole login, through a real provider and a browser, is
tests/browser/test_oidc_login.py."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jupyterhub import orm
from tornado import web
from traitlets.config import Config

from werkbank_spawner.oidc import (
    PROVIDER_GROUPS,
    WerkbankOAuthCallbackHandler,
    WerkbankOAuthenticator,
    claim_value,
    mapped_groups,
    provider_groups,
    sync_mapped_groups,
)
from werkbank_spawner.site import SiteConfigError, apply, validate

OAUTH = {
    "client_id": "werkbank",
    "client_secret": "s3cret",
    "authorize_url": "https://idp.example.org/auth",
    "token_url": "https://idp.example.org/token",
    "userdata_url": "https://idp.example.org/userinfo",
}
ISSUER = "https://idp.example.org/realms/ai"
POWER = "/ai-factory/power-users"


def site_with(oauth: dict | None = None, **auth) -> dict:
    return {
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}, "groups": {"power": {"gpus": 4}}},
        "auth": {"type": "oauth", "oauth": {**OAUTH, **(oauth or {})}, **auth},
    }


def error_of(site: dict) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as info:
        validate(site)
    return info.value


# --- site keys -------------------------------------------------------------------------------


def test_the_new_keys_default_to_doing_nothing():
    oauth = validate(site_with()).auth.oauth
    assert (oauth.issuer, oauth.groups_claim, oauth.group_map, oauth.allowed_groups) == ("", "groups", {}, ())


def test_group_keys_are_read():
    oauth = validate(
        site_with(
            {"issuer": ISSUER, "group_map": {POWER: "power"}, "allowed_groups": ["/ai-factory/members"]}
        )
    ).auth.oauth
    assert oauth.group_map == {POWER: "power"}
    assert oauth.allowed_groups == ("/ai-factory/members",)


def test_the_group_map_default_is_not_shared():
    first, second = validate(site_with()), validate(site_with())
    first.auth.oauth.group_map["x"] = "y"
    assert second.auth.oauth.group_map == {}


@pytest.mark.parametrize(
    ("oauth", "path", "words"),
    [
        ({"group_map": {POWER: 1}}, "auth.oauth.group_map", "string"),
        ({"group_map": {POWER: "course-ml"}}, f"auth.oauth.group_map[{POWER!r}]", "workshop courses"),
        ({"group_map": {POWER: " power"}}, f"auth.oauth.group_map[{POWER!r}]", "surrounding spaces"),
        ({"group_map": {POWER: ""}}, f"auth.oauth.group_map[{POWER!r}]", "surrounding spaces"),
        ({"group_map": {" ": "power"}}, "auth.oauth.group_map", "must not be empty"),
        ({"group_map": {POWER: "power"}, "groups_claim": "realm..roles"}, "auth.oauth.groups_claim", "dots"),
        ({"allowed_groups": ["x"], "groups_claim": ""}, "auth.oauth.groups_claim", "claim name"),
        ({"allowed_groups": [""]}, "auth.oauth.allowed_groups[0]", "empty"),
        ({"issuer": "idp.example.org"}, "auth.oauth.issuer", "URL"),
        ({"issuer": ISSUER, "scope": ["profile"]}, "auth.oauth.scope", "openid"),
    ],
)
def test_bad_group_and_issuer_keys_are_refused(oauth, path, words):
    error = error_of(site_with(oauth))
    assert error.path.startswith(path), error
    assert words in str(error)


def test_allowed_groups_with_allow_all_is_refused():
    error = error_of(site_with({"allowed_groups": ["/ai-factory/members"]}, allow_all=True))
    assert error.path == "auth.oauth.allowed_groups"
    assert "allow_all" in error.message


def applied(site: dict) -> Config:
    c = Config()
    apply(c, validate(site), config_dir=Path("/etc/werkbank"))
    return c


def test_apply_configures_werkbanks_authenticator():
    c = applied(
        site_with(
            {
                "issuer": ISSUER,
                "groups_claim": "realm_access.roles",
                "group_map": {POWER: "power", "/ai-factory/admins": "power"},
                "allowed_groups": ["/ai-factory/members"],
            }
        )
    )
    assert c.JupyterHub.authenticator_class == "werkbank_spawner.oidc.WerkbankOAuthenticator"
    assert c.GenericOAuthenticator.client_id == "werkbank"
    # The traits, as the hub's authenticator gets them (GenericOAuthenticator's section included).
    authenticator = WerkbankOAuthenticator(config=c)
    assert authenticator.client_id == "werkbank"
    assert authenticator.token_url == OAUTH["token_url"]
    assert authenticator.issuer == ISSUER
    assert authenticator.groups_claim == "realm_access.roles"
    assert authenticator.group_map == {POWER: "power", "/ai-factory/admins": "power"}
    assert authenticator.allowed_provider_groups == {"/ai-factory/members"}
    # JupyterHub's manage_groups would set *all* groups from the token (and drop course groups).
    assert authenticator.manage_groups is False
    # The groups are mapped by the callback handler this authenticator gives the hub.
    assert dict(authenticator.get_handlers(None))["/oauth_callback"] is WerkbankOAuthCallbackHandler


def test_apply_gives_equal_configs_for_equal_sites():
    site = site_with({"group_map": {POWER: "power"}})
    first, second = applied(site), applied(copy.deepcopy(site))
    assert first == second
    first.WerkbankOAuthenticator.group_map["x"] = "y"
    assert validate(site).auth.oauth.group_map == {POWER: "power"}


# --- claims and groups -------------------------------------------------------------------------


def test_claim_value_reaches_nested_claims():
    claims = {"groups": ["a"], "realm_access": {"roles": ["r"]}}
    assert claim_value(claims, "groups") == ["a"]
    assert claim_value(claims, "realm_access.roles") == ["r"]
    assert claim_value(claims, "realm_access.missing") is None
    assert claim_value(claims, "groups.deeper") is None


@pytest.mark.parametrize(
    ("claims", "groups"),
    [
        ({"groups": ["a", "b"]}, {"a", "b"}),
        ({"groups": "a"}, {"a"}),
        ({}, set()),
        ({"groups": []}, set()),
        ({"groups": [1, "a"]}, None),
        ({"groups": {"a": True}}, None),
    ],
)
def test_provider_groups(claims, groups):
    assert provider_groups(claims, "groups") == groups


def test_mapped_groups_maps_only_named_groups():
    group_map = {POWER: "power", "/ai-factory/admins": "power", "/ai-factory/students": "students"}
    assert mapped_groups([POWER, "/ai-factory/admins", "/elsewhere"], group_map) == {"power"}
    assert mapped_groups(["/elsewhere"], group_map) == set()


@dataclass
class HubUser:
    """What sync_mapped_groups uses of JupyterHub's User wrapper: its database and ORM user."""

    db: object
    orm_user: orm.User

    @property
    def name(self) -> str:
        return self.orm_user.name


@pytest.fixture
def hub_db():
    db = orm.new_session_factory("sqlite://")()
    yield db
    db.close()


def user_in(db, name: str, groups: list[str]) -> HubUser:
    user = orm.User(name=name)
    db.add(user)
    for group in groups:
        user.groups.append(orm.Group.find(db, group) or orm.Group(name=group))
    db.commit()
    return HubUser(db, user)


def names(user: HubUser) -> set[str]:
    user.db.expire_all()  # read back what was committed
    return {g.name for g in user.orm_user.groups}


def test_sync_adds_and_removes_only_managed_groups(hub_db):
    user = user_in(hub_db, "ada", ["power", "course-ml", "admins-made-this"])
    assert sync_mapped_groups(user, set(), {"power", "students"}) == (set(), {"power"})
    assert names(user) == {"course-ml", "admins-made-this"}
    assert sync_mapped_groups(user, {"students", "power"}, {"power", "students"}) == (
        {"power", "students"},
        set(),
    )
    assert names(user) == {"course-ml", "admins-made-this", "power", "students"}
    # The groups were made once and are shared: another user joins the same rows.
    other = user_in(hub_db, "bob", [])
    sync_mapped_groups(other, {"power"}, {"power", "students"})
    assert hub_db.query(orm.Group).filter_by(name="power").one().users == [user.orm_user, other.orm_user]


def test_sync_never_adds_a_group_outside_the_map(hub_db):
    user = user_in(hub_db, "ada", [])
    assert sync_mapped_groups(user, {"course-ml"}, {"power"}) == (set(), set())
    assert names(user) == set()


# --- the authenticator's admission and id_token checks ----------------------------------------


def authenticator(**traits) -> WerkbankOAuthenticator:
    return WerkbankOAuthenticator(client_id="werkbank", issuer=ISSUER, **traits)


def auth_model(claims: dict, name: str = "ada") -> dict:
    return {"name": name, "admin": None, "auth_state": {"oauth_user": claims, "scope": []}}


async def test_update_auth_model_reads_the_configured_claim(caplog):
    a = authenticator(groups_claim="realm_access.roles")
    model = await a.update_auth_model(auth_model({"realm_access": {"roles": [POWER]}, "groups": ["x"]}))
    assert model[PROVIDER_GROUPS] == [POWER]
    with caplog.at_level(logging.ERROR):
        model = await a.update_auth_model(auth_model({"realm_access": {"roles": [{"name": POWER}]}}))
    assert model[PROVIDER_GROUPS] == []
    assert "not a list of names" in caplog.text


async def test_admission_by_provider_group():
    a = authenticator(allowed_provider_groups={"/ai-factory/members"})
    member = await a.update_auth_model(auth_model({"groups": ["/ai-factory/members"]}))
    stranger = await a.update_auth_model(auth_model({"groups": ["/elsewhere"]}, name="mallory"))
    assert await a.check_allowed("ada", member) is True
    assert await a.check_allowed("mallory", stranger) is False
    assert await authenticator().check_allowed("ada", member) is False  # no allowed_groups: no admission


KEY_ID = "key-1"


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys():
    return rsa_key(), rsa_key()


def jwks_of(private_key, kid: str = KEY_ID) -> jwt.PyJWKSet:
    public = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return jwt.PyJWKSet.from_dict({"keys": [{**public, "kid": kid, "alg": "RS256", "use": "sig"}]})


def id_token(private_key, *, alg: str = "RS256", kid: str = KEY_ID, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "werkbank", "sub": "sub-ada", "iat": now, "exp": now + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private_key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def checker(keys) -> WerkbankOAuthenticator:
    """An authenticator that has fetched the issuer's keys (the provider's first key)."""
    a = authenticator()
    a._jwks, a._jwks_fetched = jwks_of(keys[0]), time.monotonic()
    return a


async def test_a_good_id_token_is_accepted(checker, keys):
    claims = await checker.verified_id_token(id_token(keys[0], groups=[POWER]))
    assert (claims["sub"], claims["groups"]) == ("sub-ada", [POWER])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: id_token(k[1]), "Signature verification failed"),
        (lambda k: id_token(k[0], iss="https://evil.example.org"), "Invalid issuer"),
        (lambda k: id_token(k[0], aud="another-client"), "Audience doesn't match"),
        (lambda k: id_token(k[0], exp=int(time.time()) - 3600), "expired"),
        (lambda k: id_token(k[0], iat=None), 'missing the "iat" claim'),
        (lambda k: id_token(k[0], kid="key-2"), "no key 'key-2'"),
        (lambda k: id_token(k[0], aud=["werkbank", "other"]), "another party"),
        (
            lambda k: jwt.encode({"iss": ISSUER, "aud": "werkbank", "sub": "s"}, "s3cret" * 6, "HS256"),
            "not accepted",
        ),
        (lambda k: jwt.encode({"iss": ISSUER, "aud": "werkbank", "sub": "s"}, None, "none"), "not accepted"),
        (lambda k: None, "no id_token"),
    ],
)
async def test_bad_id_tokens_are_refused(checker, keys, make, reason):
    with pytest.raises(web.HTTPError) as info:
        await checker.verified_id_token(make(keys))
    assert info.value.status_code == 403
    assert reason in info.value.log_message


async def test_several_audiences_need_this_client_as_authorized_party(checker, keys):
    token = id_token(keys[0], aud=["werkbank", "other"], azp="werkbank")
    assert (await checker.verified_id_token(token))["azp"] == "werkbank"


async def test_an_unknown_key_id_fetches_the_keys_again_once(keys):
    class Rotating(WerkbankOAuthenticator):
        """The issuer's key set: key-1 at the first fetch (an hour ago), key-2 from then on."""

        fetched = 0

        async def _fetch_keys(self):
            if self.fetched == 0:
                self._jwks, self._jwks_fetched = jwks_of(keys[0], "key-1"), time.monotonic() - 3600
            else:
                self._jwks, self._jwks_fetched = jwks_of(keys[1], "key-2"), time.monotonic()
            self.fetched += 1

    a = Rotating(client_id="werkbank", issuer=ISSUER)
    assert (await a.verified_id_token(id_token(keys[0], kid="key-1")))["sub"] == "sub-ada"
    assert a.fetched == 1
    assert (await a.verified_id_token(id_token(keys[1], kid="key-2")))["sub"] == "sub-ada"  # rotated
    assert a.fetched == 2
    with pytest.raises(web.HTTPError) as info:  # unknown again: no new fetch within the interval
        await a.verified_id_token(id_token(keys[1], kid="key-9"))
    assert "no key 'key-9'" in info.value.log_message
    assert a.fetched == 2
