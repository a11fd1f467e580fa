"""The packages' boundaries: a session imports no hub-only code, and the shared core needs
nothing beyond the standard library (both the hub and every session import it)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HUB_ONLY = ("werkbank_spawner", "jupyterhub", "batchspawner")


#: The one module of the session package that builds on JupyterHub's single-user code (which a
#: server has when JupyterHub starts it, and only then is the module used).
SINGLE_USER_ONLY = ("werkbank_lab.dashboard_gate",)


def imported_after(package: str, skip: tuple[str, ...] = ()) -> set[str]:
    """Module names a fresh interpreter holds after importing every module of ``package`` but
    ``skip`` (top-level names, and jupyterhub's submodules in full)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"import {package}\n"
        f"for m in pkgutil.iter_modules({package}.__path__):\n"
        f"    if '{package}.' + m.name not in {skip!r}:\n"
        f"        importlib.import_module('{package}.' + m.name)\n"
        "names = {n if n.startswith('jupyterhub') else n.split('.')[0] for n in sys.modules}\n"
        "print(json.dumps(sorted(names)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return set(json.loads(out.stdout))


def test_a_session_imports_no_hub_only_code():
    assert imported_after("werkbank_lab", skip=SINGLE_USER_ONLY).isdisjoint(HUB_ONLY)
    # The gate takes JupyterHub's single-user side (and what it imports), never the hub's.
    with_gate = imported_after("werkbank_lab")
    assert with_gate.isdisjoint(
        {"werkbank_spawner", "batchspawner", "jupyterhub.app", "jupyterhub.apihandlers"}
    )
    assert "jupyterhub.singleuser" in with_gate


def test_the_core_needs_only_the_standard_library():
    modules = imported_after("werkbank_core") - {"werkbank_core"}
    third_party = {
        name for name in modules if name not in sys.stdlib_module_names and not name.startswith("_")
    }
    # What the interpreter itself loads at start (site-packages' .pth hooks) is not the core's doing.
    baseline = imported_after("json") - {"json"}
    assert third_party <= baseline


def test_package_dependencies_follow_the_boundaries():
    def dependencies(folder: str) -> set[str]:
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]
        return {
            req.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip()
            for req in project["dependencies"]
        }

    assert dependencies("core") == set()
    assert "werkbank-core" in dependencies("spawner")
    lab = dependencies("extensions")
    assert "werkbank-core" in lab
    assert lab.isdisjoint({"werkbank-spawner", "jupyterhub", "batchspawner"})
