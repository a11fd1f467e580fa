"""Fixtures shared by the test folders."""

import subprocess

import pytest

from tests.mlflow_server import MlflowServer
from tests.postgres import Postgres


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite, proxied artifacts) for the session, as the hub runs it.

    A server that does not come up fails the tests with its log; it never skips them.
    """
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start(timeout=120)
    except RuntimeError as e:
        server.stop()
        pytest.fail(str(e))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster (Debian's binaries) for the session; see tests/postgres.py."""
    server = Postgres()
    try:
        server.start()
    except (RuntimeError, OSError, KeyError) as e:
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {e}")
    except subprocess.CalledProcessError as e:
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {e.cmd}: {e.stderr}")
    yield server
    server.stop()
