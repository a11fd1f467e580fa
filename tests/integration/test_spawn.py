"""End to end: JupyterHub → werkbank spawner → real Slurm jobs running as the users."""

from __future__ import annotations

import json
import pwd
import re
import socket
import subprocess
import time
from contextlib import closing, contextmanager

import httpx
import pytest

from tests.cluster import DEPLOY, SERVICE_TOKEN, Hub, job_field, login, run, squeue, wait_for

from .other_users_data import assert_out_of_reach, assert_unchanged, create_own_data

pytestmark = pytest.mark.integration


def job_environ(job_id: str) -> dict[str, str]:
    """The environment of the Jupyter process inside the job (read from /proc as root)."""
    out = run("scontrol", "listpids", job_id).stdout
    env = {}
    for line in out.splitlines()[1:]:
        pid = line.split()[0]
        try:
            raw = open(f"/proc/{pid}/environ", "rb").read()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"jupyterhub-singleuser" in cmdline:
            env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    assert env, f"no jupyterhub-singleuser process in job {job_id}"
    return env


def job_user(job_id: str) -> str:
    return squeue("--jobs", job_id, "--format=%u").strip()


def through_proxy(hub: Hub, user: str, token: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url}/user/{user}/api/status", headers={"Authorization": f"token {token}"}, timeout=10
    )


