"""A consultant's dashboard in real browsers: the consultant (alice) opens the project-overview
notebook as a dashboard, shares it with the client's group and as a link; the client opens the
link, sees the leaderboard and the champion (read from MLflow with the client's own
permissions), and is refused JupyterLab. Two browser contexts, one per person; each step saves a
screenshot."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import httpx
import papermill
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import person
from tests.cluster import REPO, Hub

pytestmark = pytest.mark.integration

CONSULTANT, CLIENT, GROUP = "alice", "acme-client", "acme"
NOTEBOOK = "acme/overview.ipynb"
VALIDATION = "acme/scenario_validation.ipynb"  # template 15, whose report reads as a dashboard
RUNS = {"baseline": 0.81, "wider": 0.86, "tuned": 0.91}
PRIVATE_RUN = "consultant-notes"


def mlflow(hub: Hub, token: str, path: str, body: dict | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{hub.mlflow_url}/api/2.0/mlflow/{path}"
    r = (
        httpx.post(url, json=body, headers=headers, timeout=30)
        if body is not None
        else httpx.get(url, headers=headers)
    )
    assert r.status_code == 200, (path, r.text)
    return r.json()


def validation_notebook(stamp: int) -> dict:
    """Template 15 at its smoke size, as the consultant would set it up for a quick review."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "validation.ipynb"
        papermill.execute_notebook(
            str(REPO / "notebooks/15-scenario-validation/scenario_validation.ipynb"),
            str(prepared),
            parameters={"size": "smoke", "experiment_name": f"{CONSULTANT}/scenario-validation-{stamp}"},
            prepare_only=True,
        )
        return json.loads(prepared.read_text())


