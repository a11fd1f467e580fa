"""The hub API endpoints werkbank adds: where a starting job reports the port its server listens on
(and its script that the server ended), where a session gets a token of its own for a batch job
(``werkbank submit``), where the workshop service grants a course's trainers their role, where a
session reads its course's latest message, and where a session shares dashboards
(:mod:`werkbank_spawner.dashboards`).

batchspawner registers ``/api/batchspawner`` whose handler ``setattr``s *every* posted key
on the spawner, so the holder of a server token can overwrite ``exec_prefix``, ``cmd`` or
``req_partition`` and have the hub run commands of their choosing. Importing this module
replaces that handler, at the same URL (so ``batchspawner-singleuser`` keeps working), with
one that accepts exactly ``{"port": <1..65535>}`` and sets nothing but the port.

The route table is process-wide and JupyterHub imports every installed spawner plugin at
start, so this handler also serves plain batchspawner spawners in a hub that uses them: for
those it sets ``spawner.port``, which is all batchspawner's own start() waits for.
"""

from __future__ import annotations

import json
import re

import batchspawner.api  # noqa: F401  (registers the handler we replace below)
from batchspawner import BatchSpawnerBase
from jupyterhub import handlers as page_handlers
from jupyterhub import orm
from jupyterhub import roles as jupyterhub_roles
from jupyterhub.apihandlers import APIHandler, default_handlers
from tornado import web

from werkbank_core.script import USERNAME

from . import dashboards
from .server_tokens import server_of_token
from .workshop import roles
from .workshop.course import COURSE_NAME
from .workshop.store import CourseStore

ROUTE = r"/api/batchspawner"


