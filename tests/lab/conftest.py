import pytest

from tests.mlflow_server import MlflowServer


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow server for the session; fails (never skips) if it does not come up."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server
    server.stop()
