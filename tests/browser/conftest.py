"""The browser tests: Debian's Chromium driven by pytest-playwright against the real hub, Slurm and
MLflow of the session fixtures (``hub``, ``slurm`` in tests/conftest.py).

No browser is downloaded: Playwright launches ``/usr/bin/chromium`` (deploy/install.sh --dev
installs Debian's package). A missing Chromium fails the tests; it never skips them. Each step of a
journey saves a screenshot under ``tests/browser/screenshots/`` (ignored by git) for a human to look
at when a test fails, or to see what users see.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.cluster import REPO

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
#: Chromium as root in a container: no sandbox (it needs user namespaces), no GPU, and nothing that
#: would reach the internet on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, with Debian's Chromium instead of a downloaded one."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: deploy/install.sh --dev installs Debian's chromium package")
    args = [*browser_type_launch_args.get("args", []), *CHROMIUM_ARGS]
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": args, "headless": True}


@pytest.fixture(scope="session")
def shared_password() -> str:
    """The test site's login (the demo site's shared password: tests/cluster.py keeps its auth)."""
    site = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
    return site["auth"]["shared_password"]


@pytest.fixture(scope="session")
def screenshot():
    """``screenshot(page, name)``: saves ``tests/browser/screenshots/<NN>-<name>.png``, numbered in
    the order taken."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    taken = []

    def take(page, name: str) -> Path:
        taken.append(name)
        slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        path = SCREENSHOTS / f"{len(taken):02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test leaves a screenshot of where its page was (``NN-failed-<test>.png``):
    what a human needs first when CI says a journey broke."""
    report = yield
    page = item.funcargs.get("page") if hasattr(item, "funcargs") else None
    if report.failed and call.when == "call" and page is not None and not page.is_closed():
        take = item.funcargs.get("screenshot")
        try:
            if take is not None:
                path = take(page, f"failed {item.name}")
                report.sections.append(("screenshot", str(path)))
        except Exception as e:  # the page may be gone with the failure
            report.sections.append(("screenshot", f"none: {e}"))
    return report


@contextmanager
def person(browser, hub, timeout_ms: int = 30_000) -> Iterator:
    """One person's browser for a journey with several people: a context of its own (cookies,
    logins), the hub as base URL, closed at the end."""
    context = browser.new_context(base_url=hub.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(timeout_ms)
    try:
        yield context.new_page()
    finally:
        context.close()