class PortReportHandler(APIHandler):
    """POST ``{"port": N}`` with the server's own API token."""

    @web.authenticated
    async def post(self):
        spawner = self._spawner_for_token()
        body = self.get_json_body()
        if not isinstance(body, dict) or set(body) != {"port"}:
            raise web.HTTPError(400, 'expected exactly {"port": <number>}')
        port = body["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise web.HTTPError(400, "port must be a number from 1 to 65535")
        if hasattr(spawner, "report_port"):
            try:
                spawner.report_port(port)
            except ValueError as e:
                raise web.HTTPError(400, str(e)) from None
        else:
            spawner.port = port
        self.set_status(201)
        self.finish(json.dumps({"message": "port recorded"}))

    def _spawner_for_token(self):
        spawner = server_of_token(self)
        if not isinstance(spawner, BatchSpawnerBase):
            raise web.HTTPError(403, "this token belongs to no starting batch server")
        return spawner


SERVER_ENDED_ROUTE = r"/api/werkbank/server-ended"
_JOB_ID = re.compile(r"[0-9]{1,20}\Z")


class ServerEndedHandler(APIHandler):
    """POST ``{"job_id": "<id>", "how": "signal" | "exit", "status": <0-255>}`` with a server's own
    token: its job script saying that the server ends (``werkbank_core.script.END_REPORT``), so
    that the hub stops routing to it now rather than at its next look at the queue.

    Nothing in the body is shown to anyone as written; the job id must be the server's current
    job (a late report of an earlier job changes nothing). The holder of the token can only end
    their own server, which they may anyway; the spawner still cancels the job afterwards, so a
    report that was not true leaves no job running without its server."""

    @web.authenticated
    async def post(self):
        spawner = server_of_token(self)
        if spawner is None or not hasattr(spawner, "job_ended"):
            raise web.HTTPError(403, "this token belongs to no werkbank server")
        body = self.get_json_body()
        if not isinstance(body, dict) or set(body) != {"job_id", "how", "status"}:
            raise web.HTTPError(400, 'expected {"job_id": "<id>", "how": "signal" or "exit", "status": <n>}')
        job_id, how, status = body["job_id"], body["how"], body["status"]
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise web.HTTPError(400, "job_id must be a Slurm job id")
        if how not in ("signal", "exit"):
            raise web.HTTPError(400, 'how must be "signal" or "exit"')
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 255:
            raise web.HTTPError(400, "status must be a number from 0 to 255")
        outcome = spawner.job_ended(job_id, how, status)
        self.set_status(202 if outcome == "ending" else 200)
        self.finish(json.dumps({"outcome": outcome}))


JOB_TOKEN_ROUTE = r"/api/werkbank/job-tokens"
#: What a batch job's token may do: use the hub's MLflow service (and, as every token, identify
#: its owner). Not the session's own token, which is broader (it may act for the session's
#: server) and dies with the session while the job may still run.
JOB_TOKEN_SCOPES = ("access:services!service=mlflow",)
#: Seconds a job token may live at most: a job may wait in the queue for days before its
#: walltime starts; the session asks for walltime plus a queue allowance.
JOB_TOKEN_MAX_SECONDS = 31 * 24 * 3600
_NOTE = re.compile(r"[\w .:/@+-]{0,120}\Z")


class JobTokenHandler(APIHandler):
    """POST ``{"expires_in": <seconds>, "note": "<what for>"}`` with a server's own API token:
    a new token of the server's owner, scoped to :data:`JOB_TOKEN_SCOPES`, that expires then."""

    @web.authenticated
    async def post(self):
        owner = self._owner_of_server_token()
        body = self.get_json_body()
        if not isinstance(body, dict) or not set(body) <= {"expires_in", "note"} or "expires_in" not in body:
            raise web.HTTPError(400, 'expected {"expires_in": <seconds>, "note": "<text>"}')
        expires_in, note = body["expires_in"], body.get("note", "")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise web.HTTPError(400, "expires_in must be a number of seconds")
        if not 60 <= expires_in <= JOB_TOKEN_MAX_SECONDS:
            raise web.HTTPError(400, f"expires_in must lie between 60 and {JOB_TOKEN_MAX_SECONDS} seconds")
        if not isinstance(note, str) or not _NOTE.match(note):
            raise web.HTTPError(400, "note: at most 120 letters, digits, spaces and .:/@+-_")
        try:
            token = owner.new_api_token(
                note=f"werkbank job: {note}".strip(), expires_in=expires_in, scopes=list(JOB_TOKEN_SCOPES)
            )
        except ValueError:  # JupyterHub: a scope the user does not hold, i.e. no MLflow service
            raise web.HTTPError(
                409, "this hub has no MLflow service (tracking.mlflow.proxy): a job needs no token of its own"
            ) from None
        self.log.info("werkbank: job token for %s (%d s): %s", owner.name, expires_in, note)
        self.set_status(201)
        self.finish(json.dumps({"token": token, "expires_in": expires_in, "scopes": list(JOB_TOKEN_SCOPES)}))

    def _owner_of_server_token(self):
        """The user whose running (or starting) server this request's token belongs to: only
        sessions mint job tokens, never a user's other tokens (which could ask for anything)."""
        if server_of_token(self) is None:
            raise web.HTTPError(403, "job tokens are given to a session's own token only")
        return self.current_user


COURSE_ROLES_ROUTE = r"/api/werkbank/course-roles/([^/]+)"


class CourseRolesHandler(APIHandler):
    """The trainer role of a course (:mod:`werkbank_spawner.workshop.roles`), for the holder of
    :data:`~werkbank_spawner.workshop.roles.COURSE_ROLES_SCOPE` (the workshop service): JupyterHub
    has no REST API for roles. The scopes come from the course's name, never from the request.

    - PUT ``{"trainers": [<user>, ...]}``: create or update the role, granted to exactly these
      (existing) users.
    - GET: the role's name, scopes and users; 404 if there is none.
    - DELETE: remove the role (204 also when there was none).
    """

    def _course(self, name: str) -> str:
        if roles.COURSE_ROLES_SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, f"this needs the scope {roles.COURSE_ROLES_SCOPE}")
        if not COURSE_NAME.match(name):
            raise web.HTTPError(400, f"{name!r} is not a course name")
        return name

    @web.authenticated
    def get(self, name):
        role = orm.Role.find(self.db, roles.role_name(self._course(name)))
        if role is None:
            raise web.HTTPError(404, f"no trainer role for course {name}")
        self.finish(
            json.dumps(
                {"name": role.name, "scopes": role.scopes, "users": sorted(u.name for u in role.users)}
            )
        )

    @web.authenticated
    def put(self, name):
        course = self._course(name)
        body = self.get_json_body()
        trainers = body.get("trainers") if isinstance(body, dict) and set(body) == {"trainers"} else None
        if not isinstance(trainers, list) or not all(
            isinstance(t, str) and USERNAME.match(t) for t in trainers
        ):
            raise web.HTTPError(400, 'expected {"trainers": [<user name>, ...]}')
        users = [orm.User.find(self.db, t) for t in trainers]
        if None in users:
            raise web.HTTPError(400, f"no hub user {trainers[users.index(None)]!r}")
        spec = roles.trainer_role(course, [])
        role = jupyterhub_roles.create_role(self.db, {k: spec[k] for k in ("name", "description", "scopes")})
        for user in list(role.users):
            if user.name not in trainers:
                jupyterhub_roles.strip_role(self.db, entity=user, role=role.name)
        for user in users:
            if user not in role.users:
                jupyterhub_roles.grant_role(self.db, entity=user, role=role.name)
        self.log.info("werkbank: trainers of course %s: %s", course, ", ".join(trainers))
        self.set_status(200)
        self.finish(json.dumps({"name": role.name, "scopes": role.scopes, "users": sorted(trainers)}))

    @web.authenticated
    def delete(self, name):
        role_name = roles.role_name(self._course(name))
        if orm.Role.find(self.db, role_name) is not None:
            jupyterhub_roles.delete_role(self.db, role_name)
            self.log.info("werkbank: removed the trainer role of course %s", name)
        self.set_status(204)
        self.finish()


