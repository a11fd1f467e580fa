"""The fallback for machines without Slurm (servers as local processes, clearly labelled),
with PAM logins: the authenticator a real site uses for cluster accounts."""

import httpx
import pytest

from tests.cluster import TEST_PASSWORD, make_hub, run

pytestmark = pytest.mark.integration

PORT, API_PORT = 18200, 18281


def environ(pid: str) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_local_fallback_spawns_a_labelled_server(slurm, tmp_path):
    hub = make_hub(tmp_path, port=PORT, api_port=API_PORT, spawner="local", mlflow=False, auth="pam")
    hub.start()
    try:
        with httpx.Client(base_url=hub.url, timeout=30) as client:
            client.get("/hub/login")
            xsrf = client.cookies.get("_xsrf", "")
            wrong = client.post("/hub/login", data={"username": "alice", "password": "nope", "_xsrf": xsrf})
            assert wrong.status_code == 403
            right = client.post(
                "/hub/login", data={"username": "alice", "password": TEST_PASSWORD, "_xsrf": xsrf}
            )
            assert right.status_code == 302, right.text[:300]
            page = client.get("/hub/spawn")
            assert "Local process (no Slurm" in page.text
        assert hub.spawn("alice", {}).status_code in (201, 202)
        hub.wait_ready("alice", timeout=60)
        token = hub.token_for("alice")
        r = httpx.get(
            f"{hub.url}/user/alice/api/status", headers={"Authorization": f"token {token}"}, timeout=10
        )
        assert r.status_code == 200
        # The server is a plain process of alice's (no Slurm job), labelled as the fallback.
        pids = run("pgrep", "-u", "alice", "-f", "jupyterhub-singleuser").stdout.split()
        ours = [environ(p) for p in pids if f":{API_PORT}/" in environ(p).get("JUPYTERHUB_API_URL", "")]
        assert len(ours) == 1, pids
        assert ours[0]["WERKBANK_PROFILE"].startswith("local: Local process (no Slurm")
        assert "SLURM_JOB_ID" not in ours[0]
        hub.stop_server("alice")
    finally:
        hub.stop()
