"""Fixtures shared by the test folders: real services, each started once per test session."""

import subprocess
from pathlib import Path

import pytest

from tests import cluster
from tests.mlflow_server import MlflowServer
from tests.multinode import multinode_cluster  # noqa: F401 (the session fixture `multinode`, set up once)
from tests.postgres import Postgres
from tests.services import ServiceError

#: Figures tests measured on the way, printed at the end of the run (see ``report_figure``).
_FIGURES: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def report_figure():
    """``report_figure(name, text)``: a time or rate a test measured, printed in the run's summary.

    Tests assert behaviour, never speed: on a loaded 2-core machine a timed assertion fails for
    reasons that are not the code's. Targets live in ``benchmarks/``; this only shows the figures.
    """

    def record(name: str, text: str) -> None:
        _FIGURES.append((name, text))

    return record


def pytest_collection_modifyitems(items):
    """The browser tests run last. Playwright's synchronous API keeps an event loop running in the
    main thread from its first use until the session ends, and ``asyncio.run()`` (the lab tests,
    pytest-asyncio's tests) refuses to start inside a running loop."""
    browser = Path(__file__).resolve().parent / "browser"
    items.sort(key=lambda item: Path(str(item.path)).is_relative_to(browser))


#: Seconds spent in each test folder (setup, call and teardown): the template suite has a budget
#: (15 minutes on 2 cores, issue 18), reported with the figures.
_FOLDER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    parts = report.nodeid.split("/")
    if len(parts) > 2 and parts[0] == "tests":
        _FOLDER_SECONDS[parts[1]] = _FOLDER_SECONDS.get(parts[1], 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if "notebooks" in _FOLDER_SECONDS:
        total = _FOLDER_SECONDS["notebooks"]
        _FIGURES.append(("the template suite (tests/notebooks)", f"{total:.0f} s (budget 900 s)"))
    if _FOLDER_SECONDS:
        folders = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in sorted(_FOLDER_SECONDS.items()))
        _FIGURES.append(("time per test folder", folders))
    if _FIGURES:
        terminalreporter.section("figures measured by the tests (reported, not asserted)")
        for name, text in _FIGURES:
            terminalreporter.write_line(f"{name}: {text}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite, proxied artifacts) for the session, as the hub runs it.

    A server that does not come up fails the tests with its log; it never skips them.
    """
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start(timeout=120)
    except ServiceError as e:
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


@pytest.fixture(scope="session")
def slurm():
    """A running single-node Slurm cluster with the test users (tests/cluster.py)."""
    cluster.start_slurm()
    yield
    cluster.run("scancel", "--name=werkbank-jupyter", check=False)


@pytest.fixture(scope="session")
def hub(slurm, tmp_path_factory):
    """JupyterHub running the werkbank config against the real Slurm cluster, with the hub-managed
    MLflow, for tests/integration and tests/browser."""
    hub = cluster.make_hub(
        tmp_path_factory.mktemp("hub"),
        port=cluster.HUB_PORT,
        api_port=cluster.HUB_API_PORT,
        spawner="slurm",
        mlflow=True,
    )
    hub.start()
    yield hub
    for user in cluster.TEST_USERS:
        hub.api("DELETE", f"/users/{user}/server")
    hub.stop()
    cluster.run("scancel", "--name=werkbank-jupyter", check=False)
