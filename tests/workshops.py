"""What the workshop tests (integration and browser) share: the CLI as root runs it, course files,
the trainer's material repository."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import yaml

from tests.cluster import VENV_BIN, Hub, run

#: Participants of the tests' course.
PARTICIPANTS = 5
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'


def workshop(hub: Hub, *args: str) -> subprocess.CompletedProcess:
    """``werkbank-workshop ARGS --site <the hub's site file>`` as the hub's admin (root) runs it."""
    return run(
        str(VENV_BIN / "werkbank-workshop"), *args, "--site", hub.env["WERKBANK_SITE_CONFIG"], check=False
    )


def hub_data_dir(hub: Hub) -> Path:
    return Path(yaml.safe_load(Path(hub.env["WERKBANK_SITE_CONFIG"]).read_text())["hub"]["data_dir"])


def workshop_api(hub: Hub, method: str, path: str, **kw) -> httpx.Response:
    """The hub API with the workshop service's token (which the hub wrote for root)."""
    token = (hub_data_dir(hub) / "workshop-api-token").read_text().strip()
    return hub.api(method, path, token=token, **kw)


def write_course(tmp_path: Path, **changes) -> tuple[Path, dict]:
    now = datetime.now().replace(microsecond=0)
    course = {
        "name": f"itest-{secrets.token_hex(3)}",
        "trainers": ["alice"],
        "participants": PARTICIPANTS,
        "account_prefix": f"p{secrets.token_hex(2)}x",
        "profile": {"cpus": 1, "memory": "1G", "walltime": "30m"},
        "starts": (now - timedelta(minutes=1)).isoformat(),
        "ends": (now + timedelta(hours=1)).isoformat(),
        "grace": "10m",
        "reservation": True,
        **changes,
    }
    path = tmp_path / f"{course['name']}.yaml"
    path.write_text(yaml.safe_dump(course))
    return path, course


def as_alice(*argv: str, cwd: Path | None = None) -> None:
    """A git command as the trainer, who owns the course's material."""
    run(
        "sudo",
        "-u",
        "alice",
        "git",
        "-c",
        "user.name=Alice",
        "-c",
        "user.email=alice@example.org",
        *argv,
        cwd=cwd,
    )


NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'


def make_material() -> dict:
    """A bare repository owned by the trainer (alice) with a lesson, and a working copy."""
    root = Path(tempfile.mkdtemp(prefix="werkbank-material-"))
    os.chmod(root, 0o755)
    shutil.chown(root, "alice")
    repo, work = root / "course.git", root / "work"
    as_alice("init", "--quiet", "--bare", "--initial-branch=main", str(repo))
    as_alice("clone", "--quiet", str(repo), str(work))
    (work / "lesson.ipynb").write_text(NOTEBOOK)
    (work / "README.md").write_text("Welcome\n")
    run("chown", "-R", "alice", str(work))
    as_alice("add", ".", cwd=work)
    as_alice("commit", "--quiet", "-m", "lesson 1", cwd=work)
    as_alice("push", "--quiet", "origin", "main", cwd=work)
    return {"repo": str(repo), "work": work, "root": root}


def course_login(hub: Hub, nickname: str, code: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=hub.url, follow_redirects=True, timeout=30)
    client.get("/hub/login")
    r = client.post(
        "/hub/login", data={"username": nickname, "password": code, "_xsrf": client.cookies.get("_xsrf", "")}
    )
    return client, r
