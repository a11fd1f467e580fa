"""Workshops end to end: ``werkbank-workshop`` against the real hub and Slurm, course logins on the
hub's login form, the locked profile in the course's reservation, a trainer without admin rights,
and an end that leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import pwd
import re
import shutil
import subprocess
import tarfile
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.cluster import TEST_ADMIN, Hub, job_field, login, run, squeue, wait_for
from tests.workshops import (
    NOTEBOOK,
    PARTICIPANTS,
    as_alice,
    course_login,
    make_material,
    workshop,
    workshop_api,
    write_course,
)

from .test_spawn import job_environ

pytestmark = pytest.mark.integration


def logged_in_as(client: httpx.Client) -> str:
    """The hub user the client's cookie belongs to."""
    r = client.get("/hub/api/user")
    assert r.status_code == 200, r.text
    return r.json()["name"]


@pytest.fixture(scope="module")
def material():
    """The trainer's repository of course material on the cluster (a path, as at an HPC centre),
    with a working copy to push fixes from during the course."""
    made = make_material()
    yield made
    shutil.rmtree(made["root"], ignore_errors=True)


@pytest.fixture(scope="module")
def course(hub, tmp_path_factory, material):
    """A course of 5 created with the CLI; ended at the end of the module if a test did not."""
    path, spec = write_course(
        tmp_path_factory.mktemp("course"), material={"repo": material["repo"], "branch": "main"}
    )
    result = workshop(hub, "create", str(path))
    assert result.returncode == 0, result.stderr
    code = re.search(r"event code: (\S+)", result.stdout).group(1)
    accounts = [f"{spec['account_prefix']}{i:02d}" for i in range(1, PARTICIPANTS + 1)]
    yield {
        **spec,
        "code": code,
        "accounts": accounts,
        "group": f"course-{spec['name']}",
        "out": result.stdout,
    }
    if hub.api("GET", f"/groups/course-{spec['name']}").status_code == 200:
        workshop(hub, "end", spec["name"])


def test_create_made_accounts_group_reservation_and_trainer_role(hub, course):
    for name in course["accounts"]:
        assert pwd.getpwnam(name).pw_dir == f"/home/{name}"
    group = hub.api("GET", f"/groups/{course['group']}").json()
    assert sorted(group["users"]) == course["accounts"]
    reservation = run("scontrol", "show", "reservation", course["group"]).stdout
    assert f"Users={','.join(course['accounts'])}" in reservation and "CoreCnt=5" in reservation
    role = workshop_api(hub, "GET", f"/werkbank/course-roles/{course['name']}").json()
    assert role["users"] == ["alice"] and f"servers!group={course['group']}" in role["scopes"]
    # A second course with the same name is refused before anything changes.
    again = workshop(
        hub, "create", str(write_course(Path(os.environ.get("TMPDIR", "/tmp")), name=course["name"])[0])
    )
    assert again.returncode == 1 and f"a course named {course['name']} exists" in again.stderr


def test_participants_log_in_with_the_event_code(hub, course):
    seen = {}
    for i in range(PARTICIPANTS):
        client, r = course_login(hub, f"Participant {i}", course["code"])
        with closing(client):
            assert r.status_code == 200, r.text[:300]
            seen[f"Participant {i}"] = logged_in_as(client)
    assert sorted(seen.values()) == course["accounts"]
    # The same nickname again: the same account, whatever the case and spacing.
    client, r = course_login(hub, "  participant   0 ", course["code"])
    with closing(client):
        assert logged_in_as(client) == seen["Participant 0"]
    # Every account taken: a sixth nickname is told so; a wrong code is an ordinary failure.
    client, r = course_login(hub, "latecomer", course["code"])
    client.close()
    assert r.status_code == 403 and f"The course {course['name']} is full" in r.text
    client, r = course_login(hub, "guesser", "abcd-efgh")
    client.close()
    assert r.status_code == 403 and "Invalid username or password" in r.text
    status = workshop(hub, "status", course["name"])
    assert status.returncode == 0 and "participant 1" in status.stdout


