"""The managed MLflow server's database password (``tracking.mlflow.db_password_file``): never in
``backend_store_uri`` or ``auth_database_uri``, read from a file only the hub may read, and given
to the MLflow server alone, as libpq's ``PGPASSWORD``, which its launcher sets from the server's
secrets file (never in a service's environment: JupyterHub keeps that in its database).

The same on a real PostgreSQL, with the server's two connections (runs, permissions) needing the
password: tests/integration/test_mlflow_postgres.py.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from werkbank_spawner.site import SiteConfigError, apply, prepare_state, services, validate
from werkbank_spawner.site.cli import main

#: Characters a URL or an ini file would read as syntax; none of them may matter here.
PASSWORD = "ml p@ss:w/rd?#%25 x'\\"
PG = "postgresql://werkbank_mlflow@db.cluster:5432/mlflow"
PG_AUTH = "postgresql+psycopg://werkbank_mlflow@db.cluster:5432/mlflow_auth?sslmode=verify-full"
KEY = "tracking.mlflow.db_password_file"


@pytest.fixture(autouse=True)
def hub_not_root(monkeypatch):
    """A hub that runs MLflow as its own account: no service account needed on this machine."""
    monkeypatch.setattr(services, "running_as_root", lambda: False)


def site(tmp_path: Path, **mlflow: object) -> dict:
    """A valid site whose managed MLflow (behind the proxy, with permissions) has ``mlflow``."""
    return {
        "hub": {"data_dir": str(tmp_path / "hub")},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {"mlflow": mlflow},
        "workshops": {"enabled": False},
    }


def password_file(tmp_path: Path, text: str = PASSWORD + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "mlflow-db-password"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def services_of(data: dict) -> dict[str, dict]:
    c = Config()
    apply(c, validate(data), config_dir="/etc/werkbank")
    return {s["name"]: s for s in c.JupyterHub.services}


def services_secrets_but_the_server(data_dir: Path) -> str:
    """Every secrets file the hub wrote but the MLflow server's, as one text."""
    folder = services.service_secrets_dir(data_dir)
    return "".join(p.read_text() for p in folder.glob("*/secrets.json") if p.parent.name != "mlflow-server")


def error_of(data: dict) -> SiteConfigError:
    """The error validating and applying ``data`` (what the hub does at start) raises."""
    with pytest.raises(SiteConfigError) as info:
        services_of(data)
    return info.value


def test_the_password_reaches_the_mlflow_server_alone_as_pgpassword(tmp_path):
    path = password_file(tmp_path, PASSWORD + "\nignored second line\n")
    data = site(tmp_path, backend_store_uri=PG, auth_database_uri=PG_AUTH, db_password_file=str(path))
    found = services_of(data)
    server = found["mlflow-server"]
    assert server["environment"]["MLFLOW_BACKEND_STORE_URI"] == PG
    # Nowhere else: not on a command line (ps), not in a service's environment (the hub's
    # database), not in the permission configuration the hub writes, not in the site file.
    for service in found.values():
        assert PASSWORD not in repr(service), service["name"]
    prepare_state(validate(data), config_dir="/etc/werkbank")
    secrets = services.service_secrets_path(tmp_path / "hub", "mlflow-server")
    assert server["environment"]["WERKBANK_MLFLOW_SECRETS"] == str(secrets)
    assert json.loads(secrets.read_text())["environment"]["PGPASSWORD"] == PASSWORD
    assert PASSWORD not in services_secrets_but_the_server(tmp_path / "hub")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(tmp_path / "mlflow" / "auth.ini")
    assert ini["mlflow"]["database_uri"] == PG_AUTH
    assert PASSWORD not in (tmp_path / "mlflow" / "auth.ini").read_text()
    assert PASSWORD not in yaml.safe_dump(data)


def test_without_a_password_file_the_server_gets_no_password(tmp_path):
    # Peer authentication over a Unix socket, or the service account's ~/.pgpass: libpq's business.
    data = site(tmp_path, backend_store_uri=PG)
    services_of(data)
    prepare_state(validate(data), config_dir="/etc/werkbank")
    secrets = services.service_secrets_path(tmp_path / "hub", "mlflow-server")
    assert "PGPASSWORD" not in json.loads(secrets.read_text())["environment"]


@pytest.mark.parametrize(
    ("valid", "uri"),
    [
        ("one used by the server", PG),
        ("one the server does not use", "sqlite:////srv/mlflow.db"),
    ],
)
def test_a_password_file_may_serve_either_database(tmp_path, valid, uri):
    path = password_file(tmp_path, "secret", mode=0o400)
    data = site(tmp_path, backend_store_uri=uri, auth_database_uri=PG_AUTH, db_password_file=str(path))
    services_of(data)
    prepare_state(validate(data), config_dir="/etc/werkbank")
    secrets = services.service_secrets_path(tmp_path / "hub", "mlflow-server")
    assert json.loads(secrets.read_text())["environment"]["PGPASSWORD"] == "secret"


