"""A new user's first session, in a real browser: log in, choose the GPU profile, wait while the
job is pending, work in JupyterLab, stop the server. Steps run in order on one browser context
(one login), each saving a screenshot; each asserts what the page shows."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from tests.cluster import TEST_USERS, run, squeue, wait_for

pytestmark = pytest.mark.integration

USER = TEST_USERS[0]
#: The demo site's profiles, as the spawn page labels them.
PROFILE_LABELS = ("CPU · 1 core · 2 GB · 1 h", "1 GPU · 4 cores · 16 GB · 4 h", "Full node")


@pytest.fixture(scope="module")
def page(browser, hub) -> Page:
    """One browser context for the journey: the hub's cookies survive from step to step."""
    hub.api("DELETE", f"/users/{USER}/server")
    wait_for(lambda: hub.server(USER) is None, 60, f"{USER}'s server to be stopped before the journey")
    # A new user's JupyterLab: no workspace (open tabs) restored from an earlier run.
    shutil.rmtree(Path(pwd.getpwnam(USER).pw_dir) / ".jupyter" / "lab" / "workspaces", ignore_errors=True)
    context = browser.new_context(base_url=hub.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    context.close()
    hub.api("DELETE", f"/users/{USER}/server")


def blocker_holding_both_gpus() -> str:
    """A job of root's on both GPUs, with a time limit so that Slurm can estimate when the next
    GPU job starts."""
    job = run(
        "sbatch", "--parsable", "--partition=gpu", "--gres=gpu:2", "--time=5", "--output=/dev/null",
        "--wrap=sleep 300",
    ).stdout.strip()  # fmt: skip
    wait_for(lambda: "RUNNING" in squeue("--jobs", job, "--format=%T"), 30, "the blocker job to run")
    return job


def test_1_login_choose_the_gpu_profile_wait_and_get_jupyterlab(
    page, hub, shared_password, screenshot, report_figure
):
    page.goto("/hub/login")
    page.fill("#username_input", USER)
    page.fill("#password_input", shared_password)
    screenshot(page, "login")
    page.click("#login_submit")

    page.goto("/hub/spawn")
    form = page.locator("form#spawn_form")
    for label in PROFILE_LABELS:
        expect(form).to_contain_text(label)
    screenshot(page, "spawn page")

    blocker = blocker_holding_both_gpus()
    try:
        page.check("input[name=profile][value=gpu1]")
        page.click("form#spawn_form [type=submit]")
        expect(page).to_have_url(re.compile(rf"/hub/spawn-pending/{USER}"))
        message = page.locator("#progress-message")
        expect(message).to_contain_text(
            re.compile(r"Slurm job \d+ is pending \(reason: (Resources|Priority)\)")
        )
        # The blocker has a time limit, so Slurm's backfill (every 2 s here) estimates the start.
        expect(message).to_contain_text(
            re.compile(r"; estimated start \d{4}-\d\d-\d\dT\d\d:\d\d"), timeout=60_000
        )
        job_id = re.search(r"Slurm job (\d+)", message.inner_text()).group(1)
        assert job_id == hub.job_id(USER)
        assert "PENDING" in squeue("--jobs", job_id, "--format=%T")
        screenshot(page, "pending")
    finally:
        run("scancel", blocker, check=False)
    started = time.monotonic()
    # JupyterLab, with its launcher, once the job runs and Jupyter has started.
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=120_000)
    report_figure(
        "browser: blocker cancelled -> JupyterLab launcher visible", f"{time.monotonic() - started:.1f} s"
    )
    expect(page).to_have_url(re.compile(rf"/user/{USER}/lab"))
    # The session's time left, in JupyterLab's status bar: the GPU profile's 4 h, counting down.
    expect(page.locator("#werkbank-time-left")).to_have_text(re.compile(r"Walltime: 3:5\d h left"))
    # The template cards: one per template, each with its icon, its description as tooltip.
    cards = page.locator(".jp-Launcher-section", has_text="Werkbank").locator(".jp-LauncherCard")
    expect(cards.filter(has_text="01 Onboarding")).to_have_count(1)
    assert cards.count() >= 7
    for i in range(cards.count()):
        expect(cards.nth(i).locator(".jp-LauncherCard-icon svg")).to_have_count(1)
    onboarding = cards.filter(has_text="01 Onboarding").get_attribute("title") or ""
    assert "about 1 min" in onboarding, onboarding
    screenshot(page, "jupyterlab")


