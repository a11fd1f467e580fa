"""``auth.oauth.client_secret_file``: the OAuth client secret in a file only the hub's account may
read, instead of ``auth.oauth.client_secret`` in the site file.

The same key on a running hub, logging in through a real OpenID Connect provider, is
tests/browser/test_oidc_login.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from werkbank_spawner.oidc import WerkbankOAuthenticator
from werkbank_spawner.site import SiteConfigError, apply, validate

SECRET = "oauth-client-secret-4f1c"
KEY = "auth.oauth.client_secret_file"
OAUTH = {
    "client_id": "werkbank",
    "authorize_url": "https://idp.example.org/auth",
    "token_url": "https://idp.example.org/token",
    "userdata_url": "https://idp.example.org/userinfo",
}


def site(tmp_path: Path, **oauth: str) -> dict:
    return {
        "hub": {"data_dir": str(tmp_path / "hub")},
        "auth": {"type": "oauth", "allow_all": True, "oauth": {**OAUTH, **oauth}},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {"mlflow": {"manage": False, "proxy": False}},
        "workshops": {"enabled": False},
    }


def secret_file(tmp_path: Path, text: str = SECRET + "\nsecond line, ignored\n", mode: int = 0o600) -> Path:
    path = tmp_path / "oauth-client-secret"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def applied(data: dict) -> Config:
    c = Config()
    apply(c, validate(data), config_dir="/etc/werkbank")
    return c


def error_of(data: dict, *, at_start: bool = False) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as info:
        applied(data) if at_start else validate(data)
    return info.value


def test_the_authenticator_reads_the_secret_from_its_file(tmp_path):
    path = secret_file(tmp_path)
    c = applied(site(tmp_path, client_secret_file=str(path)))
    assert c.WerkbankOAuthenticator.client_secret_file == str(path)
    # The secret stays out of the configuration: the authenticator reads the file itself.
    assert "client_secret" not in c.GenericOAuthenticator
    assert SECRET not in repr(c)
    authenticator = WerkbankOAuthenticator(config=c)
    assert authenticator.client_secret == SECRET  # the first line only


def test_a_secret_in_the_site_file_still_works(tmp_path):
    c = applied(site(tmp_path, client_secret="s3cret"))
    assert c.GenericOAuthenticator.client_secret == "s3cret"
    assert WerkbankOAuthenticator(config=c).client_secret == "s3cret"


def test_the_secret_in_both_places_is_refused(tmp_path):
    error = error_of(site(tmp_path, client_secret="s3cret", client_secret_file=str(secret_file(tmp_path))))
    assert error.path == "auth.oauth.client_secret"
    assert "one place" in error.message


def test_no_secret_is_refused(tmp_path):
    error = error_of(site(tmp_path))
    assert error.path == KEY
    assert "required when auth.type is oauth" in error.message


def test_the_secret_file_is_an_absolute_path(tmp_path):
    error = error_of(site(tmp_path, client_secret_file="secrets/oauth"))
    assert error.path == KEY
    assert "absolute path" in error.message


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o620], ids=oct)
def test_a_secret_others_may_read_stops_the_hub(tmp_path, mode):
    path = secret_file(tmp_path, mode=mode)
    error = error_of(site(tmp_path, client_secret_file=str(path)), at_start=True)
    assert error.path == KEY
    assert f"chmod 600 {path}" in error.message


@pytest.mark.parametrize(("text", "words"), [("", "is empty"), ("\nsecret on line 2\n", "is empty")])
def test_an_empty_first_line_stops_the_hub(tmp_path, text, words):
    path = secret_file(tmp_path, text)
    error = error_of(site(tmp_path, client_secret_file=str(path)), at_start=True)
    assert error.path == KEY
    assert words in error.message and "the OAuth client secret" in error.message


def test_a_missing_file_stops_the_hub(tmp_path):
    error = error_of(site(tmp_path, client_secret_file=str(tmp_path / "nowhere")), at_start=True)
    assert error.path == KEY
    assert "cannot read" in error.message


def test_the_authenticator_itself_refuses_a_file_others_may_read(tmp_path):
    """The authenticator reads the file when it is made (the hub's start), by the same rule."""
    c = Config()
    c.WerkbankOAuthenticator.client_secret_file = str(secret_file(tmp_path, mode=0o644))
    with pytest.raises(SiteConfigError) as info:
        WerkbankOAuthenticator(config=c)
    assert info.value.path == KEY
