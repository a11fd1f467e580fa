"""Fixtures shared by the test folders."""

import pytest

from tests.mlflow_server import MlflowServer


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