@pytest.mark.parametrize(
    ("key", "uri", "others"),
    [
        ("backend_store_uri", "postgresql://mlflow:p@ssword@db/mlflow", {}),
        ("backend_store_uri", "postgresql+psycopg://mlflow:" + PASSWORD + "@db/mlflow", {}),
        ("backend_store_uri", "postgresql://mlflow@db/mlflow?sslmode=require&password=p@ss", {}),
        ("backend_store_uri", "mysql+pymysql://mlflow:p@ss@db/mlflow", {}),
        ("auth_database_uri", "postgresql://mlflow:p@ss@db/mlflow_auth", {}),
        # Unused, but still a password in the site file.
        ("backend_store_uri", "postgresql://mlflow:p@ss@db/mlflow", {"manage": False}),
        ("auth_database_uri", "postgresql://mlflow:p@ss@db/auth", {"permissions": False}),
    ],
)
def test_a_password_in_either_uri_is_refused(tmp_path, key, uri, others):
    error = error_of(site(tmp_path, **{key: uri}, **others))
    assert error.path == f"tracking.mlflow.{key}"
    assert "holds a password" in error.message
    assert KEY in error.message  # where the password belongs
    assert "p@ss" not in str(error)  # the message never repeats the password it refuses


SQLITE = "sqlite:////srv/mlflow.db"
PG8000 = "postgresql+pg8000://mlflow@db/mlflow"


@pytest.mark.parametrize(
    ("mlflow", "key", "message"),
    [
        ({"backend_store_uri": PG, "db_password_file": "db-password"}, KEY, "must be an absolute path"),
        ({"manage": False, "backend_store_uri": PG, "db_password_file": "/x"}, KEY, "only used with manage"),
        ({"db_password_file": "/x"}, KEY, "a postgresql backend_store_uri or auth_database_uri"),
        (
            # The auth database is only used with permissions.
            {"backend_store_uri": SQLITE, "auth_database_uri": PG, "permissions": False,
             "db_password_file": "/x"},
            KEY,
            "only used with a postgresql backend_store_uri of the managed server",
        ),
        (
            {"backend_store_uri": PG8000, "db_password_file": "/x"},
            "tracking.mlflow.backend_store_uri",
            "does not connect through libpq",
        ),
        (
            {"auth_database_uri": PG8000, "db_password_file": "/x"},
            "tracking.mlflow.auth_database_uri",
            "does not connect through libpq",
        ),
    ],
)  # fmt: skip
def test_password_files_werkbank_refuses_by_their_name(tmp_path, mlflow, key, message):
    error = error_of(site(tmp_path, **mlflow))
    assert error.path == key
    assert message in error.message


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o640, "secret\n", "may be read or changed by others than its owner (mode 0640); chmod 600"),
        (0o604, "secret\n", "(mode 0604)"),
        (0o600, "", "is empty"),
        (0o600, "\nsecret\n", "is empty"),
    ],
)
def test_password_files_werkbank_refuses_by_their_content_or_mode(tmp_path, mode, text, message):
    path = password_file(tmp_path, text, mode)
    error = error_of(site(tmp_path, backend_store_uri=PG, db_password_file=str(path)))
    assert error.path == KEY
    assert message in error.message
    assert "secret" not in error.message


def test_a_password_file_that_is_missing_is_refused(tmp_path):
    error = error_of(site(tmp_path, backend_store_uri=PG, db_password_file=str(tmp_path / "absent")))
    assert error.path == KEY
    assert "cannot read" in error.message


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another account needs root")
def test_a_password_file_of_another_account_is_refused(tmp_path):
    # Private to its owner, but its owner is not the hub: whoever that is knows the password.
    path = password_file(tmp_path, "secret\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    error = error_of(site(tmp_path, backend_store_uri=PG, db_password_file=str(path)))
    assert error.path == KEY
    assert "belongs to nobody, not to the hub's account root; chown root" in error.message


def test_werkbank_site_check_stops_at_a_readable_password_file(tmp_path, capsys):
    path = password_file(tmp_path, PASSWORD + "\n", mode=0o644)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site(tmp_path, backend_store_uri=PG, db_password_file=str(path))))
    assert main(["check", str(site_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"FATAL: {KEY}: ")
    assert PASSWORD not in err
    path.chmod(0o600)
    assert main(["check", str(site_file)]) == 0