def test_a_participant_gets_the_locked_profile_in_the_reservation(hub, course):
    participant = course["accounts"][0]
    r = hub.spawn(participant, {"profile": "gpu1"})
    assert r.status_code == 400 and "unknown profile 'gpu1'; choose one of: course" in r.json()["message"]
    r = hub.spawn(participant, {"profile": "course", "cpus": "4"})
    assert r.status_code == 400 and "does not allow changing it" in r.json()["message"]
    assert hub.spawn(participant, {"profile": "course"}).status_code in (201, 202)
    hub.wait_ready(participant)
    job = hub.job_id(participant)
    assert job_field(job, "Reservation") == course["group"]
    assert job_field(job, "UserId").startswith(participant + "(")
    assert job_field(job, "TimeLimit") == "00:30:00"


def pull(hub: Hub, user: str, token: str, course: dict) -> list[dict]:
    """What nbgitpuller's pull API (the participant's first page calls it) reports."""
    query = {"repo": course["material"]["repo"], "branch": "main", "targetpath": course["name"]}
    with httpx.stream(
        "GET",
        f"{hub.url}/user/{user}/git-pull/api",
        params=query,
        headers={"Authorization": f"token {token}"},
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events and events[-1]["phase"] == "finished", events
    return events


def test_material_arrives_and_a_participants_edit_survives_a_re_pull(hub, course, material):
    participant = course["accounts"][0]
    if not (hub.server(participant) or {}).get("ready"):
        hub.spawn(participant, {"profile": "course"})
        hub.wait_ready(participant)
    # The server opens at the nbgitpuller link that brings the material.
    first_page = job_environ(hub.job_id(participant))["JUPYTERHUB_DEFAULT_URL"]
    assert first_page.startswith("/git-pull?repo=") and f"targetpath={course['name']}" in first_page
    token = hub.new_token(participant)
    pull(hub, participant, token, course)
    folder = Path(pwd.getpwnam(participant).pw_dir) / course["name"]
    assert (folder / "lesson.ipynb").read_text() == NOTEBOOK
    assert folder.stat().st_uid == pwd.getpwnam(participant).pw_uid
    # The participant edits the lesson; the trainer pushes a fix and a new lesson.
    mine = {
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": "my notes"}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    r = httpx.put(
        f"{hub.url}/user/{participant}/api/contents/{course['name']}/lesson.ipynb",
        json={"type": "notebook", "content": mine},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    work = material["work"]
    (work / "README.md").write_text("Welcome, with a fix\n")
    (work / "lesson2.ipynb").write_text(NOTEBOOK)
    run("chown", "-R", "alice", str(work))
    as_alice("add", ".", cwd=work)
    as_alice("commit", "--quiet", "-m", "lesson 2", cwd=work)
    as_alice("push", "--quiet", "origin", "main", cwd=work)
    pull(hub, participant, token, course)
    assert "".join(json.loads((folder / "lesson.ipynb").read_text())["cells"][0]["source"]) == "my notes"
    assert (folder / "lesson2.ipynb").exists()
    assert (folder / "README.md").read_text() == "Welcome, with a fix\n"


def console(hub: Hub, method: str, path: str, token: str, **kw) -> httpx.Response:
    """The trainer console's REST API, through the hub's proxy as a browser or script reaches it."""
    return httpx.request(
        method,
        f"{hub.url}/services/werkbank-workshop/api/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=120,
        **kw,
    )


def ready(hub: Hub, user: str) -> None:
    if not (hub.server(user) or {}).get("ready"):
        if not hub.server(user):
            assert hub.spawn(user, {"profile": "course"}).status_code in (201, 202)
        hub.wait_ready(user)


def test_the_console_is_the_trainers_and_the_admins_alone(hub, course):
    wait_for(lambda: answers_json(f"{hub.url}/services/werkbank-workshop/api/courses"), 60, "the console")
    trainer, other = hub.new_token("alice"), hub.new_token("bob")
    mine = console(hub, "GET", "courses", trainer)
    assert mine.status_code == 200, mine.text
    assert course["name"] in [c["name"] for c in mine.json()]
    assert all("alice" in c["trainers"] for c in mine.json())
    detail = console(hub, "GET", f"courses/{course['name']}", trainer).json()
    assert [p["account"] for p in detail["participants"]] == course["accounts"]
    # bob trains nothing: the hub refuses him the service; the course is not his either way.
    for method, path in (
        ("GET", "courses"),
        ("GET", f"courses/{course['name']}"),
        ("POST", f"courses/{course['name']}/end"),
    ):
        assert console(hub, method, path, other).status_code == 403
    # The printable sheet, for the trainers alone: it holds the event code.
    sheet = httpx.get(
        f"{hub.url}/services/werkbank-workshop/courses/{course['name']}/sheet.pdf",
        headers={"Authorization": f"token {trainer}"},
        timeout=30,
    )
    assert sheet.status_code == 200 and sheet.content.startswith(b"%PDF")
    page = httpx.get(
        f"{hub.url}/services/werkbank-workshop/courses/{course['name']}/sheet.html",
        headers={"Authorization": f"token {trainer}"},
        timeout=30,
    )
    assert course["code"] in page.text and f"{hub.url}/hub/login" in page.text
    # Trainers run their courses; only hub admins create courses.
    new = console(hub, "POST", "courses", trainer, json={"course": {"name": "x" * 5}})
    assert new.status_code == 403 and "only hub admins" in new.json()["message"]


def test_a_hub_admin_creates_and_ends_a_course_through_the_console(hub, tmp_path):
    admin = hub.new_token(TEST_ADMIN)
    _, spec = write_course(tmp_path, participants=1, reservation=False)
    created = console(hub, "POST", "courses", admin, json={"course": spec})
    assert created.status_code == 201, created.text
    assert re.fullmatch(r"[a-z2-9]{4}-[a-z2-9]{4}", created.json()["event_code"])
    bad = console(hub, "POST", "courses", admin, json={"course": {**spec, "participants": 0}})
    assert bad.status_code == 400 and "participants" in bad.json()["message"]
    # The CLI writes the same sheet, for root alone.
    sheet = workshop(
        hub, "sheet", spec["name"], "--html", str(tmp_path / "s.html"), "--pdf", str(tmp_path / "s.pdf")
    )
    assert sheet.returncode == 0, sheet.stderr
    assert (tmp_path / "s.pdf").stat().st_mode & 0o077 == 0
    assert created.json()["event_code"] in (tmp_path / "s.html").read_text()
    ended = console(hub, "POST", f"courses/{spec['name']}/end", admin)
    assert ended.status_code == 200 and ended.json()["ended"]
    run("userdel", "--remove", f"{spec['account_prefix']}01", check=False)


def answers_json(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code in (200, 302, 401, 403)
    except httpx.HTTPError:
        return False


def test_a_broadcast_reaches_the_participants_jupyterlab_and_hub_pages(hub, course):
    participant = course["accounts"][0]
    ready(hub, participant)
    sent = console(
        hub,
        "POST",
        f"courses/{course['name']}/broadcast",
        hub.new_token("alice"),
        json={"message": "Break until 15:00 <b>!</b>"},
    )
    assert sent.status_code == 200, sent.text
    token = hub.new_token(participant)
    # What JupyterLab asks its server for (which asks the hub with the session's own token).
    got = wait_for(
        lambda: (
            (
                r := httpx.get(
                    f"{hub.url}/user/{participant}/werkbank/broadcast",
                    headers={"Authorization": f"token {token}"},
                    timeout=10,
                )
            )
            .json()
            .get("message")
            and r.json()
        ),
        30,
        "the message in the session",
    )
    assert (
        got["message"] == "Break until 15:00 <b>!</b>"
        and got["by"] == "alice"
        and got["course"] == course["name"]
    )
    # The hub's pages show it to the course's participants (escaped), and to nobody else.
    client, _ = course_login(hub, "Participant 0", course["code"])
    with closing(client):
        home = client.get("/hub/home").text
    assert "Break until 15:00 &lt;b&gt;!&lt;/b&gt;" in home and 'id="werkbank-broadcast"' in home
    with closing(login(hub, "bob")) as bob:
        assert "Break until 15:00" not in bob.get("/hub/home").text


def test_the_console_refuses_cookie_requests_without_the_xsrf_token(hub, course):
    """A page elsewhere on the hub's origin (or another site) can make a trainer's browser send
    the console's cookie, not its XSRF token: such a change is refused."""
    with closing(login(hub, "alice")) as browser:
        page = browser.get(f"/services/werkbank-workshop/courses/{course['name']}")
        assert page.status_code == 200 and "werkbank-participants" in page.text
        token = re.search(r'data-xsrf="([^"]+)"', page.text).group(1)
        # The console's XSRF cookie is its own: at "/" it would shadow JupyterLab's and the hub's.
        paths = {c.path for c in browser.cookies.jar if c.name == "_xsrf"}
        assert "/services/werkbank-workshop/" in paths and "/" not in paths, paths
        url = f"/services/werkbank-workshop/api/courses/{course['name']}/broadcast"
        for headers in ({}, {"X-XSRFToken": "forged"}):
            forged = browser.post(url, json={"message": "forged"}, headers=headers)
            assert forged.status_code == 403, forged.text
        sent = browser.post(url, json={"message": "from the console"}, headers={"X-XSRFToken": token})
        assert sent.status_code == 200, sent.text
    assert "forged" not in json.dumps(
        console(hub, "GET", f"courses/{course['name']}", hub.new_token("alice")).json()
    )


def test_start_all_collect_reset_and_stop_all_from_the_console(hub, course):
    trainer, name = hub.new_token("alice"), course["name"]
    started = console(hub, "POST", f"courses/{name}/servers", trainer)
    assert started.status_code == 200, started.text
    for account in course["accounts"]:
        hub.wait_ready(account, timeout=120)
    rows = console(hub, "GET", f"courses/{name}", trainer).json()["participants"]
    assert {r["server"] for r in rows} == {"running"} and {r["node"] for r in rows} == {"node1"}
    # Everyone's course folder in one archive (participant 1 pulled the material earlier).
    collected = console(hub, "POST", f"courses/{name}/collect", trainer)
    assert collected.status_code == 200 and collected.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(collected.content)) as tar:
        assert f"{course['accounts'][0]}/{name}/lesson2.ipynb" in tar.getnames()
    # A participant's material put aside (never deleted): the next pull brings a fresh copy.
    first = course["accounts"][0]
    reset = console(hub, "POST", f"courses/{name}/participants/{first}/reset", trainer)
    assert reset.status_code == 200, reset.text
    home = Path(pwd.getpwnam(first).pw_dir)
    assert not (home / name).exists() and (home / reset.json()["put_aside_as"] / "lesson2.ipynb").exists()
    # Someone else's account is not the course's business.
    assert console(hub, "POST", f"courses/{name}/participants/bob/reset", trainer).status_code == 409
    stopped = console(hub, "DELETE", f"courses/{name}/servers", trainer)
    assert sorted(stopped.json()["stopped"]) == course["accounts"]
    for account in course["accounts"]:
        wait_for(lambda a=account: hub.server(a) is None, 60, f"{account}'s server to stop")


def test_a_trainer_sees_and_stops_only_the_course_servers(hub, course):
    participant = course["accounts"][0]
    if not (hub.server(participant) or {}).get("ready"):
        hub.spawn(participant, {"profile": "course"})
        hub.wait_ready(participant)
    hub.spawn("bob", {"profile": "cpu"})
    hub.wait_ready("bob")
    # The trainer role is in the hub's configuration too: it survives a restart of the hub.
    hub.restart()
    trainer = hub.new_token("alice")
    assert not hub.user_model("alice")["admin"]
    listed = hub.api("GET", "/users", token=trainer)
    assert listed.status_code == 200
    assert sorted(u["name"] for u in listed.json()) == course["accounts"]  # nobody else
    assert hub.api("DELETE", "/users/bob/server", token=trainer).status_code in (403, 404)
    assert (hub.server("bob") or {}).get("ready")
    assert hub.api("DELETE", f"/users/{participant}/server", token=trainer).status_code in (202, 204)
    wait_for(lambda: hub.server(participant) is None, 60, f"{participant}'s server to stop")
    hub.stop_server("bob")


def test_idle_servers_are_stopped_and_a_course_ends_when_it_closes(hub, tmp_path):
    """The console's rounds (every 5 s in the tests): a course with a one-minute idle timeout that
    closes 100 s after it was made."""
    now = datetime.now().replace(microsecond=0)
    path, spec = write_course(
        tmp_path,
        participants=1,
        reservation=False,
        idle_timeout="1m",
        grace="0m",
        starts=(now - timedelta(minutes=1)).isoformat(),
        ends=(now + timedelta(seconds=100)).isoformat(),
    )
    assert workshop(hub, "create", str(path)).returncode == 0
    account = f"{spec['account_prefix']}01"
    try:
        assert hub.spawn(account, {"profile": "course"}).status_code in (201, 202)
        hub.wait_ready(account)
        wait_for(lambda: hub.server(account) is None, 90, "the idle server to be stopped")
        assert datetime.now() < now + timedelta(seconds=100), (
            "stopped for being idle, before the course closed"
        )
        # Locking the accounts is the end's last step (after the group is gone): wait for it.
        wait_for(lambda: pwd.getpwnam(account).pw_shell == "/usr/sbin/nologin", 60, "the course to end")
        assert hub.api("GET", f"/groups/course-{spec['name']}").status_code == 404
    finally:
        workshop(hub, "end", spec["name"])
        run("userdel", "--remove", account, check=False)


def test_logins_outside_the_window_are_refused_with_the_course_and_its_window(hub, tmp_path):
    starts = (datetime.now() + timedelta(days=1)).replace(hour=13, minute=0, second=0, microsecond=0)
    path, spec = write_course(
        tmp_path,
        participants=1,
        reservation=False,
        starts=starts.isoformat(),
        ends=(starts + timedelta(hours=5)).isoformat(),
    )
    result = workshop(hub, "create", str(path))
    assert result.returncode == 0, result.stderr
    try:
        code = re.search(r"event code: (\S+)", result.stdout).group(1)
        client, r = course_login(hub, "early bird", code)
        client.close()
        assert r.status_code == 403
        assert f"The course {spec['name']} runs from {starts:%Y-%m-%d} 13:00 to 18:10" in r.text
    finally:
        assert workshop(hub, "end", spec["name"]).returncode == 0
        run("userdel", "--remove", f"{spec['account_prefix']}01", check=False)


def test_end_leaves_nothing_behind(hub, course):
    participant = course["accounts"][1]
    home = Path(pwd.getpwnam(participant).pw_dir)
    (home / "my-notes.txt").write_text("what I learnt\n")
    entry = pwd.getpwnam(participant)
    os.chown(home / "my-notes.txt", entry.pw_uid, entry.pw_gid)
    assert hub.spawn(participant, {"profile": "course"}).status_code in (201, 202)
    hub.wait_ready(participant)
    # A process of a participant outside Slurm (e.g. left over from a terminal).
    subprocess.Popen(["sudo", "-u", participant, "sleep", "600"], start_new_session=True)

    result = workshop(hub, "end", course["name"])
    assert result.returncode == 0, result.stderr

    accounts = course["accounts"]
    assert squeue(f"--user={','.join(accounts)}", "--format=%i %T") == ""  # none pending or running
    assert run("pgrep", "--uid", ",".join(accounts), check=False).stdout == ""
    for name in accounts:  # the site keeps them locked (retention: lock), their homes kept
        assert pwd.getpwnam(name).pw_shell == "/usr/sbin/nologin"
        assert hub.api("GET", f"/users/{name}").status_code == 404
    assert hub.api("GET", f"/groups/{course['group']}").status_code == 404
    assert workshop_api(hub, "GET", f"/werkbank/course-roles/{course['name']}").status_code == 404
    assert "ReservationName" not in run("scontrol", "show", "reservation", check=False).stdout
    # Logins with the code are over; the trainer got the participants' work.
    client, r = course_login(hub, "Participant 0", course["code"])
    client.close()
    assert r.status_code == 403
    handed = re.search(r"participants' work: (\S+)", result.stdout).group(1)
    assert Path(handed).parent == Path(pwd.getpwnam("alice").pw_dir) / "werkbank-courses"
    assert Path(handed).stat().st_uid == pwd.getpwnam("alice").pw_uid
    with tarfile.open(handed) as tar:
        assert tar.extractfile(f"{participant}/my-notes.txt").read() == b"what I learnt\n"
    Path(handed).unlink()
    for name in accounts:
        run("userdel", "--remove", name, check=False)
