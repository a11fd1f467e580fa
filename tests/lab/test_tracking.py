"""werkbank_lab.tracking against real MLflow servers: batching, and nothing lost in an outage."""

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer, free_port
from werkbank_lab.tracking import (
    MAX_BATCH,
    MetricLogger,
    configure,
    experiment_name,
    model_name,
    replay_spool,
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


class SlowServer:
    """A proxy in front of a real MLflow server that holds every request until ``answer`` is set:
    an MLflow server that is slow to answer. Counts what arrived and what was answered."""

    def __init__(self, upstream: str):
        self.answer = threading.Event()
        self.first_arrived = threading.Event()
        self.lock = threading.Lock()
        self.arrived = 0
        self.answered = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx uses it

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.arrived += 1
                proxy.first_arrived.set()
                proxy.answer.wait(300)
                r = httpx.post(
                    upstream + self.path,
                    content=body,
                    headers={"Content-Type": self.headers["Content-Type"]},
                    timeout=60,
                )
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)
                with proxy.lock:
                    proxy.answered += 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.answer.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_server(mlflow_server):
    server = SlowServer(mlflow_server.url)
    yield server
    server.close()


def test_ten_thousand_metrics_in_a_few_requests_and_logging_never_waits(
    mlflow_server, slow_server, tmp_path, report_figure
):
    run_id = new_run(mlflow_server.url)
    logger = MetricLogger(
        run_id, tracking_uri=slow_server.url, spool_dir=tmp_path, flush_interval=0.05, timeout=300
    )
    took = []

    def train():
        logger.log("started", 1.0)
        if slow_server.first_arrived.wait(60):  # the logger's thread now waits for an answer
            started = time.perf_counter()
            for step in range(5000):
                logger.log_metrics({"loss": 1 / (step + 1), "accuracy": step / 5000}, step=step)
            took.append(time.perf_counter() - started)

    try:
        training = threading.Thread(target=train, daemon=True)
        training.start()
        training.join(120)  # generous: it is memory work; a logger that waited would wait 300 s
        # All 10,001 values were queued while the server had not answered a single request, and
        # the logger sent nothing more meanwhile (one request in flight at a time).
        assert not training.is_alive(), "log() waits for the server"
        assert slow_server.first_arrived.is_set() and took
        assert (slow_server.arrived, slow_server.answered) == (1, 0)
        report_figure("MetricLogger.log", f"10,000 values queued in {took[0]:.3f} s (server not answering)")
        print(f"10,000 values queued in {took[0]:.3f} s while the server was not answering")
    finally:
        slow_server.answer.set()
        delivered = logger.close(120)
    assert delivered
    assert logger.sent == 10_001
    # What waited went in batches of MAX_BATCH: the first request, then 10 for the 10,000 values.
    assert logger.requests == slow_server.arrived == 1 + math.ceil(10_000 / MAX_BATCH)
    losses = history(mlflow_server.url, run_id, "loss")
    assert len(losses) == 5000
    assert sorted(m.step for m in losses) == list(range(5000))
    assert len(history(mlflow_server.url, run_id, "accuracy")) == 5000
    assert not list(tmp_path.iterdir())  # nothing left in the spool


def test_a_training_loop_costs_at_most_one_request_per_flush_interval(mlflow_server, tmp_path, report_figure):
    run_id = new_run(mlflow_server.url)
    flush_interval = 0.5
    started = time.monotonic()
    with MetricLogger(
        run_id, tracking_uri=mlflow_server.url, spool_dir=tmp_path, flush_interval=flush_interval
    ) as logger:
        for step in range(100):  # ~1.2 s of "training", one value every ~12 ms
            logger.log("loss", step, step=step)
            time.sleep(0.012)
    elapsed = time.monotonic() - started
    report_figure("MetricLogger requests", f"{logger.requests} for 100 values over {elapsed:.2f} s")
    print(f"{logger.requests} requests for 100 values over {elapsed:.2f} s")
    assert logger.sent == 100
    assert sorted(m.step for m in history(mlflow_server.url, run_id, "loss")) == list(range(100))
    # The thread sends what collected once per flush interval, plus once for close(): however
    # slow the machine makes the loop, never one request per step.
    assert logger.requests <= elapsed / flush_interval + 1
    assert logger.requests < logger.sent  # fewer requests than values


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


def test_replay_spool_sends_what_an_earlier_logger_left(mlflow_server, tmp_path):
    """Metrics spooled during an outage that outlasted the logger are sent by replay_spool()
    once MLflow answers again, with their original steps, values and timestamps."""
    run_id = new_run(mlflow_server.url)
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there: MLflow is away
    spool = tmp_path / "spool"
    spool_file = spool / f"{run_id}.jsonl"
    logger = MetricLogger(run_id, tracking_uri=away, spool_dir=spool, flush_interval=0.05, timeout=2)
    for step in range(2500):  # more than two log-batch requests' worth
        logger.log("loss", step / 10, step=step)
    assert not logger.close(60)  # not delivered: kept in the spool
    spooled = spool_file.read_text().splitlines()
    assert [json.loads(line)["step"] for line in spooled] == list(range(2500))

    # Still away: nothing is lost or reordered.
    assert not replay_spool(run_id, tracking_uri=away, spool_dir=spool, timeout=2)
    assert spool_file.read_text().splitlines() == spooled
    assert history(mlflow_server.url, run_id, "loss") == []

    # Back: everything is delivered and the spool is gone.
    assert replay_spool(run_id, tracking_uri=mlflow_server.url, spool_dir=spool)
    assert not spool_file.exists()
    delivered = sorted((m.step, m.value, m.timestamp) for m in history(mlflow_server.url, run_id, "loss"))
    expected = sorted((m["step"], m["value"], m["timestamp"]) for m in map(json.loads, spooled))
    assert delivered == expected
    assert len(delivered) == 2500
    # Nothing left to send: a second replay is a no-op that reports success.
    assert replay_spool(run_id, tracking_uri=mlflow_server.url, spool_dir=spool)
    assert len(history(mlflow_server.url, run_id, "loss")) == 2500


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


def test_a_runs_link_is_the_one_the_users_browser_reaches(monkeypatch):
    """A path on the hub's public origin, whatever address jobs use."""
    from werkbank_lab.tracking import run_url

    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/jhub/user/alice/")
    # The hub's MLflow service, on the hub's public origin (where jobs reach it at another address).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5001/jhub/services/mlflow")
    assert run_url("abc123", "7") == "/jhub/services/mlflow/#/experiments/7/runs/abc123"
    # An MLflow server outside the hub: through the session's own server.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.cluster:5000")
    assert run_url("abc123", "7") == "/jhub/user/alice/werkbank/mlflow/#/experiments/7/runs/abc123"
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX")
    assert run_url("abc123", "7") == ""  # not in a werkbank session: no link to give
