"""No secret in a managed service's ``environment``: JupyterHub keeps it in its database (the
services table), and so in every dump and backup. The hub writes each service's secrets at every
start into a file private to the service's account (``apply.write_service_secrets``); the proxy
and the auth module inside MLflow read it (``WERKBANK_MLFLOW_SECRETS``), and MLflow's server
starts through a launcher that sets what MLflow and libpq read from the environment only.

The same with a real hub, its database and PostgreSQL: tests/integration/test_mlflow_postgres.py
and test_mlflow_service.py.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from werkbank_spawner.site import SiteConfigError, apply, prepare_state, services, validate
from werkbank_spawner.tracking import auth

PASSWORD = "db p@ss:w/rd ü"
#: Names that say "secret"; such a variable may only name a file.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|PASS", re.IGNORECASE)


@pytest.fixture(autouse=True)
def hub_not_root(monkeypatch):
    """A hub that runs MLflow as its own account: no service account needed on this machine."""
    monkeypatch.setattr(services, "running_as_root", lambda: False)


def site_data(tmp_path: Path, *, internal_ssl: bool = False, **mlflow: object) -> dict:
    password = tmp_path / "mlflow-db-password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    password.chmod(0o600)
    return {
        "hub": {"data_dir": str(tmp_path / "state" / "hub"), "internal_ssl": internal_ssl},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {
            "mlflow": {
                "backend_store_uri": "postgresql://werkbank_mlflow@db.cluster/mlflow",
                "db_password_file": str(password),
                **mlflow,
            }
        },
        "workshops": {"enabled": True},
    }


def known_secrets() -> list[str]:
    """Every secret value the hub gives its services (the same for the life of this process)."""
    return [*(services.process_secret(p) for p in ("signing", "flask", "admin", "workshop")), PASSWORD]


def applied_services(data: dict, site_file: str | None = None) -> dict[str, dict]:
    c = Config()
    apply(c, validate(data), config_dir="/etc/werkbank", site_file=site_file)
    return {s["name"]: s for s in c.JupyterHub.services}


@pytest.mark.parametrize("internal_ssl", [False, True], ids=["plain", "internal_ssl"])
def test_no_service_carries_a_secret_in_its_environment_or_command(tmp_path, internal_ssl):
    site_file = tmp_path / "site.yaml"
    found = applied_services(site_data(tmp_path, internal_ssl=internal_ssl), site_file=str(site_file))
    assert set(found) == {"mlflow-server", "mlflow", "idle-culler", "werkbank-workshop"}
    for name, service in found.items():
        # What JupyterHub would store: the environment as JSON (a callable value as its str).
        stored = json.dumps({k: str(v) for k, v in service.get("environment", {}).items()})
        command = " ".join(service.get("command", []))
        for secret in known_secrets():
            assert secret not in stored, (name, secret)
            assert secret not in command, (name, secret)
        for variable, value in service.get("environment", {}).items():
            if SECRET_NAME.search(variable):
                assert os.path.isabs(str(value)), (name, variable, value)
    data_dir = tmp_path / "state" / "hub"
    server, proxy = found["mlflow-server"], found["mlflow"]
    assert server["environment"]["WERKBANK_MLFLOW_SECRETS"] == str(
        services.service_secrets_path(data_dir, "mlflow-server")
    )
    assert proxy["environment"]["WERKBANK_MLFLOW_SECRETS"] == str(
        services.service_secrets_path(data_dir, "mlflow")
    )
    # The server starts through the launcher, which reads the server's file.
    launcher = server["command"][: server["command"].index("--") + 1]
    assert launcher == [
        sys.executable,
        "-I",
        "-m",
        "werkbank_spawner.tracking.server_launcher",
        server["environment"]["WERKBANK_MLFLOW_SECRETS"],
        "--",
    ]
    assert server["command"][len(launcher) :][1:3] == ["server", "--host"]
    # The workshop service's token is JupyterHub's api_token (never stored, only its hash).
    assert found["werkbank-workshop"]["api_token"] == services.process_secret("workshop")


def test_without_secrets_no_launcher_and_no_file(tmp_path):
    data = site_data(tmp_path, permissions=False)
    del data["tracking"]["mlflow"]["db_password_file"]
    found = applied_services(data)
    assert found["mlflow-server"]["command"][0].endswith("/mlflow")
    for name in ("mlflow-server", "mlflow"):
        assert "WERKBANK_MLFLOW_SECRETS" not in found[name]["environment"], name


def test_the_hub_writes_each_services_secrets_into_a_private_file(tmp_path):
    data = site_data(tmp_path)
    prepare_state(validate(data), config_dir="/etc/werkbank")
    data_dir = tmp_path / "state" / "hub"
    server_file = services.service_secrets_path(data_dir, "mlflow-server")
    proxy_file = services.service_secrets_path(data_dir, "mlflow")
    for path in (server_file, proxy_file):
        info, folder = path.lstat(), path.parent.lstat()
        assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o600), path
        assert (folder.st_uid, folder.st_mode & 0o777) == (os.geteuid(), 0o700), path
        # Outside MLflow's own folder (its files are backed up).
        assert services.mlflow_dir(data_dir) not in path.parents
    key = services.process_secret("signing")
    assert auth.read_secrets(server_file) == {
        "signing_key": key,
        "environment": {
            "MLFLOW_FLASK_SERVER_SECRET_KEY": services.process_secret("flask"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": services.process_secret("admin"),
            "PGPASSWORD": PASSWORD,
        },
    }
    assert auth.read_secrets(proxy_file) == {"signing_key": key}
    # Without permission checks and a password nothing is secret: the files of before are gone.
    del data["tracking"]["mlflow"]["db_password_file"]
    data["tracking"]["mlflow"]["permissions"] = False
    prepare_state(validate(data), config_dir="/etc/werkbank")
    assert not server_file.exists() and not proxy_file.exists()


def test_a_link_planted_in_the_folder_is_replaced_never_followed(tmp_path):
    data = site_data(tmp_path)
    path = services.service_secrets_path(tmp_path / "state" / "hub", "mlflow")
    path.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    path.symlink_to(elsewhere)
    prepare_state(validate(data), config_dir="/etc/werkbank")
    assert elsewhere.read_text() == "untouched"
    assert not path.is_symlink()
    assert auth.read_secrets(path) == {"signing_key": services.process_secret("signing")}
    # A link in place of a service's folder stops the hub.
    server_folder = path.parent.parent / "mlflow-server"
    for child in server_folder.iterdir():
        child.unlink()
    server_folder.rmdir()
    (tmp_path / "other").mkdir()
    server_folder.symlink_to(tmp_path / "other")
    with pytest.raises(SiteConfigError) as info:
        prepare_state(validate(data), config_dir="/etc/werkbank")
    assert info.value.path == "hub.data_dir"
    assert list((tmp_path / "other").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files to another account")
def test_as_root_the_files_are_the_service_accounts(tmp_path, monkeypatch):
    try:
        account = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no account nobody")
    module = sys.modules["werkbank_spawner.site.apply"]  # the package's `apply` is the function
    monkeypatch.setattr(module, "mlflow_service_account", lambda *a, **k: account)
    prepare_state(validate(site_data(tmp_path)), config_dir="/etc/werkbank")
    path = services.service_secrets_path(tmp_path / "state" / "hub", "mlflow-server")
    for p in (path, path.parent):
        assert p.lstat().st_uid == account.pw_uid, p
    assert (path.parent.parent.lstat().st_uid, path.parent.parent.lstat().st_mode & 0o777) == (0, 0o755)


# --- the readers -------------------------------------------------------------------------------


def secrets_file(tmp_path: Path, content: dict, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.json"
    path.write_text(services.secrets_text(content))
    path.chmod(mode)
    return path


LAUNCHER = [sys.executable, "-I", "-m", "werkbank_spawner.tracking.server_launcher"]
#: What the launched program prints: the variable, and its own command line.
SHOW = "import os; print(os.environ.get('PGPASSWORD')); print(open('/proc/self/cmdline').read())"


def test_the_launcher_sets_the_files_environment_and_nothing_shows_in_its_command_line(tmp_path):
    path = secrets_file(tmp_path, {"signing_key": "k", "environment": {"PGPASSWORD": PASSWORD}})
    result = subprocess.run(
        [*LAUNCHER, str(path), "--", sys.executable, "-c", SHOW],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": "before"},
        check=True,
    )
    password, cmdline = result.stdout.splitlines()[:2]
    assert password == PASSWORD
    assert PASSWORD not in cmdline and "k" not in cmdline.split("\0")


@pytest.mark.parametrize("kind", ["readable by others", "a link", "not JSON of secrets"])
def test_the_launcher_refuses_a_file_that_is_not_private_and_runs_nothing(tmp_path, kind):
    path = secrets_file(
        tmp_path, {"environment": {"PGPASSWORD": PASSWORD}}, 0o644 if kind.startswith("r") else 0o600
    )
    if kind == "a link":
        link = tmp_path / "link.json"
        link.symlink_to(path)
        path = link
    elif kind == "not JSON of secrets":
        path.write_text(json.dumps({"environment": {"PGPASSWORD": 1}}))
    result = subprocess.run(
        [*LAUNCHER, str(path), "--", sys.executable, "-c", "print('ran')"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "ran" not in result.stdout
    assert "cannot read the secrets file" in result.stderr
    assert PASSWORD not in result.stderr


def test_the_signing_key_comes_from_the_file_the_environment_names(tmp_path, monkeypatch):
    path = secrets_file(tmp_path, {"signing_key": "from-the-file"})
    monkeypatch.setenv(auth.KEY_ENV, "from-the-environment")
    monkeypatch.setenv(auth.SECRETS_ENV, str(path))
    auth._signing_key_from.cache_clear()
    assert auth.signing_key() == b"from-the-file"
    # A proxy or server started by hand (the tests' own MLflow server) has it in the environment.
    monkeypatch.delenv(auth.SECRETS_ENV)
    assert auth.signing_key() == b"from-the-environment"
    path.chmod(0o640)
    monkeypatch.setenv(auth.SECRETS_ENV, str(path))
    auth._signing_key_from.cache_clear()
    with pytest.raises(ValueError, match="not private"):
        auth.signing_key()
    auth._signing_key_from.cache_clear()
