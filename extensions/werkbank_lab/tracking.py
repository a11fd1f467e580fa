"""Tracking from a werkbank session: MLflow set up in one call, and a metric logger that costs
the training loop next to nothing.

Why a logger of our own: one ``mlflow.log_metric`` call is a blocking HTTP request (~50 ms
against a local server), so per-step logging can cost more than the step. MLflow's own
``synchronous=False`` still sends about one request per metric. :class:`MetricLogger` puts
metrics in memory (microseconds), and a background thread sends them with ``log-batch``
(up to 1,000 per request). While the server is unreachable, batches go to a spool file on the
user's disk and are replayed, in order, when it answers again; the user is told once.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from werkbank_lab.tls import mlflow_verify

log = logging.getLogger(__name__)

#: MLflow's limit on metrics per log-batch request.
MAX_BATCH = 1000


# --- configuration from the session ----------------------------------------------------


def session_tags() -> dict[str, str]:
    """Tags that say where a run came from: user, Slurm job, node, GPU, git commit, notebook."""
    tags = {"werkbank.user": getpass.getuser()}
    env_tags = {
        "werkbank.slurm_job_id": "SLURM_JOB_ID",
        "werkbank.node": "SLURMD_NODENAME",
        "werkbank.profile": "WERKBANK_PROFILE",
        "werkbank.notebook": "JPY_SESSION_NAME",  # set by Jupyter for notebook kernels
    }
    for tag, var in env_tags.items():
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    gpu = _gpu_model()
    if gpu:
        tags["werkbank.gpu"] = gpu
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _gpu_model() -> str:
    try:
        import torch
    except ImportError:
        return ""
    if not torch.cuda.is_available():
        return ""
    return torch.cuda.get_device_name(0)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def user_name() -> str:
    """The session's hub user (``JUPYTERHUB_USER``), else the Linux user (the same in werkbank)."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


def experiment_name(project: str, chosen: str = "") -> str:
    """``chosen``, or the user's own experiment for ``project``: ``<user>/<project>``.

    MLflow's names are global and werkbank's MLflow lets only their creator (and their group,
    for ``<group>/...``) use an experiment: a default such as ``werkbank-training`` would be
    the first user's, and refused to everyone else in a workshop.
    """
    return chosen or f"{user_name()}/{project}"


def model_name(name: str, chosen: str = "") -> str:
    """``chosen``, or the user's own registered model called ``name``: ``<user>-<name>``
    (registered model names cannot contain ``/``)."""
    return chosen or f"{user_name()}-{name}"


