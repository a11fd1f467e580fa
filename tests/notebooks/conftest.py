"""Fixtures for the template tests: the kernel's environment and the session's lifecycle of template runs."""

import pytest

from tests.notebooks.lifecycle import PROFILE, Lifecycle


def set_kernel_env(monkeypatch: pytest.MonkeyPatch, tracking_uri: str) -> None:
    """The environment papermill's kernel inherits: what werkbank's spawner sets, outside a Slurm job."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("WERKBANK_PROFILE", PROFILE)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    # The centre's details from the site file: absent, as in a session the hub did not start.
    monkeypatch.delenv("WERKBANK_CENTRE", raising=False)
    # The kernel runs without a display; an inherited MPLBACKEND could point at a GUI backend.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    # Templates never download; a model or tokenizer that is not on disk must fail, not hang on the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # MLflow's system metrics (templates.tracked_run) every half second instead of every 10: its monitor logs
    # a sample only after one interval, and a smoke run's training takes a second or two.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")


@pytest.fixture
def kernel_env(mlflow_server, monkeypatch):
    set_kernel_env(monkeypatch, mlflow_server.url)


@pytest.fixture(scope="session")
def lifecycle(mlflow_server, tmp_path_factory):
    """Runs each template once per session, after the templates whose MLflow output it reads."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_kernel_env(monkeypatch, mlflow_server.url)
        yield Lifecycle(mlflow_server.url, tmp_path_factory.mktemp("templates"))