def job_state(job_id: str) -> str:
    """What squeue says of the job ("" once Slurm has forgotten it)."""
    return run("squeue", "--noheader", "--jobs", job_id, "--format=%T", check=False).stdout.strip()


def test_2_stopping_the_server_on_the_home_page_ends_the_slurm_job(page, hub, screenshot):
    job_id = hub.job_id(USER)
    assert job_id and job_state(job_id) == "RUNNING"
    page.goto("/hub/home")
    page.click("#stop")
    expect(page.locator("#start")).to_be_visible(timeout=60_000)
    screenshot(page, "stopped")
    wait_for(lambda: job_state(job_id) in ("", "COMPLETING"), 30, f"job {job_id} to end")
    assert hub.server(USER) is None


def test_3_start_to_launcher_with_the_cpu_profile(page, hub, screenshot, report_figure):
    """What a user waits for: the click on Start until JupyterLab's launcher shows (reported; the
    target is measured by benchmarks/browser_start.py)."""
    page.goto("/hub/spawn")
    page.check("input[name=profile][value=cpu]")
    page.click("details.werkbank-custom summary")  # "Adjust resources"
    page.fill("input[name=walltime]", "14m")  # inside the 15-minute warning from the start
    started = time.monotonic()
    page.click("form#spawn_form [type=submit]")
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=120_000)
    report_figure(
        "browser: Start (CPU profile) -> JupyterLab launcher visible", f"{time.monotonic() - started:.1f} s"
    )
    # 14 minutes of walltime: the time left in red-amber, and a warning to save, once.
    expect(page.locator("#werkbank-time-left")).to_have_text(re.compile(r"Walltime: 1[34] min left"))
    expect(page.locator("#werkbank-time-left")).to_have_class(re.compile("werkbank-soon"))
    warning = page.locator(".Toastify__toast", has_text="Your session ends in")
    expect(warning).to_have_count(1)
    expect(warning).to_contain_text("Save your work now")
    expect(warning.get_by_role("button", name="Save all")).to_be_visible()
    screenshot(page, "jupyterlab cpu, walltime warning")
    assert job_state(hub.job_id(USER)) == "RUNNING"


@pytest.fixture(scope="module")
def untyped_notebook() -> Path:
    """A notebook as other tools write them (untyped parameters, no kernelspec), in the user's
    home, owned by the user."""
    account = pwd.getpwnam(USER)
    folder = Path(account.pw_dir) / "browser-submit"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("max_depth = 3")
    parameters.metadata["tags"] = ["parameters"]
    check = nbformat.v4.new_code_cell("assert max_depth == 2 and isinstance(max_depth, int), repr(max_depth)")
    nb.cells = [parameters, check]
    path = folder / "params.ipynb"
    nbformat.write(nb, path)
    for item in (folder, path):
        os.chown(item, account.pw_uid, account.pw_gid)
    return path


def test_4_werkbank_submit_in_a_terminal(page, hub, untyped_notebook, screenshot):
    """The README's next step: in a JupyterLab terminal, submit a notebook with untyped parameters
    and no kernelspec; it completes, and the executed notebook shows in the file browser."""
    folder = untyped_notebook.parent
    page.locator(".jp-LauncherCard", has_text="Terminal").first.click()
    terminal = page.locator(".jp-Terminal").first
    expect(terminal).to_be_visible()
    terminal.click()
    page.keyboard.type(
        f"cd ~/{folder.name} && werkbank submit params.ipynb -p max_depth 2 > submitted.txt 2>&1; "
        "id=$(grep -oE 'job [0-9]+' submitted.txt | cut -d' ' -f2); "
        'for i in $(seq 180); do werkbank jobs | grep -qE "^ *$id +(COMPLETED|FAILED|ENDED|CANCELLED)" '
        "&& break; sleep 1; done; "
        "werkbank jobs > jobs.tmp 2>&1; mv jobs.tmp jobs.txt\n"
    )
    wait_for(lambda: (folder / "jobs.txt").exists(), 240, "werkbank jobs to report the job's end")
    screenshot(page, "terminal")
    submitted = (folder / "submitted.txt").read_text()
    job_id = re.search(r"Submitted job (\d+)", submitted).group(1)
    jobs = (folder / "jobs.txt").read_text()
    assert re.search(rf"^\s*{job_id}\s+COMPLETED\s", jobs, flags=re.MULTILINE), jobs + submitted
    executed = folder / f"params-{job_id}.ipynb"
    assert executed.is_file()
    page.locator(".jp-DirListing-item", has_text=folder.name).first.dblclick()
    expect(page.locator(".jp-DirListing-content")).to_contain_text(executed.name, timeout=30_000)
    screenshot(page, "executed notebook in the file browser")


