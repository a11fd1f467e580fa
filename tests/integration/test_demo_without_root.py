"""`make demo` by a user who is not root: it says Slurm cannot be set up and falls back to a
clearly labelled local-process hub under that user's account, which really serves JupyterLab."""

import subprocess
import time

import httpx
import pytest

from tests.cluster import DEPLOY, run, wait_for

pytestmark = pytest.mark.integration

PORT, MLFLOW_PORT = 18400, 15400


def as_bob(script: str) -> subprocess.CompletedProcess:
    env = [
        "env",
        "PATH=/usr/bin:/bin",
        f"WERKBANK_DEMO_PORT={PORT}",
        f"WERKBANK_DEMO_MLFLOW_PORT={MLFLOW_PORT}",
    ]
    return run("sudo", "-u", "bob", "-H", *env, "bash", str(DEPLOY / script), check=False)


def test_demo_without_root_falls_back_to_local_processes(slurm, report_figure):
    up = as_bob("demo-up.sh")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Slurm cannot be set up here" in up.stdout
        assert "FALLBACK: servers run as LOCAL PROCESSES" in up.stdout
        assert f"URL:       http://127.0.0.1:{PORT}/" in up.stdout
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", follow_redirects=True, timeout=30) as client:
            client.get("/hub/login")
            r = client.post(
                "/hub/login",
                data={
                    "username": "bob",
                    "password": "werkbank-demo",
                    "_xsrf": client.cookies.get("_xsrf", ""),
                },
            )
            assert "Local process (no Slurm" in r.text  # the spawn page says what this is
            client.post("/hub/spawn", data={"_xsrf": client.cookies.get("_xsrf", "")})
            started = time.monotonic()

            def lab_page():
                # Browser path: the server sends us through the hub's OAuth and back to JupyterLab.
                response = client.get("/user/bob/lab")
                return response.status_code == 200 and "JupyterLab" in response.text

            wait_for(lab_page, 60, "JupyterLab of bob's local server through the proxy", interval=0.5)
            report_figure("local fallback: spawn to JupyterLab", f"{time.monotonic() - started:.1f} s")
        owner = run("pgrep", "-u", "bob", "-f", "jupyterhub-singleuser", check=False).stdout.split()
        assert owner, "no jupyterhub-singleuser process of bob's"
    finally:
        down = as_bob("demo-down.sh")
    assert down.returncode == 0, down.stdout + down.stderr
    wait_for(
        lambda: run("pgrep", "-u", "bob", "-f", "jupyterhub", check=False).returncode == 1,
        30,
        "bob's hub and server to stop",
    )
