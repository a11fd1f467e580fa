"""A real OpenID Connect provider for the tests, built on authlib's authorization server (Flask).

What a hub meets at a centre's identity provider, on a loopback port: the discovery document
(``/.well-known/openid-configuration``), the signing keys (``/jwks``, RS256), the authorization
code flow with PKCE (S256) and a login page with a username/password form, client authentication
at the token endpoint (``client_secret_post`` or ``client_secret_basic``), an id_token and a
userinfo endpoint that both carry the user's ``groups``. Users, their passwords and groups live in
memory; the provider keeps no session of its own, so every authorization shows the login page.

The tests change it while it runs through ``/test/control`` (a token of the test's own): a user's
groups, and how id_tokens are made, to see the hub refuse one signed with a key the provider does
not publish (``wrong-key``), naming another issuer (``wrong-issuer``) or another subject than the
userinfo answer (``other-subject``).

Run as ``python -m tests.oidc_provider CONFIG.json``; :class:`OidcProvider` starts it for a test
session (tests/browser/test_oidc_login.py).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

import httpx

from tests.mlflow_server import free_port
from tests.services import Process, answers

#: The id of the provider's signing key; the wrong key of ``wrong-key`` has the same id, so that
#: only the signature check can tell them apart.
KEY_ID = "werkbank-test-signing-key"
SIGNING_MODES = ("good", "wrong-key", "wrong-issuer", "other-subject")


# --------------------------------------------------------------------------- the provider


def create_app(config: dict):
    """The provider as a Flask app, for ``config`` (issuer, clients, users, control_token)."""
    from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
    from authlib.oauth2 import OAuth2Error
    from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
    from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
    from authlib.oauth2.rfc6750 import BearerTokenValidator
    from authlib.oauth2.rfc7636 import CodeChallenge
    from authlib.oidc.core import UserInfo
    from authlib.oidc.core.grants import OpenIDCode
    from authlib.oidc.core.models import AuthorizationCodeMixin
    from flask import Flask, Response, jsonify, request
    from joserfc.jwk import RSAKey

    issuer = config["issuer"].rstrip("/")
    users: dict[str, dict] = {name: dict(user) for name, user in config["users"].items()}
    state = {"signing": "good"}
    key = RSAKey.generate_key(2048, parameters={"kid": KEY_ID, "alg": "RS256", "use": "sig"}, private=True)
    wrong_key = RSAKey.generate_key(
        2048, parameters={"kid": KEY_ID, "alg": "RS256", "use": "sig"}, private=True
    )

    @dataclass
    class Client(ClientMixin):
        client_id: str
        client_secret: str
        redirect_uris: list[str]

        def get_client_id(self):
            return self.client_id

        def get_default_redirect_uri(self):
            return self.redirect_uris[0]

        def get_allowed_scope(self, scope):
            return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "email", "groups"))

        def check_redirect_uri(self, redirect_uri):
            return redirect_uri in self.redirect_uris

        def check_client_secret(self, client_secret):
            return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

        def check_endpoint_auth_method(self, method, endpoint):
            return endpoint == "token" and method in ("client_secret_post", "client_secret_basic")

        def check_response_type(self, response_type):
            return response_type == "code"

        def check_grant_type(self, grant_type):
            return grant_type == "authorization_code"

    @dataclass
    class Code(AuthorizationCodeMixin):
        code: str
        client_id: str
        redirect_uri: str
        scope: str
        user: str
        nonce: str | None
        code_challenge: str | None
        code_challenge_method: str | None
        auth_time: int = field(default_factory=lambda: int(time.time()))

        def get_redirect_uri(self):
            return self.redirect_uri

        def get_scope(self):
            return self.scope

        def get_nonce(self):
            return self.nonce

        def get_auth_time(self):
            return self.auth_time

        def is_expired(self):
            return time.time() > self.auth_time + 60

    @dataclass
    class Token(TokenMixin):
        access_token: str
        client_id: str
        scope: str
        user: str
        expires_at: float

        def check_client(self, client):
            return client.client_id == self.client_id

        def get_scope(self):
            return self.scope

        def get_expires_in(self):
            return int(self.expires_at - time.time())

        def is_expired(self):
            return time.time() > self.expires_at

        def is_revoked(self):
            return False

    clients = {
        c["client_id"]: Client(c["client_id"], c["client_secret"], list(c["redirect_uris"]))
        for c in config["clients"]
    }
    codes: dict[str, Code] = {}
    tokens: dict[str, Token] = {}

    def user_claims(name: str) -> dict:
        user = users[name]
        return {
            "sub": f"sub-{name}",
            "preferred_username": name,
            "name": name.title(),
            "groups": list(user["groups"]),
        }

    class CodeGrant(AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar = ["client_secret_basic", "client_secret_post"]

        def save_authorization_code(self, code, req):
            data = req.payload.data
            codes[code] = Code(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri,
                scope=req.scope,
                user=req.user,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            )

        def query_authorization_code(self, code, client):
            item = codes.get(code)
            if item and item.client_id == client.client_id and not item.is_expired():
                return item
            return None

        def delete_authorization_code(self, authorization_code):
            codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code):
            return authorization_code.user if authorization_code.user in users else None

    class IdToken(OpenIDCode):
        def exists_nonce(self, nonce, req):
            return any(c.nonce == nonce for c in codes.values())

        def resolve_client_private_key(self, client):
            return wrong_key if state["signing"] == "wrong-key" else key

        def get_client_algorithm(self, client):
            return "RS256"

        def get_encode_header(self, client):
            return {"alg": "RS256", "kid": KEY_ID}

        def get_client_claims(self, client):
            iss = f"{issuer}/other" if state["signing"] == "wrong-issuer" else issuer
            return {"iss": iss, "aud": [client.client_id], "exp": int(time.time()) + 300}

        def generate_user_info(self, user, scope):
            claims = user_claims(user)
            if state["signing"] == "other-subject":  # an id_token about someone else than userinfo
                claims["sub"] = f"sub-someone-else-than-{user}"
            return UserInfo(claims)

    app = Flask("werkbank-test-oidc-provider")
    # The hub and this provider share the host 127.0.0.1, and cookies do not tell ports apart.
    app.config["SESSION_COOKIE_NAME"] = "test-oidc-provider-session"

    def save_token(token, req):
        tokens[token["access_token"]] = Token(
            access_token=token["access_token"],
            client_id=req.client.client_id,
            scope=token.get("scope", ""),
            user=req.user,
            expires_at=time.time() + token.get("expires_in", 3600),
        )

    server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)
    server.register_grant(CodeGrant, [CodeChallenge(required=True), IdToken(require_nonce=False)])

    class Bearer(BearerTokenValidator):
        def authenticate_token(self, token_string):
            return tokens.get(token_string)

    protect = ResourceProtector()
    protect.register_token_validator(Bearer())

    @app.get("/.well-known/openid-configuration")
    def discovery():
        return jsonify(
            issuer=issuer,
            authorization_endpoint=f"{issuer}/authorize",
            token_endpoint=f"{issuer}/token",
            userinfo_endpoint=f"{issuer}/userinfo",
            jwks_uri=f"{issuer}/jwks",
            response_types_supported=["code"],
            grant_types_supported=["authorization_code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            scopes_supported=["openid", "profile", "email", "groups"],
            token_endpoint_auth_methods_supported=["client_secret_post", "client_secret_basic"],
            code_challenge_methods_supported=["S256"],
            claims_supported=["sub", "iss", "aud", "exp", "iat", "preferred_username", "name", "groups"],
        )

    @app.get("/jwks")
    def jwks():
        return jsonify(keys=[key.as_dict(private=False)])

    def login_page(error: str = "", status: int = 200) -> Response:
        action = "/authorize?" + urlencode(list(request.args.items(multi=True)))
        notice = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test identity provider: sign in</title>
<style>body{{font-family:sans-serif;max-width:24rem;margin:4rem auto}}
label,input,button{{display:block;margin:.4rem 0}} .error{{color:#a00}}</style></head>
<body><h1>Test identity provider</h1>
<p>Sign in to continue to <b>{escape(request.args.get("client_id", ""))}</b>.</p>
{notice}
<form method="post" action="{escape(action)}" id="provider-login">
<label for="username">Username</label><input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit" id="sign-in">Sign in</button>
</form></body></html>"""
        return Response(html, status=status, mimetype="text/html")

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        try:
            server.get_consent_grant(end_user=None)
        except OAuth2Error as e:  # shown here, never redirected to an unchecked redirect_uri
            return Response(f"invalid authorization request: {escape(str(e))}", status=400)
        if request.method == "GET":
            return login_page()
        name, password = request.form.get("username", ""), request.form.get("password", "")
        user = users.get(name)
        if user is None or not hmac.compare_digest(password.encode(), user["password"].encode()):
            return login_page("Unknown user or wrong password.", status=401)
        return server.create_authorization_response(grant_user=name)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    @protect("openid")
    def userinfo():
        return jsonify(user_claims(current_token.user))

    @app.post("/test/control")
    def control():
        given = request.headers.get("X-Control-Token", "")
        if not hmac.compare_digest(given.encode(), config["control_token"].encode()):
            return Response("forbidden", status=403)
        body = request.get_json()
        for name, user in (body.get("users") or {}).items():
            users[name] = {**users.get(name, {}), **user}
        if "signing" in body:
            if body["signing"] not in SIGNING_MODES:
                return Response(f"signing: one of {SIGNING_MODES}", status=400)
            state["signing"] = body["signing"]
        return jsonify(signing=state["signing"], users={n: u["groups"] for n, u in users.items()})

    return app


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[1]).read_text())
    # authlib refuses plain http unless told: this provider listens on loopback only.
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    app = create_app(config)
    app.run(host="127.0.0.1", port=config["port"], threaded=True, use_reloader=False)