@pytest.fixture(scope="module")
def project(hub: Hub):
    """The client's group (with the consultant), a project experiment with three runs and a
    registered champion, and the overview notebook pointed at them in the consultant's server."""
    hub.wait_for_mlflow()
    hub.api("POST", f"/users/{CLIENT}")
    hub.api("POST", f"/groups/{GROUP}", json={"users": [CONSULTANT, CLIENT]})
    if hub.server(CONSULTANT) is None:
        assert hub.spawn(CONSULTANT, {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready(CONSULTANT)
    token = hub.new_token(CONSULTANT)  # new: the MLflow service caches a token's groups
    stamp = int(time.time())
    experiment = f"{GROUP}/overview-{stamp}"
    experiment_id = mlflow(hub, token, "experiments/create", {"name": experiment})["experiment_id"]
    run_ids = {}
    for name, accuracy in RUNS.items():
        run = mlflow(hub, token, "runs/create", {"experiment_id": experiment_id, "run_name": name})["run"]
        run_id = run["info"]["run_id"]
        metrics = [
            {"key": "val_accuracy", "value": accuracy - 0.1 + step * 0.025, "timestamp": 0, "step": step}
            for step in range(5)
        ]
        mlflow(hub, token, "runs/log-batch", {"run_id": run_id, "metrics": metrics})
        mlflow(hub, token, "runs/update", {"run_id": run_id, "status": "FINISHED"})
        run_ids[name] = run_id
    # And one of the consultant's own, which the client may not read: the dashboard shows its
    # run to the consultant and hides it from the client.
    private_id = mlflow(hub, token, "experiments/create", {"name": f"{CONSULTANT}/notes-{stamp}"})[
        "experiment_id"
    ]
    private_run = mlflow(hub, token, "runs/create", {"experiment_id": private_id, "run_name": PRIVATE_RUN})[
        "run"
    ]
    metric = {"key": "val_accuracy", "value": 0.5, "timestamp": 0, "step": 0}
    mlflow(hub, token, "runs/log-batch", {"run_id": private_run["info"]["run_id"], "metrics": [metric]})
    model = f"acme-classifier-{stamp}"
    mlflow(hub, token, "registered-models/create", {"name": model})
    version = mlflow(
        hub,
        token,
        "model-versions/create",
        {"name": model, "source": f"runs:/{run_ids['tuned']}/model", "run_id": run_ids["tuned"]},
    )["model_version"]["version"]
    mlflow(hub, token, "registered-models/alias", {"name": model, "alias": "champion", "version": version})

    # The template, with the consultant's choices in its parameters (as papermill injects them).
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "overview.ipynb"
        papermill.execute_notebook(
            str(REPO / "notebooks/08-project-overview/project-overview.ipynb"),
            str(prepared),
            parameters={
                "experiment_names": f"{experiment},{CONSULTANT}/notes-{stamp}",
                "metrics": "val_accuracy",
                "sort_by": "val_accuracy",
                "registered_model_name": model,
            },
            prepare_only=True,
        )
        content = json.loads(prepared.read_text())
    owner = httpx.Client(
        base_url=f"{hub.url}/user/{CONSULTANT}/",
        headers={"Authorization": f"token {hub.token_for(CONSULTANT)}"},
        timeout=60,
    )
    owner.put("api/contents/acme", json={"type": "directory"})
    r = owner.put(f"api/contents/{NOTEBOOK}", json={"type": "notebook", "content": content})
    assert r.status_code in (200, 201), r.text
    r = owner.put(
        f"api/contents/{VALIDATION}", json={"type": "notebook", "content": validation_notebook(stamp)}
    )
    assert r.status_code in (200, 201), r.text
    yield {"model": model, "experiment": experiment}
    for share in owner.get("werkbank/dashboards").json().get("shares", []):
        owner.delete(f"werkbank/dashboards/{share['id']}")
    owner.close()
    hub.api("DELETE", f"/groups/{GROUP}")
    hub.stop_server(CONSULTANT)


@pytest.fixture(scope="module")
def page(browser, hub) -> Page:
    """The consultant's browser (named ``page`` so that a failure leaves a screenshot of it)."""
    with person(browser, hub, timeout_ms=60_000) as consultant:
        yield consultant


@pytest.fixture(scope="module")
def client(browser, hub) -> Page:
    with person(browser, hub, timeout_ms=60_000) as page:
        yield page


def log_in(page: Page, user: str, password: str) -> None:
    page.goto("/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    page.click("#login_submit")


def expect_overview(dashboard: Page, project: dict) -> None:
    for name in RUNS:
        expect(dashboard.locator("table").get_by_text(name).first).to_be_visible(timeout=120_000)
    expect(dashboard.get_by_text(project["model"]).first).to_be_visible()
    # No code: no editors, and not the parameters papermill put in (markdown stays, as text).
    expect(dashboard.locator(".jp-InputArea-editor, .cm-editor, pre.highlight")).to_have_count(0)
    expect(dashboard.get_by_text("registered_model_name =")).to_have_count(0)


def test_1_the_consultant_opens_the_notebook_as_a_dashboard(page, project, shared_password, screenshot):
    log_in(page, CONSULTANT, shared_password)
    # A workspace of its own, reset: only this notebook open, no tabs of earlier tests restored.
    page.goto(f"/user/{CONSULTANT}/lab/workspaces/dashboards/tree/{NOTEBOOK}?reset")
    panel = page.locator(".jp-NotebookPanel", has_text="Project overview")
    expect(panel.locator(".jp-Notebook")).to_be_visible(timeout=120_000)
    expect(panel.locator(".jp-Spinner")).to_have_count(0, timeout=120_000)
    open_button = panel.locator(".werkbank-open-dashboard-button")
    expect(open_button).to_be_visible()
    screenshot(page, "dashboards consultant's notebook in jupyterlab")
    with page.expect_popup() as opened:
        open_button.click()
    dashboard = opened.value
    expect(dashboard).to_have_url(re.compile(rf"/user/{CONSULTANT}/voila/render/{NOTEBOOK}"))
    expect_overview(dashboard, project)
    expect(dashboard.locator("table").get_by_text(PRIVATE_RUN).first).to_be_visible()  # the owner's view
    screenshot(dashboard, "dashboards the notebook as a dashboard")
    dashboard.close()


def test_2_the_consultant_shares_it_with_the_client_group_and_as_a_link(page, project, screenshot):
    page.locator(".jp-NotebookPanel", has_text="Project overview").locator(
        ".werkbank-share-dashboard-button"
    ).click()
    dialog = page.locator(".werkbank-share-dialog")
    expect(dialog).to_be_visible()
    dialog.locator("#werkbank-share-kind").select_option("group")
    dialog.locator("#werkbank-share-name").fill(GROUP)
    dialog.locator("#werkbank-share-add").click()
    expect(dialog.locator(".werkbank-share-row")).to_contain_text(f"group {GROUP}")
    dialog.locator("#werkbank-share-kind").select_option("link")
    dialog.locator("#werkbank-share-add").click()
    link = dialog.locator("#werkbank-share-link")
    expect(link).to_have_value(re.compile(r"/hub/werkbank/dashboard-links/"))
    project["link"] = link.input_value()
    expect(dialog.locator("#werkbank-share-url")).to_contain_text(f"/hub/werkbank/dashboards/{CONSULTANT}/")
    screenshot(page, "dashboards the share dialog")
    page.get_by_role("button", name="Close").click()


def test_3_the_client_opens_the_link_and_sees_results_not_code(client, project, shared_password, screenshot):
    log_in(client, CLIENT, shared_password)
    client.goto(project["link"])
    authorize = client.get_by_role("button", name="Authorize")
    if authorize.is_visible():  # JupyterHub asks once whether alice's server may identify them
        screenshot(client, "dashboards the client confirms the hub may identify them")
        authorize.click()
    expect(client).to_have_url(re.compile(rf"/user/{CONSULTANT}/voila/render/{NOTEBOOK}"))
    expect_overview(client, project)
    expect(client.get_by_text(f"Showing what {CLIENT} may read: 1 of 2 experiments").first).to_be_visible()
    expect(client.get_by_text(PRIVATE_RUN)).to_have_count(0)
    expect(client.get_by_text(f"{CONSULTANT}/notes-")).to_have_count(0)
    screenshot(client, "dashboards the client sees the leaderboard and the champion")


def test_4_the_client_is_refused_jupyterlab(client, screenshot):
    response = client.goto(f"/user/{CONSULTANT}/lab")
    assert response is not None and response.status == 403
    screenshot(client, "dashboards the client is refused jupyterlab")
    response = client.goto(f"/user/{CONSULTANT}/api/contents")
    assert response is not None and response.status == 403


def test_5_a_validation_report_reads_as_a_dashboard(page, project, screenshot):
    """Template 15 (scenario validation) rendered by Voila in the consultant's Slurm job: it runs from top
    to bottom there (smoke size) and shows the report, the verdicts and the checks' result, no code."""
    dashboard = page.context.new_page()
    dashboard.goto(f"/user/{CONSULTANT}/voila/render/{VALIDATION}")
    expect(dashboard.get_by_text("Scenario validation report").first).to_be_visible(timeout=240_000)
    expect(dashboard.get_by_text("Verdicts on the catalogue").first).to_be_visible()
    expect(dashboard.locator("table").get_by_text("FAIL").first).to_be_visible()  # always-accelerate's
    expect(dashboard.get_by_text("All checks passed").first).to_be_visible(timeout=120_000)
    expect(dashboard.locator(".jp-InputArea-editor, .cm-editor, pre.highlight")).to_have_count(0)
    expect(dashboard.get_by_text("search_trials =")).to_have_count(0)
    expect(dashboard.get_by_text("Traceback")).to_have_count(0)
    # Voila's page scrolls inside its own container: bring the report into the picture.
    dashboard.get_by_text("Verdicts on the catalogue").first.scroll_into_view_if_needed()
    screenshot(dashboard, "dashboards a scenario validation report as a dashboard")
    dashboard.close()
