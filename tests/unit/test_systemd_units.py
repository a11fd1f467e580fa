"""The systemd units in deploy/systemd/ pass ``systemd-analyze verify`` without a word: no unknown
key, no bad value, every ExecStart binary present (the environment's, as deploy/install.sh
installs it). systemd prints problems and still exits 0, so any output is a failure.

The units name /opt/werkbank/venv (install.sh's default prefix); a test environment elsewhere is
substituted into a copy. Runs without systemd as PID 1 (a container, CI): verify reads files only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
INSTALLED_VENV = "/opt/werkbank/venv"


def test_the_units_are_there():
    assert [unit.name for unit in UNITS] == [
        "werkbank-hub.service",
        "werkbank-mlflow.service",
        "werkbank-proxy.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_systemd_analyze_verify_has_nothing_to_say(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd; deploy/install.sh --dev)")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_VENV, sys.prefix))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_hub_finds_alembic_and_the_proxy_by_name():
    """JupyterHub runs `alembic` (a new database, `jupyterhub upgrade-db`) and
    `configurable-http-proxy` by name: the environment's bin folder comes first on PATH."""
    hub = (REPO / "deploy" / "systemd" / "werkbank-hub.service").read_text().splitlines()
    (path,) = [line.split("=", 2)[2] for line in hub if line.startswith("Environment=PATH=")]
    folders = path.split(":")
    assert folders[0] == f"{INSTALLED_VENV}/bin"
    assert Path(sys.prefix, "bin", "alembic").exists()
    assert shutil.which("configurable-http-proxy", path=":".join(folders[1:])), folders