BROADCAST_ROUTE = r"/api/werkbank/broadcast"


class BroadcastHandler(APIHandler):
    """GET with any token of a user (the session's own): the latest message of the running course
    the user takes part in or trains, ``{"course", "message", "by", "at"}``, or ``{}``. JupyterLab
    shows it as a notification (werkbank_lab asks for it); the trainer console writes it."""

    @web.authenticated
    def get(self):
        user = self.current_user
        if user is None or not hasattr(user, "spawners"):
            raise web.HTTPError(403, "a user's token only")
        folder = getattr(user.spawner, "workshops_dir", "")
        message = CourseStore(folder).broadcast_for(user.name) if folder else None
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(message or {}))


def install_handler() -> None:
    """Make ``ROUTE`` point at :class:`PortReportHandler` and add :class:`ServerEndedHandler`,
    :class:`JobTokenHandler`, :class:`CourseRolesHandler`, :class:`BroadcastHandler` and the dashboard
    shares' API and link page (:mod:`werkbank_spawner.dashboards`) (idempotent)."""
    ours = (ROUTE, SERVER_ENDED_ROUTE, JOB_TOKEN_ROUTE, COURSE_ROLES_ROUTE, BROADCAST_ROUTE)
    default_handlers[:] = [h for h in default_handlers if h[0] not in ours]
    default_handlers.append((ROUTE, PortReportHandler))
    default_handlers.append((SERVER_ENDED_ROUTE, ServerEndedHandler))
    default_handlers.append((JOB_TOKEN_ROUTE, JobTokenHandler))
    default_handlers.append((COURSE_ROLES_ROUTE, CourseRolesHandler))
    default_handlers.append((BROADCAST_ROUTE, BroadcastHandler))
    dashboards.install_handlers(default_handlers, page_handlers.default_handlers)


install_handler()
