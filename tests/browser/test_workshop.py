"""A workshop in real browsers: a participant logs in with the event code and gets the course's
profile and material; the trainer (not a hub admin) sees them in the console and broadcasts; the
participant's JupyterLab shows the message; the trainer stops everyone's server. Two browser
contexts, one per person; each step saves a screenshot."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import person
from tests.cluster import run, wait_for
from tests.workshops import make_material, workshop, write_course

pytestmark = pytest.mark.integration

MESSAGE = "Coffee break until 15:00, then lesson 2"


@pytest.fixture(scope="module")
def course(hub, tmp_path_factory):
    material = make_material()
    path, spec = write_course(
        tmp_path_factory.mktemp("course"),
        participants=2,
        material={"repo": material["repo"], "branch": "main"},
    )
    result = workshop(hub, "create", str(path))
    assert result.returncode == 0, result.stderr
    code = re.search(r"event code: (\S+)", result.stdout).group(1)
    yield {**spec, "code": code}
    ended = workshop(hub, "end", spec["name"])
    for line in ended.stdout.splitlines():
        if "participants' work: " in line:
            run("rm", "-f", line.split("participants' work: ", 1)[1].strip(), check=False)
    for i in (1, 2):
        run("userdel", "--remove", f"{spec['account_prefix']}{i:02d}", check=False)
    shutil.rmtree(material["root"], ignore_errors=True)


@pytest.fixture(scope="module")
def participant(browser, hub) -> Page:
    with person(browser, hub) as page:
        yield page


@pytest.fixture(scope="module")
def page(browser, hub) -> Page:
    """The trainer's browser (named ``page`` so that a failure leaves a screenshot of it)."""
    with person(browser, hub) as trainer:
        yield trainer


def test_1_a_participant_logs_in_with_the_event_code_and_gets_the_material(participant, course, screenshot):
    participant.goto("/hub/login")
    participant.fill("#username_input", "Ada")
    participant.fill("#password_input", course["code"])
    screenshot(participant, "workshop login with the event code")
    participant.click("#login_submit")
    participant.goto("/hub/spawn")
    form = participant.locator("form#spawn_form")
    expect(form).to_contain_text(f"Course {course['name']} · CPU · 1 core · 1 GB")
    expect(form.locator("input[name=profile]")).to_have_count(1)
    screenshot(participant, "workshop spawn page: the course profile only")
    participant.click("form#spawn_form [type=submit]")
    # nbgitpuller brings the material, then JupyterLab opens its folder.
    expect(participant.locator(".jp-DirListing-item", has_text="lesson.ipynb")).to_be_visible(timeout=120_000)
    expect(participant).to_have_url(re.compile(rf"/lab/tree/{course['name']}"))
    screenshot(participant, "workshop participant's jupyterlab with the material")


def test_2_the_trainer_sees_the_participant_and_broadcasts(page, hub, course, shared_password, screenshot):
    page.goto("/hub/login")
    page.fill("#username_input", "alice")
    page.fill("#password_input", shared_password)
    page.click("#login_submit")
    page.goto("/services/werkbank-workshop/")
    page.click(f"text={course['name']}")
    table = page.locator("#werkbank-participants")
    first = f"{course['account_prefix']}01"
    row = table.locator(f"tr[data-account={first}]")
    expect(row).to_contain_text("ada")  # nicknames are kept in lower case
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("node1")
    page.fill("#werkbank-broadcast input[name=message]", MESSAGE)
    page.click("#werkbank-broadcast button[type=submit]")
    expect(page.locator("#werkbank-result")).to_contain_text(f"Sent to everyone: {MESSAGE}")
    screenshot(page, "workshop trainer console after a broadcast")


def test_3_the_participant_sees_the_message_in_jupyterlab_and_on_the_hub(participant, course, screenshot):
    toast = participant.locator(".Toastify__toast", has_text=MESSAGE)
    expect(toast).to_be_visible(timeout=60_000)  # JupyterLab looks every 20 s
    expect(toast).to_contain_text(f"alice (course {course['name']})")
    participant.wait_for_timeout(1000)  # for the picture: the notification has slid in
    screenshot(participant, "workshop participant sees the broadcast")
    participant.goto("/hub/home")
    expect(participant.locator("#werkbank-broadcast")).to_contain_text(MESSAGE)
    screenshot(participant, "workshop the hub's home page with the message")


def test_4_the_trainer_stops_every_server(page, hub, course, screenshot):
    page.reload()
    page.click("button[data-action='DELETE servers']")
    expect(page.locator("#werkbank-result")).to_contain_text("stopped")
    first = f"{course['account_prefix']}01"
    wait_for(lambda: hub.server(first) is None, 60, f"{first}'s server to stop")
    page.reload()
    expect(page.locator(f"tr[data-account={first}]")).to_contain_text("none")
    screenshot(page, "workshop trainer console after stop all")