def test_two_users_get_their_own_jobs(hub):
    assert hub.spawn("alice", {"profile": "gpu1", "walltime": "1h"}).status_code in (201, 202)
    assert hub.spawn("bob", {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready("alice")
    hub.wait_ready("bob")
    alice_job, bob_job = hub.job_id("alice"), hub.job_id("bob")
    assert alice_job and bob_job and alice_job != bob_job
    # The job runs on node1, a name this host cannot resolve: the hub reached the servers at
    # the node's NodeAddr from Slurm, as it must on a real cluster.
    assert job_field(alice_job, "NodeList") == "node1"
    with pytest.raises(OSError):
        socket.getaddrinfo("node1", None)

    # Each job belongs to its own Linux account and got what the profile asked for.
    assert job_user(alice_job) == "alice"
    assert job_user(bob_job) == "bob"
    assert job_field(alice_job, "TresPerNode") == "gres:gpu:1"
    with pytest.raises(KeyError):
        job_field(bob_job, "TresPerNode")
    assert job_field(alice_job, "Partition") == "gpu"
    assert job_field(alice_job, "TimeLimit") == "01:00:00"

    alice_env = job_environ(alice_job)
    assert alice_env["USER"] == "alice"
    assert alice_env["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert alice_env["SLURM_JOB_GPUS"] in ("0", "1")
    # MLflow through the hub's authenticating proxy, with the server's own token.
    assert alice_env["MLFLOW_TRACKING_URI"] == hub.mlflow_job_url
    assert alice_env["MLFLOW_TRACKING_TOKEN"] == alice_env["JUPYTERHUB_API_TOKEN"]
    assert alice_env["WERKBANK_PROFILE"].startswith("gpu1: 1 GPU · 4 cores · 16 GB · 1 h")
    # `werkbank submit` in the session offers the profiles the spawn page offered this user.
    session_policy = json.loads(alice_env["WERKBANK_POLICY"])
    assert [p["name"] for p in session_policy["profiles"]] == ["cpu", "gpu1", "fullnode"]
    assert "CUDA_VISIBLE_DEVICES" not in job_environ(bob_job)
    for pid_line in run("scontrol", "listpids", alice_job).stdout.splitlines()[1:]:
        pid = pid_line.split()[0]
        try:
            uid = open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0]
        except OSError:
            continue
        assert int(uid) == pwd.getpwnam("alice").pw_uid

    # Reached through the proxy with the owner's token; the other user's token is refused.
    alice_token, bob_token = hub.token_for("alice"), hub.token_for("bob")
    r = through_proxy(hub, "alice", alice_token)
    assert r.status_code == 200, r.text
    assert "kernels" in r.json()
    assert through_proxy(hub, "bob", bob_token).status_code == 200
    assert through_proxy(hub, "alice", bob_token).status_code in (403, 404)
    assert through_proxy(hub, "bob", alice_token).status_code in (403, 404)

    # The port-report endpoint takes exactly {"port": N}, from a starting server's own token
    # (batchspawner's handler set every posted key on the spawner: cmd, exec_prefix, ...).
    report = f"{hub.url}/hub/api/batchspawner"
    server_token = {"Authorization": f"token {alice_env['JUPYTERHUB_API_TOKEN']}"}
    url_before = hub.server("alice")["url"]
    for body, words in [
        ({"port": 20001, "cmd": ["/bin/sh", "-c", "id"]}, 'exactly {"port"'),
        ({"exec_prefix": "sh -c id"}, 'exactly {"port"'),
        ([20001], 'exactly {"port"'),
        ({"port": "20001"}, "port must be a number"),
        ({"port": True}, "port must be a number"),
        ({"port": 8081}, "outside the range"),  # the hub API's port: no route may point there
        ({"port": 20001}, "reported already"),  # a running server keeps its port
    ]:
        r = httpx.post(report, json=body, headers=server_token, timeout=10)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["message"], (body, r.text)
    for headers in (
        {"Authorization": f"token {alice_token}"},
        {"Authorization": f"token {SERVICE_TOKEN}"},
        {},
    ):
        r = httpx.post(report, json={"port": 20001}, headers=headers, timeout=10)
        assert r.status_code == 403, r.text  # not a server's own token
    assert hub.server("alice")["url"] == url_before
    assert through_proxy(hub, "alice", alice_token).status_code == 200

    # Stop → scancel → the jobs are gone from the queue.
    hub.stop_server("alice")
    hub.stop_server("bob")
    wait_for(
        lambda: alice_job not in squeue("--states=PD,R,CG", "--format=%i").split(), 15, "alice's job to leave"
    )
    wait_for(
        lambda: bob_job not in squeue("--states=PD,R,CG", "--format=%i").split(), 15, "bob's job to leave"
    )


@pytest.mark.parametrize(
    "options, words",
    [
        ({"profile": "nope"}, "unknown profile"),
        ({"profile": "gpu1", "gpus": 5}, "5 GPUs requested, your limit is 2"),
        ({"profile": "cpu", "gpus": -1}, "gpus"),
        ({"profile": "cpu", "walltime": "99:00:00"}, "walltime"),
        ({"profile": "cpu", "memory": "12Q"}, "size like 16G"),
        ({"profile": "cpu", "partition": "gpu\n#SBATCH --gres=gpu:8"}, "not a valid name"),
        ({"profile": "cpu", "account": "somebody-else"}, "account"),
        ({"profile": "cpu", "cmd": "/bin/sh -c 'id'"}, "unknown option"),
    ],
)
def test_invalid_options_are_refused_before_sbatch(hub, options, words):
    jobs_before = set(squeue("--states=all", "--user=alice", "--format=%i").split())
    r = hub.spawn("alice", options)
    assert r.status_code == 400, r.text
    assert words in r.json()["message"]
    assert hub.server("alice") is None
    # No new job (ended jobs may leave squeue's memory meanwhile: MinJobAge).
    assert set(squeue("--states=all", "--user=alice", "--format=%i").split()) <= jobs_before


def test_group_limits_apply(hub):
    r = hub.api("POST", "/groups/workshop", json={"users": ["alice"]})
    assert r.status_code in (201, 409), r.text
    try:
        r = hub.spawn("alice", {"profile": "fullnode", "walltime": "1h"})
        assert r.status_code == 400, r.text
        assert "2 GPUs requested, your limit is 1" in r.json()["message"]
        r = hub.spawn("alice", {"profile": "gpu1"})
        assert r.status_code == 400, r.text
        assert "04:00:00 requested, your limit is 02:00:00" in r.json()["message"]
    finally:
        hub.api("DELETE", "/groups/workshop")


def test_spawn_page_lists_profiles_and_shows_errors(hub):
    with closing(login(hub, "bob")) as client:
        page = client.get("/hub/spawn")
        assert page.status_code == 200
        for label in ("CPU · 1 core · 2 GB · 1 h", "1 GPU · 4 cores · 16 GB · 4 h", "Full node"):
            assert label in page.text
        jobs_before = squeue("--states=all", "--user=bob", "--format=%i")
        r = client.post(
            "/hub/spawn",
            data={"profile": "cpu", "gpus": "7", "_xsrf": client.cookies.get("_xsrf", "")},
        )
        assert "7 GPUs requested, your limit is 2" in r.text
        assert squeue("--states=all", "--user=bob", "--format=%i") == jobs_before


def progress_messages(hub: Hub, user: str, until: str, timeout: float = 30) -> list[str]:
    """Read the progress event stream until a message matches ``until``."""
    messages = []
    deadline = time.monotonic() + timeout
    with httpx.stream(
        "GET",
        f"{hub.url}/hub/api/users/{user}/server/progress",
        headers={"Authorization": f"token {hub.token_for(user)}"},
        timeout=timeout,
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if re.search(until, messages[-1]) or event.get("ready") or event.get("failed"):
                    break
            if time.monotonic() > deadline:
                break
    return messages


@contextmanager
def both_gpus_held():
    """Both GPUs held by a job of root's while the block runs, so that a user's GPU job waits."""
    blocker = run(
        "sbatch", "--parsable", "--partition=gpu", "--gres=gpu:2", "--output=/dev/null", "--wrap=sleep 300"
    ).stdout.strip()
    try:
        wait_for(lambda: "RUNNING" in squeue("--jobs", blocker, "--format=%T"), 20, "the blocker job to run")
        yield
    finally:
        run("scancel", blocker, check=False)


def test_pending_job_shows_reason_then_starts(hub):
    with both_gpus_held():
        assert hub.spawn("alice", {"profile": "gpu1", "walltime": "1h"}).status_code in (201, 202)
        messages = progress_messages(hub, "alice", r"pending \(reason: \w+\)")
        pending = [m for m in messages if "pending" in m]
        assert pending, messages
        job_id = hub.job_id("alice")
        assert f"Slurm job {job_id} is pending (reason: " in pending[-1]
        assert re.search(r"reason: (Resources|Priority)", pending[-1])
    hub.wait_ready("alice")
    messages = progress_messages(hub, "alice", "running")
    hub.stop_server("alice")


def test_a_job_that_ends_before_jupyter_starts_fails_the_spawn_with_the_reason(hub):
    with both_gpus_held():
        assert hub.spawn("bob", {"profile": "gpu1", "walltime": "1h"}).status_code in (201, 202)
        progress_messages(hub, "bob", r"pending \(reason: \w+\)")
        job_id = hub.job_id("bob")
        run("scancel", job_id)  # the job ends while it waits: no Jupyter ever starts
        messages = progress_messages(hub, "bob", "Spawn failed")
    assert "The Slurm job stopped before Jupyter started" in messages[-1], messages
    assert f"job {job_id} ended: CANCELLED" in messages[-1]
    assert f"jupyter-{job_id}.log" in messages[-1]  # where its output is
    wait_for(lambda: hub.server("bob") is None, 30, "the failed spawn to be cleared")


def test_cancelled_job_is_noticed_with_reason(hub, report_figure):
    hub.spawn("bob", {"profile": "cpu"})
    hub.wait_ready("bob")
    job_id = hub.job_id("bob")
    started = time.monotonic()
    run("scancel", job_id)
    # The job's script tells the hub at Slurm's SIGTERM (the hub's polling is the safety net): the
    # time is reported; the bound here only keeps a hub that never notices from hanging the run.
    wait_for(lambda: hub.server("bob") is None, 60, "the hub to notice the cancelled job")
    report_figure("hub noticed a scancelled job after", f"{time.monotonic() - started:.1f} s")
    assert f"Slurm ended job {job_id} (scancel, its time limit, or preemption); reported by the job" in (
        hub.log_text()
    ), "the hub learned of the end from its polling, not from the job"
    with closing(login(hub, "bob")) as client:
        page = client.get("/hub/spawn")
        # Slurm's own word if it had one as the hub cancelled the job to be sure, else the signal's.
        reasons = (f"job {job_id} ended: CANCELLED", f"Slurm ended job {job_id} (scancel, its time limit")
        assert any(reason in page.text for reason in reasons), page.text[-2000:]


def test_hub_restart_keeps_running_servers(hub):
    hub.spawn("alice", {"profile": "cpu"})
    hub.wait_ready("alice")
    job_id = hub.job_id("alice")
    hub.restart()
    token = hub.token_for("alice")
    r = wait_for(
        lambda: (r := through_proxy(hub, "alice", token)).status_code == 200 and r, 30, "the server again"
    )
    assert r.status_code == 200
    assert hub.job_id("alice") == job_id
    hub.stop_server("alice")


@pytest.mark.slow
def test_scheduler_outage_keeps_the_server(hub):
    hub.spawn("bob", {"profile": "cpu"})
    hub.wait_ready("bob")
    job_id = hub.job_id("bob")
    token = hub.token_for("bob")
    run("pkill", "-x", "slurmctld")
    try:
        wait_for(
            lambda: subprocess.run(["pgrep", "-x", "slurmctld"]).returncode != 0, 20, "slurmctld to stop"
        )
        # A new server cannot be submitted meanwhile: the spawn fails (500) with sbatch's words.
        refused = hub.spawn("alice", {"profile": "cpu"})
        assert refused.status_code == 500, refused.text
        assert "Slurm refused the job: sbatch: error: " in refused.json()["message"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert hub.server("bob") is not None, "the hub dropped the server while Slurm was down"
            assert through_proxy(hub, "bob", token).status_code == 200
            time.sleep(5)
        assert "Slurm unreachable" in hub.log_text()
        assert hub.server("alice") is None
    finally:
        up = run(str(DEPLOY / "slurm-up.sh"), check=False)
        assert up.returncode == 0, up.stderr
    time.sleep(4)  # one more queue refresh and hub poll with Slurm back
    assert hub.server("bob") is not None
    assert hub.job_id("bob") == job_id
    hub.stop_server("bob")


def test_a_batch_job_gets_a_token_of_its_own_and_the_session_its_default_experiment(hub):
    """`werkbank submit` never hands the session's token to a job: the hub gives the session a
    token scoped to MLflow that expires when the job must have ended. And before the session's
    first run, the hub has made <user>/default, owned by the user."""
    from werkbank_lab.batch import SubmitError, request_job_token

    hub.wait_for_mlflow()
    hub.spawn("alice", {"profile": "cpu"})
    hub.wait_ready("alice")
    env = job_environ(hub.job_id("alice"))
    session_token = env["JUPYTERHUB_API_TOKEN"]
    job_token = request_job_token(env, 2 * 3600, "train.ipynb")
    assert job_token not in (session_token, env["MLFLOW_TRACKING_TOKEN"])
    me = httpx.get(
        f"{hub.url}/hub/api/user", headers={"Authorization": f"token {job_token}"}, timeout=10
    ).json()
    assert me["name"] == "alice"
    # MLflow, and what every token may do: read its owner's name and groups.
    identify = {"read:users:name!user=alice", "read:users:groups!user=alice"}
    assert set(me["scopes"]) - identify == {"access:services!service=mlflow"}
    tokens = hub.api("GET", "/users/alice/tokens").json()["api_tokens"]
    [record] = [t for t in tokens if t["note"] == "werkbank job: train.ipynb"]
    assert record["expires_at"] is not None
    uri = env["MLFLOW_TRACKING_URI"]
    bearer = {"Authorization": f"Bearer {job_token}"}
    by_name = f"{uri}/api/2.0/mlflow/experiments/get-by-name"
    r = httpx.get(by_name, params={"experiment_name": "alice/default"}, headers=bearer, timeout=10)
    assert r.status_code == 200, r.text
    experiment = r.json()["experiment"]
    assert {"key": "werkbank.owner", "value": "alice"} in experiment["tags"]
    # The job token can do nothing else on the hub, e.g. not act for alice's server.
    assert httpx.get(f"{hub.url}/user/alice/api/status", headers=bearer, timeout=10).status_code in (302, 403)
    # Only a session's own token gets job tokens; the request is checked.
    with pytest.raises(SubmitError, match="403"):
        request_job_token({**env, "JUPYTERHUB_API_TOKEN": hub.token_for("alice")}, 3600, "x")
    with pytest.raises(SubmitError, match="400"):
        request_job_token(env, 10**9, "x")
    endpoint = f"{hub.url}/hub/api/werkbank/job-tokens"
    session = {"Authorization": f"token {session_token}"}
    r = httpx.post(
        endpoint, headers=session, json={"expires_in": 3600, "scopes": ["admin:users"]}, timeout=10
    )
    assert r.status_code == 400
    hub.stop_server("alice")


def test_session_logs_to_the_hubs_mlflow_as_its_user(hub):
    """A session's environment alone is enough to log a run to the hub's MLflow, through the
    authenticating proxy with the server's token; the run records the session's user whatever
    the client claims."""
    hub.spawn("bob", {"profile": "cpu"})
    hub.wait_ready("bob")
    env = job_environ(hub.job_id("bob"))
    uri = env["MLFLOW_TRACKING_URI"]
    assert uri == hub.mlflow_job_url
    hub.wait_for_mlflow()
    assert env["MLFLOW_EXPERIMENT_NAME"] == "bob/default"
    # MLflow's usage telemetry is off in the session (and so in its kernels and batch jobs).
    assert (env["MLFLOW_DISABLE_TELEMETRY"], env["DO_NOT_TRACK"]) == ("true", "true")
    keep = {
        k: env[k]
        for k in (
            "PATH",
            "HOME",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_EXPERIMENT_NAME",
            "WERKBANK_PROFILE",
        )
    }
    # The client claims to be alice: MLflow's client takes its user from USER/LOGNAME.
    claims = {"USER": "alice", "LOGNAME": "alice"}
    # No experiment chosen: the session's own (MLFLOW_EXPERIMENT_NAME), not MLflow's shared one.
    code = (
        "import mlflow, os\n"
        "with mlflow.start_run(tags={'mlflow.user': 'alice'}) as run:\n"
        "    mlflow.log_param('profile', os.environ['WERKBANK_PROFILE'])\n"
        "    mlflow.log_metric('answer', 42)\n"
        "print(run.info.run_id)\n"
    )
    result = run(
        "sudo",
        "-u",
        "bob",
        "env",
        "-i",
        *(f"{k}={v}" for k, v in {**keep, **claims}.items()),
        "python3",
        "-c",
        code,
    )
    run_id = result.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {hub.token_for('bob')}"}
    r = httpx.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    stored = r.json()["run"]
    assert {"key": "answer", "value": 42.0} in [
        {"key": m["key"], "value": m["value"]} for m in stored["data"]["metrics"]
    ]
    assert stored["info"]["user_id"] == "bob"
    assert {"key": "mlflow.user", "value": "bob"} in stored["data"]["tags"]
    # Without the token the same request is refused; another user may neither read nor delete it.
    assert (
        httpx.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=10).status_code == 401
    )
    alice = {"Authorization": f"Bearer {hub.token_for('alice')}"}
    r = httpx.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=alice, timeout=10)
    assert r.status_code == 403, r.text
    r = httpx.post(f"{uri}/api/2.0/mlflow/runs/delete", json={"run_id": run_id}, headers=alice, timeout=10)
    assert r.status_code == 403, r.text
    r = httpx.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=headers, timeout=10)
    assert r.json()["run"]["info"]["lifecycle_stage"] == "active"
    # The session's MLflow UI (its /werkbank/mlflow/, what the launcher card opens) shows the
    # same service through the session, with the session's token.
    bob = {"Authorization": f"token {hub.token_for('bob')}"}
    ui = f"{hub.url}/user/bob/werkbank/mlflow"
    r = httpx.get(f"{ui}/ajax-api/2.0/mlflow/runs/get", params={"run_id": run_id}, headers=bob, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["run"]["info"]["user_id"] == "bob"
    # Through his session, bob reaches only what he may reach anywhere: none of alice's data.
    alices = create_own_data(uri, hub.token_for("alice"), "alice")
    assert_out_of_reach(alices, ui, bob)
    assert_unchanged(alices, uri, hub.token_for("alice"))
    # In a browser, logged in with cookies: the page loads the XSRF script, and a write without
    # JupyterHub's XSRF token (what any page on the hub's origin could send as bob) is refused.
    with closing(login(hub, "bob")) as browser:
        page = browser.get("/user/bob/werkbank/mlflow/")
        assert page.status_code == 200, page.text[:300]
        assert '<script src="werkbank-xsrf.js"></script>' in page.text
        assert browser.get("/user/bob/werkbank/mlflow/werkbank-xsrf.js").status_code == 200
        search = "/user/bob/werkbank/mlflow/ajax-api/2.0/mlflow/runs/search"
        cors = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
        assert browser.post(search, json={}, headers=cors).status_code == 403
        xsrf = browser.cookies.get("_xsrf", path="/user/bob/")
        r = browser.post(search, json={}, headers={**cors, "X-XSRFToken": xsrf})
        assert r.status_code == 200, r.text
    hub.stop_server("bob")