# --------------------------------------------------------------------------- for the tests


class OidcProvider:
    """The provider as a process on a free loopback port, with one client (the hub)."""

    def __init__(self, root: Path, *, redirect_uri: str, users: dict[str, dict]):
        self.root = Path(root)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id = "werkbank-hub"
        self.client_secret = secrets.token_urlsafe(24)
        self.control_token = secrets.token_urlsafe(24)
        self.config = {
            "issuer": self.issuer,
            "port": self.port,
            "control_token": self.control_token,
            "clients": [
                {
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "redirect_uris": [redirect_uri],
                }
            ],
            "users": users,
        }
        self.process: Process | None = None

    def start(self, timeout: float = 30) -> None:
        path = self.root / "oidc-provider.json"
        path.write_text(json.dumps(self.config))
        path.chmod(0o600)
        argv = [sys.executable, "-m", "tests.oidc_provider", str(path)]
        repo = Path(__file__).resolve().parents[1]
        self.process = Process("OIDC provider", argv, log_path=self.root / "oidc-provider.log", cwd=repo)
        self.process.start()
        discovery = f"{self.issuer}/.well-known/openid-configuration"
        self.process.wait_until(lambda: answers(discovery), timeout, "the provider's discovery document")

    def stop(self) -> None:
        if self.process:
            self.process.stop(10)

    def control(self, **body) -> dict:
        r = httpx.post(
            f"{self.issuer}/test/control",
            json=body,
            headers={"X-Control-Token": self.control_token},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()

    def site_oauth(self, **keys) -> dict:
        """``auth.oauth`` of a site file for this provider (``keys`` added)."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorize_url": f"{self.issuer}/authorize",
            "token_url": f"{self.issuer}/token",
            "userdata_url": f"{self.issuer}/userinfo",
            "issuer": self.issuer,
            "username_claim": "preferred_username",
            "scope": ["openid", "profile"],
            **keys,
        }


if __name__ == "__main__":
    main(sys.argv)
