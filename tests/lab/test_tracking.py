"""werkbank_lab.tracking against real MLflow servers: batching, and nothing lost in an outage."""

import logging
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from werkbank_lab.tracking import (
    MetricLogger,
    configure,
    experiment_name,
    model_name,
    session_tags,
    user_folder,
)


def new_run(url: str, name: str = "werkbank-tracking-tests") -> str:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    return client.create_run(experiment_id).info.run_id


def history(url: str, run_id: str, key: str) -> list:
    return MlflowClient(url).get_metric_history(run_id, key)


def test_ten_thousand_metrics_in_a_few_requests(mlflow_server, tmp_path):
    run_id = new_run(mlflow_server.url)
    started = time.perf_counter()
    with MetricLogger(run_id, tracking_uri=mlflow_server.url, spool_dir=tmp_path) as logger:
        for step in range(5000):
            logger.log_metrics({"loss": 1 / (step + 1), "accuracy": step / 5000}, step=step)
        logging_time = time.perf_counter() - started
    assert logger.sent == 10_000
    assert logger.requests <= 30  # batches of up to 1,000, not one request per value
    assert logging_time < 1.0  # queueing 10,000 values is memory work, not network work
    losses = history(mlflow_server.url, run_id, "loss")
    assert len(losses) == 5000
    assert sorted(m.step for m in losses) == list(range(5000))
    assert not list(tmp_path.iterdir())  # nothing left in the spool


def test_a_training_loop_costs_about_one_request_per_flush_interval(mlflow_server, tmp_path):
    run_id = new_run(mlflow_server.url)
    with MetricLogger(
        run_id, tracking_uri=mlflow_server.url, spool_dir=tmp_path, flush_interval=0.5
    ) as logger:
        for step in range(100):  # ~1.2 s of "training", one value every ~12 ms
            logger.log("loss", step, step=step)
            time.sleep(0.012)
    assert logger.sent == 100
    assert logger.requests <= 5  # not one request per step


@pytest.fixture
def own_server(tmp_path):
    """An MLflow server of the test's own, which it may stop and start again (same port, same stores)."""
    server = MlflowServer(tmp_path / "server")
    server.start()
    yield server
    server.stop()


def test_outage_loses_nothing_and_warns_once(own_server, tmp_path, caplog):
    server = own_server
    statuses = []
    run_id = new_run(server.url)
    logger = MetricLogger(
        run_id,
        tracking_uri=server.url,
        spool_dir=tmp_path / "spool",
        flush_interval=0.2,
        retry_interval=0.5,
        timeout=2,
        on_status=statuses.append,
    )
    with caplog.at_level(logging.WARNING, logger="werkbank_lab.tracking"):
        for step in range(100):
            logger.log("loss", step, step=step)
        assert logger.flush()
        server.stop()  # the tracking server goes away mid-training
        for step in range(100, 300):
            logger.log("loss", step, step=step)
            if step % 50 == 0:
                logger.flush(10)
        assert not logger.flush(10)  # spooled, not delivered
        assert logger.offline
        assert (tmp_path / "spool" / f"{run_id}.jsonl").exists()
        server.start()  # back, same stores
        for step in range(300, 350):
            logger.log("loss", step, step=step)
        assert logger.close(60)
    offline_warnings = [r for r in caplog.records if "not answering" in r.getMessage()]
    assert len(offline_warnings) == 1
    assert statuses == ["offline", "online"]
    steps = sorted(m.step for m in history(server.url, run_id, "loss"))
    assert steps == list(range(350))
    assert not (tmp_path / "spool" / f"{run_id}.jsonl").exists()


def test_close_delivers_what_waited_for_a_retry_and_says_so(own_server, tmp_path):
    """close() makes a last attempt whatever the retry schedule, and reports that attempt's result."""
    server = own_server
    run_id = new_run(server.url)
    server.stop()
    logger = MetricLogger(
        run_id,
        tracking_uri=server.url,
        spool_dir=tmp_path / "spool",
        flush_interval=0.1,
        retry_interval=3600,
        timeout=2,
    )
    logger.log("loss", 1.0, step=0)
    assert not logger.flush(10) and logger.offline
    server.start()
    logger.log("loss", 2.0, step=1)
    assert logger.close(60)  # the next retry was an hour away; closing delivered anyway
    assert sorted(m.step for m in history(server.url, run_id, "loss")) == [0, 1]


def test_configure_needs_a_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError, match="MLFLOW_TRACKING_URI is not set"):
        configure("demo")


def test_templates_default_to_the_users_own_names(monkeypatch):
    # Names are global in MLflow and its permission checks give each to its creator: a shared
    # default would belong to the first user of a workshop and be refused to everybody else.
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    assert experiment_name("werkbank-training") == "alice/werkbank-training"
    assert experiment_name("werkbank-training", "vision/shared") == "vision/shared"
    assert model_name("digits-cnn") == "alice-digits-cnn"  # no "/" in registered model names
    assert model_name("digits-cnn", "prod-model") == "prod-model"


def test_user_folders_are_under_home_or_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert user_folder("~/out", "output_dir") == tmp_path / "home" / "out"
    assert user_folder("relative/x", "output_dir") == tmp_path / "relative" / "x"
    with pytest.raises(ValueError, match=r"^output_dir='/etc/werkbank' is /etc/werkbank, outside your home"):
        user_folder("/etc/werkbank", "output_dir")
    with pytest.raises(ValueError, match="outside"):
        user_folder("~/../../elsewhere", "output_dir")


def test_configure_and_session_tags(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("WERKBANK_PROFILE", "cpu: CPU · 1 core · 2 GB · 1 h · partition cpu")
    experiment_id = configure("demo")
    experiment = MlflowClient(mlflow_server.url).get_experiment(experiment_id)
    assert experiment.name.endswith("/demo")
    tags = session_tags()
    assert tags["werkbank.slurm_job_id"] == "4242"
    assert tags["werkbank.profile"].startswith("cpu:")
    assert tags["werkbank.user"]
