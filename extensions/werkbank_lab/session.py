"""What JupyterLab shows of the session itself (``GET <server>/werkbank/session``): when Slurm ends
the job, when an idle server is stopped, and where the MLflow UI is; in a workshop, the trainers'
latest message (``GET <server>/werkbank/broadcast``). The frontend
(``extensions/labextension``) shows the time left in the status bar and warns before either end.

The job's end comes from Slurm (``squeue %L``: the time left, so neither clock nor time zone of
the controller matters), asked at most every :data:`REFRESH_S` seconds per server, so that a
walltime an admin extends with ``scontrol update`` shows within minutes. Outside a Slurm job
(the local-process fallback) there is no end, and the frontend shows none.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from werkbank_core import slurm
from werkbank_lab.tls import hub_ssl_context

#: Seconds between two questions to Slurm about the job's end (per server, whoever asks).
REFRESH_S = 300
#: Minutes before the walltime at which JupyterLab warns (each once).
WALLTIME_WARNINGS = (15, 5)
#: Minutes before an idle server is stopped at which JupyterLab warns.
IDLE_WARNING = 10
#: Seconds a course's latest message is remembered before the hub is asked again.
BROADCAST_REFRESH_S = 10


@dataclass(frozen=True)
class SessionInfo:
    job_id: str  # "" outside a Slurm job
    ends_at: float | None  # epoch seconds; None: no end known
    profile: str  # WERKBANK_PROFILE: what the session runs on
    idle_timeout: int | None  # seconds of inactivity after which the hub stops the server
    walltime_warnings: tuple[int, ...] = WALLTIME_WARNINGS
    idle_warning: int = IDLE_WARNING
    mlflow_ui: str = ""  # the session's MLflow UI route, relative to the server ("" without one)
    mlflow_new_tab: bool = False  # open it in a browser tab (it forbids framing)
    launcher_category: str = "Werkbank"  # WerkbankLab.launcher_category
    template_cards: bool = True  # WerkbankLab.template_launchers
    mlflow_card: bool = True  # WerkbankLab.mlflow_launcher
    course: str = ""  # WERKBANK_COURSE: the workshop this session belongs to ("" for none)


class JobClock:
    """The end of this session's Slurm job, from ``squeue``, remembered for :data:`REFRESH_S`."""

    def __init__(self, job_id: str, squeue: str = "squeue", refresh: float = REFRESH_S):
        self.job_id, self.squeue, self.refresh = job_id, squeue, refresh
        self._ends_at: float | None = None
        self._asked = -float("inf")

    async def ends_at(self) -> float | None:
        if not self.job_id:
            return None
        if time.monotonic() - self._asked >= self.refresh:
            self._asked = time.monotonic()
            try:
                answer = await slurm.run(slurm.time_left_argv(self.job_id, self.squeue), timeout=15)
                left = slurm.parse_time(answer.check())
            except slurm.SlurmCommandError:
                left = None  # Slurm busy or gone: keep what was known, ask again next time
                self._asked -= self.refresh * 0.9  # and soon
            if left is not None:
                self._ends_at = time.time() + left
        return self._ends_at


def idle_timeout(environ: dict[str, str]) -> int | None:
    """``WERKBANK_IDLE_TIMEOUT`` (set by the spawner when the hub culls idle servers)."""
    value = environ.get("WERKBANK_IDLE_TIMEOUT", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class SessionHandler(APIHandler):
    auth_resource = "status"

    def initialize(self, clock: JobClock, settings: dict):
        self.clock, self.werkbank_settings = clock, settings

    @web.authenticated
    @authorized
    async def get(self):
        info = SessionInfo(
            job_id=self.clock.job_id,
            ends_at=await self.clock.ends_at(),
            profile=os.environ.get("WERKBANK_PROFILE", ""),
            idle_timeout=idle_timeout(dict(os.environ)),
            course=os.environ.get("WERKBANK_COURSE", ""),
            **self.werkbank_settings,
        )
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(asdict(info)))


class Broadcasts:
    """The course's latest message, from the hub (``<hub API>/werkbank/broadcast``, asked with the
    session's own token), remembered for :data:`BROADCAST_REFRESH_S` seconds: every open
    JupyterLab tab asks, the hub is asked once."""

    def __init__(self, environ: dict[str, str], refresh: float = BROADCAST_REFRESH_S):
        self.url = environ.get("JUPYTERHUB_API_URL", "").rstrip("/") + "/werkbank/broadcast"
        self.token = environ.get("JUPYTERHUB_API_TOKEN", "")
        self.enabled = bool(environ.get("WERKBANK_COURSE") and self.token and "://" in self.url)
        self.refresh = refresh
        self._message: dict = {}
        self._asked = -float("inf")

    async def latest(self) -> dict:
        if self.enabled and time.monotonic() - self._asked >= self.refresh:
            self._asked = time.monotonic()
            request = HTTPRequest(
                self.url,
                headers={"Authorization": f"token {self.token}"},
                request_timeout=10,
                ssl_options=hub_ssl_context(),  # internal_ssl: the hub's CAs, the server's certificate
            )
            try:
                answer = await AsyncHTTPClient().fetch(request)
                message = json.loads(answer.body)
                self._message = message if isinstance(message, dict) else {}
            except (OSError, ValueError, HTTPClientError):
                pass  # the hub is restarting: keep what was known
        return self._message


class BroadcastHandler(APIHandler):
    auth_resource = "status"

    def initialize(self, broadcasts: Broadcasts):
        self.broadcasts = broadcasts

    @web.authenticated
    @authorized
    async def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(await self.broadcasts.latest()))


def handlers(base_url: str, clock: JobClock, **settings) -> list:
    """``settings``: the :class:`SessionInfo` fields the server extension's configuration decides
    (the MLflow UI, the launcher cards)."""
    kwargs = {"clock": clock, "settings": settings}
    return [
        (url_path_join(base_url, r"werkbank/session"), SessionHandler, kwargs),
        (
            url_path_join(base_url, r"werkbank/broadcast"),
            BroadcastHandler,
            {"broadcasts": Broadcasts(dict(os.environ))},
        ),
    ]