def tracking_uri() -> str:
    """The session's ``MLFLOW_TRACKING_URI``. Raises ``RuntimeError`` saying what to do when it
    is not set (werkbank sets it in every session and batch job)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise RuntimeError(
            "MLFLOW_TRACKING_URI is not set, so there is no MLflow server to log to. Sessions started "
            "by werkbank's JupyterHub have it; elsewhere start a server (`mlflow server --port 5000`) "
            "and set it first, e.g. `%env MLFLOW_TRACKING_URI=http://127.0.0.1:5000`."
        )
    return uri


def run_url(run_id: str, experiment_id: str) -> str:
    """The run in MLflow's UI as the user's browser reaches it, a path on the hub's public origin
    (JupyterLab's too): the hub's MLflow service, ``<hub base>/services/mlflow/#/experiments/<id>/
    runs/<run>``, which stays valid after the session ends; with an MLflow server outside the hub,
    this session's own ``<server>/werkbank/mlflow/``. "" outside a werkbank session.

    MLflow's client prints a link of its own at the end of a run, made of ``MLFLOW_TRACKING_URI``:
    the address jobs reach the service at, which a browser may not (werkbank's sessions switch
    that off, ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``). The site file requires the service's
    path there to be the one on the hub's public URL."""
    if not os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        return ""
    fragment = f"#/experiments/{experiment_id}/runs/{run_id}"
    service = urlsplit(os.environ.get("MLFLOW_TRACKING_URI", "")).path.rstrip("/")
    if service.endswith("/services/mlflow"):
        return f"{service}/{fragment}"
    return f"{os.environ['JUPYTERHUB_SERVICE_PREFIX'].rstrip('/')}/werkbank/mlflow/{fragment}"


def dashboard_viewer() -> str:
    """Who is looking at this notebook: the hub user a shared dashboard's page was rendered for
    (``WERKBANK_DASHBOARD_VIEWER``, set by the session's dashboard gate), "" for the session's
    owner (in JupyterLab, papermill, or their own dashboard)."""
    return os.environ.get("WERKBANK_DASHBOARD_VIEWER", "")


def readable_experiments(experiment_ids: Iterable[str], viewer: str) -> set[str]:
    """Those of ``experiment_ids`` that ``viewer`` may read in MLflow too (the session's own
    user may read them, or MLflow would not have listed them): a shared dashboard shows a viewer
    only what their own MLflow permissions allow. Asks the hub's MLflow service
    (``<tracking URI>/werkbank/readable-experiments``), with the session's token. Raises
    ``RuntimeError`` if the service cannot say (an MLflow server outside the hub). The service is
    checked as MLflow's client checks it (:func:`werkbank_lab.tls.mlflow_verify`)."""
    ids = sorted({str(i) for i in experiment_ids})
    if not ids or not viewer:
        return set(ids) if not viewer else set()
    url = tracking_uri().rstrip("/") + "/werkbank/readable-experiments"
    try:
        reply = httpx.get(
            url,
            params={"viewer": viewer, "experiment_id": ids},
            headers=_auth_headers(),
            verify=mlflow_verify(),
            timeout=30,
        )
    except httpx.HTTPError as e:
        raise RuntimeError(f"the MLflow service did not answer ({e})") from None
    if reply.status_code != 200:
        raise RuntimeError(
            f"the MLflow service cannot say what {viewer} may read ({reply.status_code}): {reply.text[:200]}"
        )
    return set(reply.json()["experiment_ids"]) & set(ids)


def user_folder(value: str, parameter: str) -> Path:
    """The folder ``value`` (``~`` expanded, resolved), which must be under the user's home or the
    working directory: a template writes nowhere else. Raises ``ValueError`` naming
    ``parameter`` otherwise. The folder is not created."""
    folder = Path(value).expanduser().resolve()
    allowed = [Path.home().resolve(), Path.cwd().resolve()]
    if not any(folder.is_relative_to(root) for root in allowed):
        raise ValueError(
            f"{parameter}={value!r} is {folder}, outside your home ({allowed[0]}) and the working "
            f"directory ({allowed[1]}); this notebook writes only there."
        )
    return folder


def configure(project: str = "default", experiment: str = "") -> str:
    """Point MLflow at the session's tracking server and pick the experiment; return its id.

    The experiment is ``experiment`` or ``<user>/<project>`` (:func:`experiment_name`). Raises
    ``RuntimeError`` with a clear message when the session has no ``MLFLOW_TRACKING_URI``.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.set_experiment(experiment_name(project, experiment or "")).experiment_id


# --- the metric logger -------------------------------------------------------------------


class MetricLogger:
    """Batch metrics and send them in the background; spool to disk while MLflow is away.

    ``log()`` never blocks on the network. ``flush()`` waits until everything logged so far
    is either on the server or in the spool file; ``close()`` (or leaving a ``with`` block)
    flushes and stops the thread. Metrics left in the spool (server still away at close) are
    sent by the next logger for the same run, or by :func:`replay_spool`.

    ``on_status`` is called (from the background thread) with ``"offline"`` when the server
    stops answering and ``"online"`` when spooled metrics have been delivered. ``listeners`` see
    every value as it is logged (a live :class:`werkbank_lab.widgets.TrainingPanel`).
    """

    def __init__(
        self,
        run_id: str,
        *,
        tracking_uri: str | None = None,
        flush_interval: float = 1.0,
        spool_dir: str | os.PathLike | None = None,
        timeout: float = 5.0,
        retry_interval: float = 2.0,
        on_status: Callable[[str], None] | None = None,
        listeners: Iterable[Callable[[str, float, int], None]] = (),
    ):
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri.startswith(("http://", "https://")):
            raise ValueError(f"MetricLogger needs an http(s) MLflow tracking URI, got {uri!r}")
        self.run_id = run_id
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.on_status = on_status
        # Called in the caller's thread with (key, value, step) for every value, e.g. a live
        # TrainingPanel (werkbank_lab.widgets); they must be cheap, the training loop waits for them.
        self.listeners = list(listeners)
        self.spool_path = Path(spool_dir or Path.home() / ".werkbank" / "spool") / f"{run_id}.jsonl"
        self.sent = 0  # metrics delivered to the server
        self.requests = 0  # log-batch requests made
        self.offline = False
        self._url = uri.rstrip("/") + "/api/2.0/mlflow/runs/log-batch"
        # MLflow's client's checks: MLFLOW_TRACKING_SERVER_CERT_PATH (internal_ssl: the hub's CA).
        self._http = httpx.Client(timeout=timeout, headers=_auth_headers(), verify=mlflow_verify())
        self._pending: list[dict] = []
        self._lock = threading.Condition()
        self._flush_wanted = False
        self._idle = True
        self._closing = False
        self._next_retry = 0.0
        self._thread = threading.Thread(target=self._run, name=f"werkbank-metrics-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- what training code calls

    def log(self, key: str, value: float, step: int = 0, timestamp: int | None = None) -> None:
        """Queue one metric value (non-blocking)."""
        item = {
            "key": key,
            "value": float(value),
            "timestamp": timestamp if timestamp is not None else int(time.time() * 1000),
            "step": int(step),
        }
        with self._lock:
            self._pending.append(item)
            if len(self._pending) >= MAX_BATCH:
                self._lock.notify()
        for listener in self.listeners:
            listener(key, item["value"], item["step"])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue several metrics of one step (non-blocking)."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            self.log(key, value, step, timestamp)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every metric logged so far is delivered or spooled; True if delivered."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_wanted = True
            self._lock.notify()
            while self._pending or not self._idle or self._flush_wanted:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            return not self._pending and not self.offline

    def close(self, timeout: float | None = 60.0) -> bool:
        """Flush, try once more to deliver the spool, stop the thread; True if all delivered."""
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout)
        self._http.close()
        if self.spool_path.exists():
            log.warning(
                "werkbank: %s metrics could not be sent yet; they are kept in %s and will be "
                "sent by the next logger for this run or by werkbank_lab.tracking.replay_spool()",
                _count_lines(self.spool_path),
                self.spool_path,
            )
            return False
        # Judged after the final attempt: the flush above may have spooled a batch while a
        # retry was not yet due, and closing then delivered it.
        return not self._pending and not self.offline

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the background thread

    def _run(self) -> None:
        while True:
            with self._lock:
                # Collect for flush_interval unless a full batch, a flush or close is waiting:
                # sending whatever is pending right away would make one request per step.
                if len(self._pending) < MAX_BATCH and not (self._flush_wanted or self._closing):
                    self._lock.wait(self.flush_interval)
                batch, self._pending = self._pending, []
                closing, self._idle = self._closing, False
            try:
                self._deliver(batch, final=closing)
            except Exception:  # never let the thread die: metrics would silently stop
                log.exception("werkbank: metric logger error; spooling")
                self._spool(batch)
            with self._lock:
                self._idle = True
                if not self._pending:
                    self._flush_wanted = False
                self._lock.notify_all()
                if closing:
                    return

    def _deliver(self, batch: list[dict], *, final: bool) -> None:
        if self.spool_path.exists() and (final or time.monotonic() >= self._next_retry):
            self._replay()
        if self.spool_path.exists():
            self._spool(batch)  # keep the order: older spooled metrics go first
            return
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            if not self._send(chunk):
                self._spool(batch[start:])
                return

    def _send(self, metrics: list[dict]) -> bool:
        try:
            self.requests += 1
            r = self._http.post(self._url, json={"run_id": self.run_id, "metrics": metrics})
        except httpx.HTTPError as e:
            self._went_offline(repr(e))
            return False
        if r.status_code >= 500 or r.status_code in (408, 429):
            self._went_offline(f"HTTP {r.status_code}")
            return False
        r.raise_for_status()  # 4xx: a bug or a bad run id, not an outage; do not hide it
        self.sent += len(metrics)
        return True

    def _went_offline(self, why: str) -> None:
        self._next_retry = time.monotonic() + self.retry_interval
        if not self.offline:
            self.offline = True
            log.warning(
                "werkbank: MLflow is not answering (%s); training goes on, metrics are kept in %s "
                "and sent when it is back",
                why,
                self.spool_path,
            )
            if self.on_status:
                self.on_status("offline")

    def _spool(self, metrics: list[dict]) -> None:
        if not metrics:
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a") as f:
            f.writelines(json.dumps(m) + "\n" for m in metrics)

    def _replay(self) -> None:
        """Send the spool file's metrics in order; remove it once all are delivered."""
        metrics = [json.loads(line) for line in self.spool_path.read_text().splitlines() if line]
        for start in range(0, len(metrics), MAX_BATCH):
            if not self._send(metrics[start : start + MAX_BATCH]):
                # Keep what is left, in order.
                rest = metrics[start:]
                self.spool_path.write_text("".join(json.dumps(m) + "\n" for m in rest))
                return
        self.spool_path.unlink()
        if self.offline:
            self.offline = False
            log.warning("werkbank: MLflow is back; %d spooled metrics were sent", len(metrics))
            if self.on_status:
                self.on_status("online")


def replay_spool(run_id: str, **kwargs) -> bool:
    """Send metrics spooled for ``run_id`` by an earlier session; True if all were delivered."""
    return MetricLogger(run_id, **kwargs).close()


def _auth_headers() -> dict[str, str]:
    """The same credentials MLflow's own client would send."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _count_lines(path: Path) -> int:
    with open(path) as f:
        return sum(1 for _ in f)
