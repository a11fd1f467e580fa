"""Login through a real OpenID Connect provider, in a real browser: the hub sends the user to the
provider's login page, the user signs in there and comes back logged in; the provider's groups
select the hub groups of ``auth.oauth.group_map`` and with them the user's limits on the spawn
page; when the provider drops a group, the next login takes the hub group away and leaves a
course group alone; an id_token signed with a key the provider does not publish, or by another
issuer, is refused. The hub reads the client secret from a file (``auth.oauth.client_secret_file``):
the provider's token endpoint checks it at every login.

The provider is tests/oidc_provider.py (authlib's authorization server). The hub is one of this
module's own, on free ports, with auth.type oauth; it never starts a server (nor does it use the
shared test cluster's ``hub`` and ``slurm`` fixtures, whose teardown cancels jobs): the spawn page
only shows the limits.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import person
from tests.cluster import make_hub
from tests.mlflow_server import free_port_pair
from tests.oidc_provider import OidcProvider

pytestmark = pytest.mark.integration

USER, PASSWORD = "ada", "ada-provider-password"
STRANGER, STRANGER_PASSWORD = "mallory", "mallory-provider-password"
#: Provider groups: members may log in (allowed_groups); power users get the hub group `power`.
MEMBERS, POWER_USERS = "/ai-factory/members", "/ai-factory/power-users"
#: The power group's GPU limit, larger than the default's (the demo site's limits.default: 2).
POWER_GPUS, DEFAULT_GPUS = 4, 2
COURSE_GROUP = "course-oidc-demo"


@pytest.fixture(scope="module")
def provider_and_hub(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("oidc-hub")
    port, api_port = free_port_pair(), free_port_pair()
    callback = f"http://127.0.0.1:{port}/hub/oauth_callback"
    provider = OidcProvider(
        tmp_path_factory.mktemp("oidc-provider"),
        redirect_uri=callback,
        users={
            USER: {"password": PASSWORD, "groups": [MEMBERS, POWER_USERS]},
            STRANGER: {"password": STRANGER_PASSWORD, "groups": ["/elsewhere"]},
        },
    )
    hub = make_hub(workdir, port=port, api_port=api_port, spawner="slurm", mlflow=False)
    oauth = provider.site_oauth(
        callback_url=callback,
        groups_claim="groups",
        group_map={POWER_USERS: "power"},
        allowed_groups=[MEMBERS],
    )
    # The client secret from a file only the hub's account may read, as a production site keeps it.
    secret_file = workdir / "oauth-client-secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(oauth.pop("client_secret") + "\n")

    def login_by_provider(site):
        site["auth"] = {
            "type": "oauth",
            "allowed_users": [],
            "oauth": {**oauth, "client_secret_file": str(secret_file)},
        }
        site["limits"]["groups"]["power"] = {"gpus": POWER_GPUS}

    hub.edit_site(login_by_provider)
    try:
        provider.start()
        hub.start()
        yield provider, hub
    finally:
        hub.stop()
        provider.stop()


@pytest.fixture(scope="module")
def provider(provider_and_hub) -> OidcProvider:
    return provider_and_hub[0]


@pytest.fixture(scope="module")
def oidc_hub(provider_and_hub):
    return provider_and_hub[1]


@pytest.fixture
def page(browser, oidc_hub) -> Page:
    """A fresh browser (no cookies) for each test (named ``page`` so that a failure leaves a
    screenshot of it)."""
    with person(browser, oidc_hub) as fresh:
        yield fresh


def sign_in_at_the_provider(
    page: Page, provider: OidcProvider, user: str, password: str, screenshot, step: str
):
    """From the hub's login page to the provider's, and sign in there."""
    page.goto("/hub/login")
    screenshot(page, f"oidc {step} hub login page")
    page.get_by_role("button", name=re.compile("Sign in with")).click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(provider.issuer)}/authorize\?"))
    expect(page.locator("h1")).to_have_text("Test identity provider")
    page.fill("#username", user)
    page.fill("#password", password)
    screenshot(page, f"oidc {step} provider login page")
    page.click("#sign-in")


def hub_groups(hub, user: str) -> list[str]:
    return sorted(hub.user_model(user)["groups"])


def gpu_limit_on_the_spawn_page(page: Page) -> int:
    page.goto("/hub/spawn")
    page.locator("details.werkbank-custom summary").click()  # "Adjust resources", folded
    label = page.locator("label[for=werkbank-gpus]")
    expect(label).to_have_text(re.compile(r"GPUs \(max \d+\)"))
    return int(re.search(r"max (\d+)", label.inner_text()).group(1))


def test_1_login_through_the_provider_gives_the_mapped_group_and_its_limits(
    page, provider, oidc_hub, screenshot, report_figure
):
    started = time.monotonic()
    sign_in_at_the_provider(page, provider, USER, PASSWORD, screenshot, "first login")
    # Back at the hub, logged in: JupyterHub sends a user without a server to the spawn page.
    expect(page).to_have_url(re.compile(rf"^{re.escape(oidc_hub.url)}/hub/spawn"))
    report_figure("OIDC login through the provider's page", f"{time.monotonic() - started:.1f} s")
    assert oidc_hub.user_model(USER)["name"] == USER
    # Only the mapped group: the provider's own group names never become hub groups.
    assert hub_groups(oidc_hub, USER) == ["power"]
    assert gpu_limit_on_the_spawn_page(page) == POWER_GPUS
    screenshot(page, "oidc first login spawn page with the power group's limits")


def test_2_a_group_dropped_at_the_provider_is_dropped_at_the_next_login_courses_stay(
    page, provider, oidc_hub, screenshot
):
    # werkbank-workshop puts course participants into their course's group through the hub API;
    # a login must leave such groups alone.
    r = oidc_hub.api("POST", f"/groups/{COURSE_GROUP}", json={"users": [USER]})
    assert r.status_code in (201, 409), r.text
    if r.status_code == 409:
        oidc_hub.api("POST", f"/groups/{COURSE_GROUP}/users", json={"users": [USER]})
    assert hub_groups(oidc_hub, USER) == [COURSE_GROUP, "power"]
    provider.control(users={USER: {"groups": [MEMBERS]}})
    sign_in_at_the_provider(page, provider, USER, PASSWORD, screenshot, "second login")
    expect(page).to_have_url(re.compile(rf"^{re.escape(oidc_hub.url)}/hub/spawn"))
    assert hub_groups(oidc_hub, USER) == [COURSE_GROUP]
    assert gpu_limit_on_the_spawn_page(page) == DEFAULT_GPUS
    screenshot(page, "oidc second login spawn page with the default limits")


def test_3_a_user_in_no_allowed_group_is_refused(page, provider, oidc_hub, screenshot):
    sign_in_at_the_provider(page, provider, STRANGER, STRANGER_PASSWORD, screenshot, "stranger")
    expect(page.locator("body")).to_contain_text("403")
    screenshot(page, "oidc stranger refused")
    assert oidc_hub.api("GET", f"/users/{STRANGER}").status_code == 404
    assert not logged_in(page)


@pytest.mark.parametrize(
    ("signing", "shown", "logged"),
    [
        (
            "wrong-key",
            "Signature verification failed",
            "the id_token is not acceptable: Signature verification failed",
        ),
        ("wrong-issuer", "Invalid issuer", "the id_token is not acceptable: Invalid issuer"),
        ("other-subject", "name different users", "userinfo is about 'sub-ada', the id_token about"),
    ],
)
def test_4_an_id_token_with_a_wrong_signature_issuer_or_subject_is_refused(
    page, provider, oidc_hub, screenshot, signing, shown, logged
):
    provider.control(signing=signing)
    try:
        sign_in_at_the_provider(page, provider, USER, PASSWORD, screenshot, signing)
        expect(page.locator("body")).to_contain_text("403")
        expect(page.locator("body")).to_contain_text(shown)
        screenshot(page, f"oidc {signing} refused")
        assert not logged_in(page)
        assert f"Refused a login: {logged}" in oidc_hub.log_text()
    finally:
        provider.control(signing="good")
    # The same login with a good token goes through: what was refused was the token.
    sign_in_at_the_provider(page, provider, USER, PASSWORD, screenshot, f"after {signing}")
    expect(page).to_have_url(re.compile(rf"^{re.escape(oidc_hub.url)}/hub/spawn"))


def logged_in(page: Page) -> bool:
    """Whether the page's browser holds the hub's login cookie."""
    return any(c["name"] == "jupyterhub-hub-login" for c in page.context.cookies())