def test_5_a_template_from_the_launcher_runs_and_its_run_is_the_users_alone(
    page, hub, browser, shared_password, screenshot
):
    """The onboarding card copies the template and opens the copy in this JupyterLab (no new
    browser tab); run all cells; no cell fails; the run is in MLflow through the hub for this user
    and not for another."""
    home = Path(pwd.getpwnam(USER).pw_dir)
    before = set((home / "werkbank-templates").glob("onboarding*.ipynb"))
    page.keyboard.press("Control+Shift+L")  # a new launcher
    card = page.locator(".jp-Launcher-section", has_text="Werkbank").locator(".jp-LauncherCard")
    card.filter(has_text="01 Onboarding").last.click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook).to_have_count(1)
    assert len(page.context.pages) == 1  # opened here, not in a new browser tab
    [copy] = set((home / "werkbank-templates").glob("onboarding*.ipynb")) - before
    expect(page.get_by_role("tab", name=copy.name)).to_have_attribute("aria-selected", "true")
    # The kernel has started (the status bar says so) before anything is run.
    expect(page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle"))).to_have_count(
        1, timeout=90_000
    )
    page.locator(".lm-MenuBar-itemLabel").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
    # Every code cell ran, and none failed: the copy as the user saves it (JupyterLab renders only
    # the cells in view, so the page alone cannot tell).

    def finished() -> nbformat.NotebookNode | None:
        page.keyboard.press("Control+S")
        time.sleep(2)
        saved = nbformat.read(copy, as_version=4)
        code = [c for c in saved.cells if c.cell_type == "code"]
        failed = any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
        return saved if failed or all(c.get("execution_count") for c in code) else None

    try:
        executed = wait_for(finished, 240, "every cell of the onboarding template to run")
    finally:
        screenshot(page, "onboarding ran")
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{errors[0].get('ename')}: {errors[0].get('evalue')}"
    # The notebook links its run in MLflow's UI on the hub (not the jobs' address MLflow's client
    # would print), and the link leads there.
    outputs = "".join(
        str(o.get("data", {}).get("text/html", "")) + str(o.get("text", ""))
        for c in executed.cells
        for o in c.get("outputs", [])
    )
    assert "View run" not in outputs  # MLflow's own line, with the jobs' address
    link = re.search(r'href="(/services/mlflow/#/experiments/\d+/runs/\w+)"', outputs)
    assert link, outputs[-2000:]
    page.goto(link.group(1))
    expect(page.get_by_text("environment-check").first).to_be_visible(timeout=60_000)
    screenshot(page, "the run in mlflow")
    # The run, in MLflow's UI through the hub, with this browser's hub login (the service's own
    # OAuth login happens on the way) ...
    page.goto("/services/mlflow/")
    expect(page.get_by_text(f"{USER}/werkbank-onboarding")).to_be_visible(timeout=60_000)
    screenshot(page, "mlflow ui")
    # MLflow's telemetry is off, and its UI does not ask about it.
    expect(page.get_by_text("Information about UI telemetry")).to_have_count(0)
    search = "/services/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=1000"
    mine = page.request.get(search)
    assert mine.ok, mine.text()
    assert f"{USER}/werkbank-onboarding" in [e["name"] for e in mine.json()["experiments"]]
    # ... and not for another user.
    other = browser.new_context(base_url=hub.url)
    try:
        login = other.new_page()
        login.goto("/hub/login")
        login.fill("#username_input", TEST_USERS[1])
        login.fill("#password_input", shared_password)
        login.click("#login_submit")
        login.wait_for_url(re.compile(r"/hub/"))
        login.goto("/services/mlflow/")
        expect(login).to_have_title(re.compile("MLflow"), timeout=60_000)
        theirs = other.request.get(search)
        assert theirs.ok, theirs.text()
        assert f"{USER}/werkbank-onboarding" not in [e["name"] for e in theirs.json().get("experiments", [])]
    finally:
        other.close()
