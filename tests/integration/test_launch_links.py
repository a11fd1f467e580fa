"""Launch links (``werkbank-site link``): one URL that starts a server with a named profile, or
reuses the running one, and opens a fresh copy of a template; an unknown profile is refused on
the spawn page before anything reaches Slurm."""

from __future__ import annotations

import pwd
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.cluster import VENV_BIN, Hub, login, run, squeue, wait_for

pytestmark = pytest.mark.integration

USER = "bob"
SITE_CLI = str(VENV_BIN / "werkbank-site")


def link(hub: Hub, *args: str) -> str:
    """``werkbank-site link`` for the test hub's site, as the path and query to request."""
    out = run(SITE_CLI, "link", hub.env["WERKBANK_SITE_CONFIG"], *args).stdout.strip()
    parts = urlsplit(out)
    assert f"{parts.scheme}://{parts.netloc}" == hub.url
    return f"{parts.path}?{parts.query}"


def copies(user: str) -> set[str]:
    folder = Path(pwd.getpwnam(user).pw_dir) / "werkbank-templates"
    if not folder.exists():
        return set()
    return {
        str(p.relative_to(folder)) for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    }


def test_a_launch_link_starts_the_profile_and_opens_a_fresh_copy(hub):
    hub.api("DELETE", f"/users/{USER}/server")
    wait_for(lambda: hub.server(USER) is None, 60, f"{USER}'s server to stop")
    before = copies(USER)
    with closing(login(hub, USER)) as browser:
        page = browser.get(link(hub, "--profile", "cpu", "--template", "01-onboarding"))
        assert f"/hub/spawn-pending/{USER}" in str(page.url), page.url
        server = hub.wait_ready(USER)
        assert server["user_options"] == {"profile": "cpu"}
        # The pending page sends the browser on to `next` once the server is ready; so does the
        # same link again, now that the server runs: it reuses it, and opens another fresh copy.
        opened = browser.get(link(hub, "--profile", "cpu", "--template", "01-onboarding"))
        assert f"/user/{USER}/lab/tree/" in str(opened.url), opened.url
    assert len(copies(USER) - before) == 1
    hub.stop_server(USER)


def test_an_unknown_profile_is_refused_on_the_spawn_page(hub):
    hub.api("DELETE", f"/users/{USER}/server")
    wait_for(lambda: hub.server(USER) is None, 60, f"{USER}'s server to stop")
    jobs = squeue("--states=all", f"--user={USER}", "--format=%i")
    with closing(login(hub, USER)) as browser:
        page = browser.get("/hub/spawn?profile=gpu9&next=/hub/user-redirect/lab")
    assert page.status_code == 400 and "unknown profile &#39;gpu9&#39;" in page.text
    assert squeue("--states=all", f"--user={USER}", "--format=%i") == jobs
    assert hub.server(USER) is None
    refused = run(SITE_CLI, "link", hub.env["WERKBANK_SITE_CONFIG"], "--profile", "gpu9", check=False)
    assert refused.returncode == 1 and "no profile 'gpu9'" in refused.stderr
