"""environment.yml (conda sites) and the pip requirements must name the same pins.

conda cannot be installed on the CI machines, so this is the check that keeps both honest.
"""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# conda-forge names that differ from the PyPI names.
CONDA_TO_PIP = {"pytorch": "torch"}
# conda-only entries (no pip counterpart): the interpreter, Node and the proxy, pip itself.
CONDA_ONLY = {"python", "nodejs", "configurable-http-proxy", "pip"}


def pip_pins() -> dict[str, str]:
    pins = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
                assert m, f"{name}: {line!r} is not pinned with =="
                pins[m.group(1).lower()] = m.group(2)
    return pins


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip section: packages conda-forge does not have
            for line in dep["pip"]:
                if not line.startswith("-e "):
                    m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
                    assert m, f"environment.yml pip section: {line!r} is not pinned with =="
                    pins[m.group(1).lower()] = m.group(2)
            continue
        # name==version, or name=version=build (a single '=' alone would match any 2.13.0*)
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:==([^=\s]+)|=([^=\s]+)=(\S+))?", dep.strip())
        assert m, f"environment.yml: cannot read {dep!r}"
        name = m.group(1).lower()
        if name in CONDA_ONLY:
            continue
        version = m.group(2) or m.group(3)
        assert version, f"environment.yml: {name} is not pinned"
        pins[CONDA_TO_PIP.get(name, name)] = version
    return pins


def test_conda_and_pip_pin_the_same_packages_and_versions():
    assert conda_pins() == pip_pins()


def test_required_pins():
    pins = pip_pins()
    assert pins["torch"] == "2.13.0"  # the CPU wheel on disk; unpinned pulls a CUDA build
    assert pins["mlflow"] == "3.17.2"  # 3.18's mlflow-skinny is not served


def test_conda_env_installs_the_project_packages():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ./core" in pip_section
    assert "-e ./spawner" in pip_section
    assert "-e ./extensions" in pip_section


def test_sessions_start_without_the_slow_iri_checker():
    """deploy/install.sh removes rfc3987-syntax (0.6 CPU s of every server's start); jsonschema
    still checks the formats Jupyter's schemas use, in a fresh interpreter as a server would."""
    import subprocess
    import sys

    code = (
        "import sys, jsonschema, jupyter_events.validators\n"
        "assert 'rfc3987_syntax' not in sys.modules, 'rfc3987_syntax was imported'\n"
        "checker = jsonschema.Draft7Validator.FORMAT_CHECKER\n"
        "assert not checker.conforms('no date', 'date') and checker.conforms('2027-01-20', 'date')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
