"""The hub's database in the site file: ``hub.db_url`` (SQLite or PostgreSQL, never with a
password in it) and ``hub.db_password_file`` (the password, in a file only the hub may read).

The same hub on a real PostgreSQL, restarted with its users, servers and Slurm job ids, is
tests/integration/test_hub_postgres.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url
from traitlets.config import Config

from werkbank_spawner.site import SiteConfigError, apply, rules, validate
from werkbank_spawner.site.cli import main

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "hub_config" / "jupyterhub_config.py"
#: Characters a URL must escape, and % (which alembic's ini file must escape again).
PASSWORD = "p@ss:w/rd?#%25 x'"
PG = "postgresql+psycopg://jupyterhub@db.cluster:5432/jupyterhub"


def site(tmp_path: Path, **hub: str) -> dict:
    """A valid site with ``hub`` keys; no MLflow and no courses, so that applying it needs no
    service account and reads no course store."""
    return {
        "hub": {"data_dir": str(tmp_path / "hub"), **hub},
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
        "tracking": {"mlflow": {"manage": False, "proxy": False}},
        "workshops": {"enabled": False},
    }


def db_url(data: dict) -> str:
    c = Config()
    apply(c, validate(data), config_dir="/etc/werkbank")
    return c.JupyterHub.db_url


def password_file(tmp_path: Path, text: str = PASSWORD + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "hub-db-password"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def error_of(data: dict) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as info:
        db_url(data)
    return info.value


def test_without_db_url_the_hub_keeps_sqlite_in_its_data_dir(tmp_path):
    assert db_url(site(tmp_path)) == f"sqlite:///{tmp_path}/hub/jupyterhub.sqlite"
    assert db_url(site(tmp_path, db_url="sqlite:////srv/hub.sqlite")) == "sqlite:////srv/hub.sqlite"


def test_postgresql_without_a_password_file_is_used_as_written(tmp_path):
    # Peer authentication over a Unix socket, or the hub account's ~/.pgpass: libpq's business.
    url = "postgresql+psycopg://jupyterhub@/jupyterhub?host=/var/run/postgresql"
    assert db_url(site(tmp_path, db_url=url)) == url


def test_the_password_from_its_file_reaches_the_url_escaped(tmp_path):
    path = password_file(tmp_path, PASSWORD + "\nignored second line\n")
    given = db_url(site(tmp_path, db_url=PG + "?sslmode=verify-full", db_password_file=str(path)))
    url = make_url(given)
    assert url.password == PASSWORD
    assert (url.username, url.host, url.port, url.database) == (
        "jupyterhub",
        "db.cluster",
        5432,
        "jupyterhub",
    )
    assert url.drivername == "postgresql+psycopg"
    assert dict(url.query) == {"sslmode": "verify-full"}
    assert PASSWORD not in given  # escaped, so that no character of it is read as URL syntax


def test_a_password_file_may_be_read_only(tmp_path):
    path = password_file(tmp_path, "secret", mode=0o400)
    assert make_url(db_url(site(tmp_path, db_url=PG, db_password_file=str(path)))).password == "secret"


@pytest.mark.parametrize(
    ("hub", "message"),
    [
        ({"db_url": "postgresql+psycopg://jupyterhub:p@ssword@db/jupyterhub"}, "holds a password"),
        ({"db_url": "postgresql+psycopg://jupyterhub:" + PASSWORD + "@db/jupyterhub"}, "not a database URL"),
        ({"db_url": "postgresql://jupyterhub@db/jupyterhub?password=" + PASSWORD}, "holds a password"),
        ({"db_url": "mysql+pymysql://jupyterhub@db/jupyterhub"}, "mysql is not supported"),
        ({"db_url": "db.cluster/jupyterhub"}, "not a database URL"),
        ({"db_url": "postgresql://jupyterhub@db.cluster"}, "name the database"),
        ({"db_url": "sqlite:///jupyterhub.sqlite"}, "sqlite needs an absolute path"),
        ({"db_url": "sqlite:///:memory:"}, "sqlite needs an absolute path"),
    ],
)
def test_database_urls_werkbank_refuses(tmp_path, hub, message):
    error = error_of(site(tmp_path, **hub))
    assert error.path == "hub.db_url"
    assert message in error.message
    assert "p@ss" not in str(error)  # the message never repeats the password it refuses


@pytest.mark.parametrize(
    ("hub", "message"),
    [
        ({"db_password_file": "/etc/werkbank/hub-db-password"}, "only used with a postgresql hub.db_url"),
        (
            {"db_url": "sqlite:////srv/hub.sqlite", "db_password_file": "/etc/werkbank/hub-db-password"},
            "only used with a postgresql hub.db_url",
        ),
        ({"db_url": PG, "db_password_file": "hub-db-password"}, "must be an absolute path"),
    ],
)
def test_password_files_werkbank_refuses_by_their_name(tmp_path, hub, message):
    error = error_of(site(tmp_path, **hub))
    assert error.path == "hub.db_password_file"
    assert message in error.message


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o640, "secret\n", "may be read or changed by others than its owner (mode 0640); chmod 600"),
        (0o604, "secret\n", "(mode 0604)"),
        (0o620, "secret\n", "(mode 0620)"),
        (0o600, "", "is empty"),
        (0o600, "\nsecret\n", "is empty"),
    ],
)
def test_password_files_werkbank_refuses_by_their_content_or_mode(tmp_path, mode, text, message):
    path = password_file(tmp_path, text, mode)
    error = error_of(site(tmp_path, db_url=PG, db_password_file=str(path)))
    assert error.path == "hub.db_password_file"
    assert message in error.message
    assert "secret" not in error.message


def test_a_password_file_that_is_missing_or_a_folder_is_refused(tmp_path):
    error = error_of(site(tmp_path, db_url=PG, db_password_file=str(tmp_path / "absent")))
    assert (error.path, error.message) == (
        "hub.db_password_file",
        f"cannot read {tmp_path / 'absent'}: No such file or directory",
    )
    error = error_of(site(tmp_path, db_url=PG, db_password_file=str(tmp_path)))
    assert error.path == "hub.db_password_file"


def test_a_database_driver_that_is_not_installed_stops_the_hub(tmp_path, monkeypatch):
    real = rules.importlib.util.find_spec
    monkeypatch.setattr(
        rules.importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    error = error_of(site(tmp_path, db_url=PG))
    assert error.path == "hub.db_url"
    assert "needs the Python module psycopg (pip package psycopg[binary])" in error.message


def test_werkbank_site_check_reads_the_password_file_as_the_hub_would(tmp_path, capsys):
    path = password_file(tmp_path, "secret\n", mode=0o644)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site(tmp_path, db_url=PG, db_password_file=str(path))))
    assert main(["check", str(site_file)]) == 1
    assert capsys.readouterr().err == (
        f"FATAL: hub.db_password_file: {path} may be read or changed by others than its owner "
        f"(mode 0644); chmod 600 {path}\n"
    )
    path.chmod(0o600)
    assert main(["check", str(site_file)]) == 0


# Runs hub_config/jupyterhub_config.py as JupyterHub's loader does and prints the database URL.
RUNNER = """
import json, sys
from traitlets.config import Config
config = Config()
path = sys.argv[1]
exec(compile(open(path).read(), path, "exec"), {"get_config": lambda: config, "__file__": path})
print(json.dumps(config.JupyterHub.db_url))
"""


def run_hub_config(tmp_path: Path, data: dict) -> subprocess.CompletedProcess:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(HUB_CONFIG)],
        env={**os.environ, "WERKBANK_SITE_CONFIG": str(site_file)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_hub_config_gives_jupyterhub_the_url_with_the_password(tmp_path):
    path = password_file(tmp_path)
    result = run_hub_config(tmp_path, site(tmp_path, db_url=PG, db_password_file=str(path)))
    assert result.returncode == 0, result.stderr
    assert make_url(json.loads(result.stdout)).password == PASSWORD


def test_the_hub_config_stops_the_hub_on_a_password_in_the_site_file(tmp_path):
    result = run_hub_config(tmp_path, site(tmp_path, db_url="postgresql://jupyterhub:hunter2@db/jupyterhub"))
    assert result.returncode == 1
    assert result.stderr.startswith("FATAL: hub.db_url: holds a password")
    assert "hunter2" not in result.stderr
