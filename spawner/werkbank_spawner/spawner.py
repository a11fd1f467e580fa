"""WerkbankSlurmSpawner: JupyterLab as a Slurm job, with site profiles and policy.

The life of a server:

1. The spawn page (or ``POST /hub/api/users/{name}/server``) sends ``user_options``.
   :func:`validate_user_options` (JupyterHub's ``apply_user_options`` hook) turns them into a
   :class:`~werkbank_core.policy.JobRequest` or answers 400 with the reason; nothing
   reaches ``sbatch`` before that.
2. :meth:`start` renders the script from the request (:mod:`werkbank_core.script`),
   submits it with an argument vector as the user (``sudo -u``), and waits until the job
   reports its port (:mod:`werkbank_spawner.api`) or the shared queue says the job is gone.
3. :meth:`poll` reads the shared queue (:mod:`werkbank_spawner.queue`): one ``squeue`` call
   per interval for all servers. "Scheduler unreachable" keeps the server for
   ``unreachable_grace`` seconds instead of dropping it.
4. :meth:`stop` cancels the job and waits until Slurm no longer runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
import time
from dataclasses import replace
from typing import ClassVar

from batchspawner import SlurmSpawner
from jupyterhub.spawner import LocalProcessSpawner, Spawner
from jupyterhub.utils import exponential_backoff
from tornado import web
from traitlets import Bool, Dict, Float, Integer, List, Tuple, Unicode, default, observe, validate
from traitlets.config import Config, LoggingConfigurable

from werkbank_core import slurm
from werkbank_core.centre import ENV as CENTRE_ENV
from werkbank_core.centre import to_environ as centre_json
from werkbank_core.policy import MIN_UID, OPTION_KEYS, JobRequest, Policy, PolicyError, policy_from_dict
from werkbank_core.script import (
    PORT_RANGE,
    PORT_RANGE_ENV,
    USERNAME,
    JobContext,
    parse_job_id,
    render_script,
    sbatch_argv,
)
from werkbank_core.slurm import SlurmCommandError, run

from . import api  # noqa: F401  (replaces batchspawner's unsafe port-report handler)
from .form import render_options_form
from .queue import JobInfo, JobState, NodeAddresses, SlurmQueue
from .server_certs import ServerCerts
from .server_tokens import delete_server_token, server_token_id
from .tracking import NO_TELEMETRY
from .tracking.experiments import MlflowSetupError, default_experiment, ensure_default_experiment
from .workshop.sessions import course_policy, local_repository, material_url, participant_course
from .workshop.store import CourseRecord, CourseStore


def server_account(name: str, min_uid: int) -> pwd.struct_passwd:
    """The Linux account a server of user ``name`` runs as. Answers 403 for root and for any
    account with a uid below ``min_uid`` (system accounts, which own daemons and files that a
    notebook must not touch), and 500 for a name with no account; before anything runs as it."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise web.HTTPError(500, f"no Linux account {name!r} on the hub host") from None
    if account.pw_uid == 0 or account.pw_uid < min_uid:
        raise web.HTTPError(
            403,
            f"servers do not run as {name!r} (uid {account.pw_uid}): root and system accounts below "
            f"uid {min_uid} (auth.min_uid) cannot start servers; log in with a personal account",
        )
    return account


#: Seconds poll() waits for a TCP connection to a running server, and then for Slurm to mark the
#: server's node not responding (WerkbankSlurmSpawner._node_lost). Slurm does so once a ping fails:
#: pings go every SlurmdTimeout/3 s to nodes silent that long, and fail after MessageTimeout (5-7 s
#: after the link went with 6 s and 3 s, 8.5-11.5 s with 10 s and 5 s); later, a later poll finds it.
LOST_NODE_CONNECT_TIMEOUT = 2.0
LOST_NODE_SLURM_WAIT = 10.0

#: Arguments every werkbank server starts with: the gate that keeps everyone but the owner and
#: those with a role out of the server, except for the dashboards shared with them
#: (werkbank_lab.dashboard_gate, werkbank_lab.dashboards; the hub's side is
#: werkbank_spawner.dashboards). On the command line, because JupyterHub's single-user app sets
#: ServerApp.identity_provider_class above every config file, but below the command line.
SERVER_GATE_ARGS = (
    "--ServerApp.identity_provider_class=werkbank_lab.dashboard_gate.DashboardGate",
    "--ServerApp.kernel_manager_class=werkbank_lab.dashboards.DashboardKernelManager",
    "--ServerApp.kernel_websocket_connection_class=werkbank_lab.dashboards.ViewerKernelConnection",
)


class SessionSetup(LoggingConfigurable):
    """What both werkbank spawners share around a server's start: whose servers may start at
    all, and the MLflow tracking the session gets."""

    min_uid = Integer(
        MIN_UID,
        min=1,
        help="""Lowest uid a server may run as (root never may). Accounts below it are system
        accounts: a hub user of that name (e.g. an OAuth login called 'daemon') is refused.""",
    ).tag(config=True)

    mlflow_tracking_uri = Unicode(
        "", help="MLflow tracking server URL given to every server as MLFLOW_TRACKING_URI."
    ).tag(config=True)

    idle_timeout = Integer(
        0,
        min=0,
        help="""Seconds of inactivity after which the hub's idle culler stops a server (the site's
        culling.timeout); given to the session as WERKBANK_IDLE_TIMEOUT, so that JupyterLab warns
        before. 0: no culling, no warning.""",
    ).tag(config=True)

    centre = Dict(
        help="""The site file's ``centre:`` section (werkbank_spawner.site.schema.Centre): what the
        first-hour template tells clients about the centre, given to the session as
        WERKBANK_CENTRE (compact JSON). Empty: not given; the template shows the demo's defaults.""",
    ).tag(config=True)

    def session_env(self) -> dict[str, str]:
        """What both spawners add to a session's environment about the session itself and the centre."""
        env = {"WERKBANK_IDLE_TIMEOUT": str(self.idle_timeout)} if self.idle_timeout else {}
        if self.centre:
            env[CENTRE_ENV] = centre_json(self.centre)
        return env

    dashboards_dir = Unicode(
        "",
        help="""The hub's dashboard shares (werkbank_spawner.dashboards), one file per owner.
        Empty: nobody can share dashboards (servers still keep everyone but their owner and
        those with a role out).""",
    ).tag(config=True)

    mlflow_send_token = Bool(
        False,
        help="""Give every server MLFLOW_TRACKING_TOKEN=<its JUPYTERHUB_API_TOKEN>, which MLflow's
        client sends as a bearer token: for the hub's authenticating MLflow proxy service. Never
        for an MLflow server outside the hub, which would learn the token.""",
    ).tag(config=True)

    mlflow_server_url = Unicode(
        "",
        help="""The hub-managed MLflow server as the hub reaches it (loopback, with its static
        prefix): where the hub creates each user's ``<user>/default`` experiment, as the user,
        before their first session. Empty: the hub creates nothing.""",
    ).tag(config=True)

    mlflow_signing_key = Unicode(
        "", help="Key of the assertions the MLflow server trusts (the site sets it at every hub start)."
    ).tag(config=True)

    #: Users whose default experiment this hub process has seen exist.
    _default_experiments: ClassVar[set[str]] = set()

    async def prepare_tracking(self, timeout: float = 60) -> None:
        """Make sure ``<user>/default`` exists before the session logs to it, trying again with
        backoff while MLflow does not answer (it starts with the hub) for up to ``timeout``
        seconds. A failure is logged, not raised: the session can work without MLflow, and its
        first run then creates the experiment through the proxy, under the same rule."""
        name = self.user.name
        if not (self.mlflow_server_url and self.mlflow_signing_key) or name in self._default_experiments:
            return
        errors = []

        async def attempt():
            try:
                return (
                    "created"
                    if await ensure_default_experiment(
                        self.mlflow_server_url, self.mlflow_signing_key.encode(), name
                    )
                    else "exists"
                )
            except MlflowSetupError as e:
                errors.append(e)
                return None

        try:
            outcome = await exponential_backoff(attempt, "MLflow did not answer", timeout=timeout)
        except TimeoutError:
            self.log.warning("werkbank: %s's default experiment not checked: %s", name, errors[-1:])
            return
        if outcome == "created":
            self.log.info("werkbank: created MLflow experiment %s", default_experiment(name))
        self._default_experiments.add(name)


def validate_user_options(spawner: WerkbankSlurmSpawner, user_options: dict) -> None:
    """JupyterHub's ``apply_user_options`` hook: validate, or answer 400 with the reason."""
    course = spawner.course
    try:
        request = spawner.policy_for(course).validate(user_options or {}, spawner.user_groups)
    except PolicyError as e:
        raise web.HTTPError(400, f"Invalid server options: {e}") from None
    spawner.job_request = replace(request, reservation=course.reservation) if course else request


#: batchspawner's configurable traits, which WerkbankSlurmSpawner inherits but never reads: its
#: script comes from the site's profiles (:mod:`werkbank_core.script`), its commands are
#: argument vectors (``sbatch_cmd``, ...), its queue is :mod:`werkbank_spawner.queue`. Setting one
#: would do nothing, so :func:`ignored_settings` finds them and the hub refuses to start.
IGNORED_BATCHSPAWNER_TRAITS = tuple(
    sorted(set(SlurmSpawner.class_traits(config=True)) - set(Spawner.class_traits(config=True)))
)


def ignored_settings(config: Config) -> list[str]:
    """The ``c.<Class>.<trait>`` settings in ``config`` that WerkbankSlurmSpawner would ignore:
    batchspawner's traits (:data:`IGNORED_BATCHSPAWNER_TRAITS`) on any class it inherits from."""
    found = []
    for klass in WerkbankSlurmSpawner.mro():
        section = config.get(klass.__name__)
        if isinstance(section, dict):
            found += [f"c.{klass.__name__}.{name}" for name in IGNORED_BATCHSPAWNER_TRAITS if name in section]
    return found


def ignored_settings_message(found: list[str]) -> str:
    return (
        f"{', '.join(found)}: batchspawner settings that werkbank's Slurm spawner does not use (it "
        "builds the job from the site file's profiles and runs Slurm's commands as argument "
        "vectors); remove them and describe the job in the site file (profiles, limits, "
        "slurm.job_prologue)"
    )


class WerkbankSlurmSpawner(ServerCerts, SlurmSpawner, SessionSetup):
    """Start single-user servers as Slurm jobs chosen from the site's profiles.

    Traits inherited from batchspawner that are *not* used (``batch_script``, ``exec_prefix``,
    ``req_*``, the ``batch_*_cmd`` strings, ``state_*``: :data:`IGNORED_BATCHSPAWNER_TRAITS`) are
    refused when set, at hub start (``hub_config/jupyterhub_config.py``) and at every
    :meth:`start`.
    """

    policy_config = Dict(
        help="""Profiles, custom fields and limits, as in the site file's ``profiles``,
        ``custom_fields`` and ``limits`` keys (see werkbank_core.policy).""",
    ).tag(config=True)

    slurm_conf = Unicode(
        "", help="Path of slurm.conf if not the default; exported as SLURM_CONF to every command."
    ).tag(config=True)

    slurm_bin_dir = Unicode("/usr/bin", help="Directory holding sbatch, squeue, scancel, sinfo.").tag(
        config=True
    )

    sbatch_cmd = List(Unicode(), help="Argument vector for sbatch (default: <slurm_bin_dir>/sbatch).").tag(
        config=True
    )
    squeue_cmd = List(Unicode(), help="Argument vector for squeue (run as the hub user).").tag(config=True)
    scancel_cmd = List(Unicode(), help="Argument vector for scancel (run as the job's user).").tag(
        config=True
    )
    sinfo_cmd = List(Unicode(), help="Argument vector for sinfo (run as the hub user).").tag(config=True)
    scontrol_cmd = List(
        Unicode(), help="Argument vector for scontrol, which expands node lists (run as the hub user)."
    ).tag(config=True)

    @default("sbatch_cmd")
    def _sbatch_cmd_default(self):
        return [os.path.join(self.slurm_bin_dir, "sbatch")]

    @default("squeue_cmd")
    def _squeue_cmd_default(self):
        return [os.path.join(self.slurm_bin_dir, "squeue")]

    @default("scancel_cmd")
    def _scancel_cmd_default(self):
        return [os.path.join(self.slurm_bin_dir, "scancel")]

    @default("sinfo_cmd")
    def _sinfo_cmd_default(self):
        return [os.path.join(self.slurm_bin_dir, "sinfo")]

    @default("scontrol_cmd")
    def _scontrol_cmd_default(self):
        return [os.path.join(self.slurm_bin_dir, "scontrol")]

    sudo_cmd = List(
        Unicode(),
        default_value=["sudo", "-n", "-u", "{username}"],
        help="""Prefix that runs sbatch/scancel/mkdir as the user; ``{username}`` is replaced by
        the (validated) user name. A hub that does not run as root needs a sudoers rule with
        SETENV for sbatch, scancel and mkdir. Empty: run the commands as the hub user.""",
    ).tag(config=True)

    queue_poll_interval = Float(
        2.0, help="Seconds between the shared squeue calls (one call answers for all servers)."
    ).tag(config=True)

    unreachable_grace = Float(
        600.0,
        help="""Seconds a server is kept while the scheduler does not answer; after that the
        hub reports it stopped. Slurm restarts and controller fail-overs take a minute or two.""",
    ).tag(config=True)

    job_prologue = Unicode(
        "", help="Trusted admin shell lines run in the job before Jupyter (e.g. module load)."
    ).tag(config=True)

    job_name = Unicode("werkbank-jupyter", help="Slurm job name of the servers.").tag(config=True)

    port_range = Tuple(
        Integer(),
        Integer(),
        default_value=PORT_RANGE,
        help="""Ports (first, last) a server may listen on: the job picks a free one in the range
        and the hub refuses a report outside it, so that no server's route can point at another
        service on the node (the hub's API, MLflow, a database).""",
    ).tag(config=True)

    @validate("port_range")
    def _check_port_range(self, proposal):
        low, high = proposal["value"]
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"port_range {low}-{high}: need 1024 <= first <= last <= 65535")
        return proposal["value"]

    job_log_dir = Unicode(
        "{homedir}/.werkbank/logs",
        help="Where the job's output file goes; {homedir} is the user's home directory.",
    ).tag(config=True)

    server_path = Unicode(
        help="Directory put first on PATH in the job: where jupyterhub-singleuser lives "
        "(default: the hub's own Python environment, which must be readable by users).",
    ).tag(config=True)

    @default("server_path")
    def _server_path_default(self):
        return os.path.dirname(sys.executable)

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return validate_user_options

    @default("options_form")
    def _options_form_default(self):
        return render_options_form

    @default("default_url")
    def _default_url_default(self):
        return "/lab"

    @default("poll_interval")
    def _poll_interval_default(self):
        # Cheap: poll() reads the shared queue's cache. Keeps "job vanished" noticed in seconds.
        return 5

    # Explicit state beyond batchspawner's job_id/job_status.
    job_request: JobRequest | None = None
    last_end_reason: str = ""
    #: The job whose script reported that its server ended (:meth:`job_ended`), until cleared.
    _reported_end: str = ""
    #: The database id of the server's API token (:mod:`.server_tokens`): kept in the state, since
    #: JupyterHub keeps the token itself in memory only and a restarted hub no longer knows it.
    server_token_id: int = 0
    #: Whether that report was a signal, whose cause (scancel, time limit, preemption) only Slurm
    #: can name: :meth:`_take_slurms_reason`.
    _reported_signal: bool = False
    _end_task: asyncio.Future | None = None

    _queues: ClassVar[dict[tuple, SlurmQueue]] = {}
    _addresses: ClassVar[dict[tuple, NodeAddresses]] = {}

    # -- configuration-derived helpers

    _policy: Policy | None = None

    @observe("policy_config")
    def _policy_config_changed(self, change):
        self._policy = None

    @property
    def policy(self) -> Policy:
        """The site policy, built once from ``policy_config`` (the hub validated it at start)."""
        if self._policy is None:
            self._policy = policy_from_dict(self.policy_config)
        return self._policy

    @property
    def user_groups(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", [])]

    workshops_dir = Unicode(
        "",
        help="""The hub's course store (werkbank_spawner.workshop.store): a participant of an
        open course gets the course's profile only, in its reservation. Empty: no courses.""",
    ).tag(config=True)

    @property
    def course(self) -> CourseRecord | None:
        """The open course this user takes part in, if any (read at every use: courses are
        created and ended while the hub runs)."""
        if not self.workshops_dir:
            return None
        record = participant_course(CourseStore(self.workshops_dir), self.user.name, self.user_groups)
        return record if record is not None and record.is_open() else None

    @property
    def user_policy(self) -> Policy:
        """What this user may choose: their open course's profile, or the site's policy."""
        return self.policy_for(self.course)

    def policy_for(self, course: CourseRecord | None) -> Policy:
        """The policy for this user when :attr:`course` is ``course`` (read once by the caller)."""
        return course_policy(course) if course is not None else self.policy

    def _slurm_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    @property
    def queue(self) -> SlurmQueue:
        """The queue shared by every spawner with the same squeue command and interval."""
        key = (tuple(self.squeue_cmd), self.slurm_conf, self.queue_poll_interval)
        if key not in self._queues:
            self._queues[key] = SlurmQueue(
                self.squeue_cmd, env=self._slurm_env(), interval=self.queue_poll_interval
            )
        return self._queues[key]

    @property
    def node_addresses(self) -> NodeAddresses:
        key = (tuple(self.sinfo_cmd), self.slurm_conf)
        if key not in self._addresses:
            self._addresses[key] = NodeAddresses(self.sinfo_cmd, env=self._slurm_env())
        return self._addresses[key]

    # -- form

    def options_from_form(self, formdata):
        """Form fields arrive as lists of strings; keep one value per known key.

        Unknown keys are passed on so that validation rejects them by name.
        """
        options = {}
        for key, values in formdata.items():
            if key == "_xsrf":
                continue
            value = values[0] if isinstance(values, list) and len(values) == 1 else values
            options[key] = value.strip() if isinstance(value, str) else value
        return options

    # -- environment

    def get_env(self):
        env = super().get_env()
        env.update(mlflow_env(self, env))
        env.update(self.session_env())
        course = self.course
        if course is not None:
            # The course's idle timeout (the workshop service stops the server; the site's culler
            # too, if it is shorter), which JupyterLab warns before; the course's name.
            timeouts = [course.idle_seconds, *([self.idle_timeout] if self.idle_timeout else [])]
            env["WERKBANK_IDLE_TIMEOUT"] = str(min(timeouts))
            env["WERKBANK_COURSE"] = course.name
            if course.course.material is not None:
                # The first page: nbgitpuller brings the material, then JupyterLab opens it.
                env["JUPYTERHUB_DEFAULT_URL"] = material_url(course)
        if self.job_request is not None:
            env["WERKBANK_PROFILE"] = self.job_request.describe()
        # For `werkbank submit` in the session: the profiles and limits of this user only.
        env["WERKBANK_POLICY"] = json.dumps(
            self.policy_for(course).view_for(self.user_groups), separators=(",", ":")
        )
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        env[PORT_RANGE_ENV] = "{}-{}".format(*self.port_range)
        return env

    # -- state

    def load_state(self, state):
        super().load_state(state)
        self.last_end_reason = state.get("last_end_reason", "")
        self.server_token_id = int(state.get("server_token_id", 0))

    def get_state(self):
        state = super().get_state()
        if self.last_end_reason:
            state["last_end_reason"] = self.last_end_reason
        if self.server_token_id:
            state["server_token_id"] = self.server_token_id
        return state

    def clear_state(self):
        super().clear_state()
        self.job_request = None
        self.port = 0
        self._reported_end = ""
        # After a hub restart JupyterHub's stop cannot find the server's token to delete it.
        if self.server_token_id and self.db is not None and self.user is not None:
            delete_server_token(self.db, self.server_token_id, self.user.id)
        self.server_token_id = 0
        # _reported_signal stays: JupyterHub clears the state as it stops the server, before
        # Slurm may have named the signal's cause (_end_reported_job).

    # -- commands

    async def _run(self, argv: list[str], *, stdin: str | None = None, env=None, timeout=60.0) -> str:
        """Run an argument vector (no shell); return stdout or raise SlurmCommandError."""
        self.log.debug("werkbank: running %s", argv)
        completed = await run(
            argv, env=env if env is not None else self._slurm_env(), stdin=stdin, timeout=timeout
        )
        return completed.check()

    def _as_user(self, argv: list[str]) -> list[str]:
        name = self._username()
        prefix = [part.replace("{username}", name) for part in self.sudo_cmd]
        if self.slurm_conf and prefix and os.path.basename(prefix[0]) == "sudo":
            # sudo resets the environment: without this, scancel would ask /etc/slurm's cluster
            # (where the same job id may be another job), as sbatch_argv keeps it for sbatch.
            prefix.insert(1, "--preserve-env=SLURM_CONF")
        return prefix + argv

    def _username(self) -> str:
        name = self.user.name
        if not USERNAME.match(name):
            raise web.HTTPError(400, f"user name {name!r} is not a valid Linux account name")
        return name

    def _job_context(self) -> JobContext:
        name = self._username()
        home = server_account(name, self.min_uid).pw_dir
        return JobContext(
            username=name,
            homedir=home,
            log_dir=self.job_log_dir.replace("{homedir}", home),
            job_name=self.job_name,
        )

    def get_args(self):
        return [*super().get_args(), *SERVER_GATE_ARGS]

    def _server_command(self) -> list[str]:
        # No batchspawner-singleuser: the script reports the port itself (script.PORT_REPORT).
        return [*self.cmd, *self.get_args()]

    # -- the lifecycle

    async def submit_batch_script(self) -> str:
        """Render and submit the job; set and return ``self.job_id``."""
        if self.job_request is None:  # apply_user_options did not run (e.g. overridden)
            validate_user_options(self, self.user_options)
        ctx = self._job_context()
        course = self.course
        script = render_script(
            self.job_request,
            ctx,
            self._server_command(),
            path_prefix=self.server_path,
            prologue=self.job_prologue,
            git_safe_directory=local_repository(course) if course else "",
        )
        if not os.path.isdir(ctx.log_dir):
            # As the user, never as root: a symlink in their home must not make root write.
            await self._run(self._as_user(["mkdir", "-p", ctx.log_dir]))
        env = self.get_env()
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        keep = sorted(k for k in env if k not in ("PATH", "HOME", "USER", "SHELL", "LOGNAME"))
        argv = sbatch_argv(self.sudo_cmd, self.sbatch_cmd, ctx.username, keep)
        self.log.info("werkbank: submitting %s for %s", self.job_request.describe(), ctx.username)
        self.log.debug("werkbank: batch script:\n%s", script)
        try:
            out = await self._run(argv, stdin=script, env=env)
        except SlurmCommandError as e:
            raise web.HTTPError(500, f"Slurm refused the job: {e}") from None
        self.job_id = parse_job_id(out)
        return self.job_id

    async def start(self):
        """Submit the job and return ``(address, port)`` once the server reports its port."""
        if found := ignored_settings(self.config):
            raise web.HTTPError(500, ignored_settings_message(found))
        self.port = 0
        self.last_end_reason = ""
        self._port_reported = asyncio.Event()
        self.server_token_id = server_token_id(self.db, self.api_token)
        # Alongside the job's submission and start, which take longer.
        tracking = asyncio.ensure_future(self.prepare_tracking())
        await self.submit_batch_script()
        self.queue.watch(self.job_id)
        self.db.commit()
        self.log.info("werkbank: job %s submitted for %s", self.job_id, self.user.name)
        address = await self._wait_until_serving()
        self.log.info("werkbank: job %s serves at %s:%s", self.job_id, address, self.port)
        # Usually done long before; if MLflow is still starting, the session need not wait for
        # it (the check goes on, and the session's first run creates the experiment otherwise).
        await asyncio.wait({tracking}, timeout=5)
        return address, self.port

    def report_port(self, port: int) -> None:
        """Called by the API handler when the job says where its server listens; raises
        ``ValueError`` for a port outside :attr:`port_range` (the handler answers 400)."""
        low, high = self.port_range
        if not low <= port <= high:
            raise ValueError(f"port {port} is outside the range servers may use ({low}-{high})")
        event = getattr(self, "_port_reported", None)
        if event is None or event.is_set():
            # A running server keeps the port its route was made for.
            raise ValueError("this server is not starting: its port was reported already")
        self.port = port
        event.set()

    async def _wait_until_serving(self) -> str:
        """Wait for the port report and until the server accepts connections; return the
        node's address. Raise if the job dies first."""
        while True:
            reported = asyncio.ensure_future(self._port_reported.wait())
            updated = asyncio.ensure_future(self.queue.wait_for_update(self.queue_poll_interval * 2))
            await asyncio.wait({reported, updated}, return_when=asyncio.FIRST_COMPLETED)
            reported.cancel()
            updated.cancel()
            if self.port:
                info = await self.queue.refresh(self.job_id)
                if info is not None and info.state is JobState.RUNNING and info.nodes:
                    first, *_ = await slurm.hostnames(
                        info.nodes, scontrol=self.scontrol_cmd, env=self._slurm_env(), timeout=30
                    )
                    address = await self.node_addresses.address(first)
                    await self._wait_listening(address, self.port)
                    return address
                await asyncio.sleep(0.2)  # reported, but Slurm does not say RUNNING yet
            self._raise_if_gone()

    async def _wait_listening(self, address: str, port: int) -> None:
        """Return once Jupyter accepts TCP connections.

        The port is reported before Jupyter has imported itself (seconds). JupyterHub's own
        readiness check backs off exponentially from the moment start() returns, so returning
        early costs about half a second on every spawn; a cheap connect loop here does not.
        """
        while True:
            try:
                # asyncio.timeout: a cancelled spawn stays cancelled (see SlurmQueue.wait_for_update).
                async with asyncio.timeout(1):
                    _, writer = await asyncio.open_connection(address, port)
            except (OSError, TimeoutError):
                self._raise_if_gone()
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def _raise_if_gone(self) -> None:
        if self._reported_end and self._reported_end == self.job_id:
            raise RuntimeError(
                f"The Slurm job stopped before Jupyter started: {self.last_end_reason}. "
                f"Its output is in {self._job_context().log_dir}/jupyter-{self.job_id}.log"
            )
        info = self.queue.get(self.job_id)
        if info is None or info.state is not JobState.GONE:
            return
        self.last_end_reason = info.explain()
        self.queue.unwatch(self.job_id)
        log_dir = self._job_context().log_dir
        raise RuntimeError(
            f"The Slurm job stopped before Jupyter started: {self.last_end_reason}. "
            f"Its output is in {log_dir}/jupyter-{self.job_id}.log"
        )

    async def poll(self):
        """None while the job is pending or running (or Slurm is briefly unreachable), else 1."""
        if not self.job_id:
            return 0
        if self._reported_end == self.job_id:
            # Its script said so (job_ended); the job id stays for stop(), which cancels the job.
            return 1
        self.queue.watch(self.job_id)
        info = self.queue.get(self.job_id) or await self.queue.refresh(self.job_id)
        if info is None or info.state is JobState.PENDING:
            return None
        if info.state is JobState.RUNNING:
            if not (lost := await self._node_lost(info)):
                return None
            self.last_end_reason = lost
            try:  # Slurm would requeue it once the node is DOWN, or let it run on if the node answers
                await self._run(self._as_user([*self.scancel_cmd, self.job_id]), timeout=10)
            except SlurmCommandError as e:
                self.log.error("werkbank: scancel %s failed: %s", self.job_id, e)
        elif info.state is JobState.UNREACHABLE:
            waited = time.monotonic() - info.since
            if waited < self.unreachable_grace:
                self.log.warning(
                    "werkbank: Slurm unreachable for %.0f s; keeping %s's server (job %s) for up to %.0f s",
                    waited,
                    self.user.name,
                    self.job_id,
                    self.unreachable_grace,
                )
                return None
            self.last_end_reason = f"Slurm did not answer for {waited:.0f} s ({info.error})"
        else:
            info = await self._final_state(info)
            self.last_end_reason = info.explain()
        self.log.warning("werkbank: %s's server stopped: %s", self.user.name, self.last_end_reason)
        self.queue.unwatch(self.job_id)
        self.job_id = ""
        return 1

    async def _node_lost(self, info: JobInfo) -> str:
        """Why the node of this running server is lost, or "" (also when in doubt).

        A node whose link goes down takes its server with it, but the job's own end report cannot
        cross the dead link, and Slurm acts only when it sets the node DOWN: it requeues the job,
        which the queue then shows PENDING, as if the server were still to start. Two witnesses
        tell sooner: the hub cannot open a TCP connection to the server (only the node's kernel
        need answer), and Slurm marks the node not responding (sinfo's "*", once its pings fail).
        Either alone is no proof: a connection attempt can be lost, a slurmd restart can miss a
        ping. A refused connection means the node is there and Jupyter ended, which the job reports."""
        server = self.server
        if server is None or not server.port or not info.nodes:
            return ""
        try:
            async with asyncio.timeout(LOST_NODE_CONNECT_TIMEOUT):
                _, writer = await asyncio.open_connection(server.ip, server.port)
        except ConnectionRefusedError:
            return ""
        except (OSError, TimeoutError):
            pass  # no answer, or no route: ask Slurm
        else:
            writer.close()
            return ""
        argv = [*self.sinfo_cmd, "--noheader", "--Node", f"--nodes={info.nodes}", "--format=%N %T"]

        async def not_responding() -> str:
            try:
                out = await self._run(argv, timeout=5)
            except SlurmCommandError:
                return ""  # Slurm does not answer: no witness (poll() keeps the server, as then)
            return ", ".join(line.strip() for line in out.splitlines() if line.strip().endswith("*"))

        try:
            states = await exponential_backoff(
                not_responding, "", start_wait=0.5, max_wait=1, timeout=LOST_NODE_SLURM_WAIT
            )
        except TimeoutError:
            return ""
        return (
            f"its node does not respond (Slurm: {states}) and the hub cannot reach the server at "
            f"{server.ip}:{server.port}; job {self.job_id} is cancelled"
        )

    def job_ended(self, job_id: str, how: str, status: int) -> str:
        """The job script's report that the server ends (``api.ServerEndedHandler``): ``how`` is
        "signal" (Slurm told the job to end) or "exit" (Jupyter exited with ``status``).

        Returns what happened: "not this job" (a late report of an earlier job), "stopping" (the
        hub ends the server already), "ending" (the hub now handles the end as if its poll had
        found it: the route goes, the server is stopped and its job cancelled), or "start fails"
        (the server was still starting; start() raises)."""
        if not self.job_id or job_id != self.job_id:
            return "not this job"
        if self.pending == "stop" or self._reported_end == job_id:
            return "stopping"
        if how == "signal":
            reason = f"Slurm ended job {job_id} (scancel, its time limit, or preemption)"
        else:
            reason = f"Jupyter exited with status {status} in job {job_id}"
        self.last_end_reason = f"{reason}; reported by the job"
        self._reported_end = job_id
        self._reported_signal = how == "signal"
        self.log.warning("werkbank: %s's server ended: %s", self.user.name, self.last_end_reason)
        if self.pending == "spawn":
            self.queue.notify()  # start() is waiting for news of the job
            return "start fails"
        # In the background: the job's script is not kept waiting while the hub stops the server.
        self._end_task = asyncio.ensure_future(self._end_reported_job(job_id))
        return "ending"

    async def _end_reported_job(self, job_id: str) -> None:
        """What a job's report starts: JupyterHub's handling of a server its poll found ended (the
        route deleted, the server stopped), then the job's end made sure of. JupyterHub does not
        call stop() for such a server, so a job that is still RUNNING after its report (a report
        that was not true) is cancelled here; Slurm's reason, once it has one, replaces the report's
        general one in the message the user sees next."""
        await self.poll_and_notify()
        self.queue.watch(job_id)  # watched since start(); made sure of after a hub restart
        info = await self.queue.refresh(job_id)
        try:
            if info is not None and info.state in (JobState.PENDING, JobState.RUNNING):
                self.log.warning("werkbank: job %s reported its end but still runs: cancelling it", job_id)
                await self._run(self._as_user([*self.scancel_cmd, job_id]))
            elif info is not None and not self.job_id and self._take_slurms_reason(info):
                if self.orm_spawner is not None:  # the hub saved the state as the server stopped
                    self.orm_spawner.state = self.get_state()
                    self.db.commit()
        except SlurmCommandError as e:
            self.log.error("werkbank: scancel %s failed: %s", job_id, e)
        finally:
            self.queue.unwatch(job_id)

    async def _final_state(self, info: JobInfo, wait: float = 3.0) -> JobInfo:
        """A job seen COMPLETING is ending; Slurm knows why (CANCELLED, TIMEOUT, ...) a moment
        later. Ask again briefly so the user is told the reason, not "COMPLETING"."""
        if info.slurm_state != "COMPLETING":
            return info
        latest = info

        async def ended() -> JobInfo | None:
            nonlocal latest
            latest = await self.queue.refresh(self.job_id) or latest
            return latest if latest.slurm_state != "COMPLETING" else None

        try:
            return await exponential_backoff(
                ended, "still COMPLETING", start_wait=0.1, max_wait=1, timeout=wait
            )
        except TimeoutError:
            return latest

    async def stop(self, now=False):
        """Cancel the job; unless ``now``, wait (bounded) until Slurm no longer runs it."""
        job_id = self.job_id
        if not job_id:
            return
        if self._reported_end == job_id and await self._ending_already(job_id):
            return
        self.log.info("werkbank: cancelling job %s of %s", job_id, self.user.name)
        try:
            await self._run(self._as_user([*self.scancel_cmd, job_id]))
        except SlurmCommandError as e:
            # After the job reported its end, Slurm may be done with it already: to be expected.
            log = self.log.info if self._reported_end == job_id else self.log.error
            log("werkbank: scancel %s failed: %s", job_id, e)
        if not now:

            async def not_running() -> bool:
                info = await self.queue.refresh(job_id)
                return info is None or info.state is not JobState.RUNNING

            try:
                await exponential_backoff(not_running, "", start_wait=0.1, max_wait=1, timeout=10)
            except TimeoutError:
                self.log.warning("werkbank: job %s still runs 10 s after scancel", job_id)
        self.queue.unwatch(job_id)

    async def _ending_already(self, job_id: str) -> bool:
        """After the job's report: whether Slurm ends the job already, so that no scancel is needed
        (one shared squeue for every server stopping at once, not a ``sudo scancel`` each: 30
        of those took seconds of the hub's CPU after a mass scancel). A report Slurm does not
        confirm (the job still RUNNING) gets the scancel."""
        info = await self.queue.refresh(job_id)
        if info is None or info.state is not JobState.GONE:
            return False
        self._take_slurms_reason(info)
        self.log.info("werkbank: job %s of %s ends already (%s)", job_id, self.user.name, info.slurm_state)
        self.queue.unwatch(job_id)
        return True

    def _take_slurms_reason(self, info: JobInfo) -> bool:
        """A job that reported a signal could not say which (scancel, time limit, preemption);
        once Slurm has ended the job (not "" or COMPLETING), its reason replaces the report's
        general one in what the user is told. Returns whether it did."""
        if not self._reported_signal or info.slurm_state in ("", "COMPLETING"):
            return False
        self.last_end_reason = f"{info.explain()}; reported by the job"
        self._reported_signal = False
        return True

    async def progress(self):
        """Messages for the spawn-pending page: job id, state, pending reason, expected start."""
        last = None
        while True:
            info = self.queue.get(self.job_id) if self.job_id else None
            message, percent = progress_message(self.job_id, info, self.port)
            if message != last:
                yield {"progress": percent, "message": message}
                last = message
            await self.queue.wait_for_update(self.queue_poll_interval * 2)


def progress_message(job_id: str, info: JobInfo | None, port: int) -> tuple[str, int]:
    if not job_id:
        return "Submitting the Slurm job…", 10
    if info is None:
        return f"Slurm job {job_id} submitted", 20
    if info.state is JobState.PENDING:
        text = f"Slurm job {job_id} is pending"
        if info.reason:
            text += f" (reason: {info.reason})"
        if info.start_time:
            text += f"; estimated start {info.start_time}"
        return text, 30
    if info.state is JobState.RUNNING:
        where = f" on {info.nodes}" if info.nodes else ""
        if port:
            return f"Slurm job {job_id} running{where}; Jupyter is starting on port {port}", 80
        return f"Slurm job {job_id} running{where}; starting Jupyter…", 60
    if info.state is JobState.UNREACHABLE:
        return f"Slurm job {job_id}: the scheduler is not answering, retrying…", 30
    return f"Slurm job {job_id}: {info.explain()}", 100


class WerkbankLocalSpawner(LocalProcessSpawner, SessionSetup):
    """Fallback where Slurm is not available (not root, not Debian/Ubuntu): servers run as
    local processes. Clearly labelled as such on the spawn page and in WERKBANK_PROFILE."""

    LABEL = "Local process (no Slurm on this machine; demo fallback, no GPUs, no limits)"

    policy_config = Dict(help="Ignored here: there is no scheduler to apply it.").tag(config=True)

    @default("options_form")
    def _options_form_default(self):
        return f'<p class="alert alert-warning">{self.LABEL}</p>'

    @default("default_url")
    def _default_url_default(self):
        return "/lab"

    @default("cmd")
    def _cmd_default(self):
        # The hub's own environment, whatever PATH the hub was started with.
        return [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]

    def options_from_form(self, formdata):
        return {}

    def get_args(self):
        return [*super().get_args(), *SERVER_GATE_ARGS]

    async def start(self):
        server_account(self.user.name, self.min_uid)  # before the process is started as them
        await self.prepare_tracking()
        return await super().start()

    def make_preexec_fn(self, name):
        """As root: switch to the user (JupyterHub's way). Not root (``make demo`` by a plain
        user): servers run as the hub's own account, which is the only user allowed then."""
        if os.geteuid() == 0:
            return super().make_preexec_fn(name)
        if name != pwd.getpwuid(os.geteuid()).pw_name:
            raise web.HTTPError(
                403, f"this hub runs without root and can start servers only for its own user, not {name!r}"
            )
        return None

    def get_env(self):
        env = super().get_env()
        env["WERKBANK_PROFILE"] = "local: " + self.LABEL
        env.update(mlflow_env(self, env))
        env.update(self.session_env())
        return env


def mlflow_env(spawner: WerkbankSlurmSpawner | WerkbankLocalSpawner, env: dict[str, str]) -> dict[str, str]:
    """MLFLOW_TRACKING_URI and, for the hub's MLflow proxy, MLFLOW_TRACKING_TOKEN: the server's
    own API token (in ``env`` from JupyterHub), whose ``server`` role includes access to the
    proxy service. An empty mapping without a tracking URI.

    Also MLFLOW_EXPERIMENT_NAME ``<user>/default``: where ``mlflow.start_run()`` logs before the
    code picks an experiment. MLflow's own default, experiment 0, is shared by everybody, which
    MLflow's permission checks therefore close to all but admins.

    And MLflow's telemetry off (:data:`~werkbank_spawner.tracking.NO_TELEMETRY`), with or without
    a tracking server: the client reports usage on its own.

    With the hub's internal_ssl the proxy serves TLS with a certificate of the hub's CA:
    MLFLOW_TRACKING_SERVER_CERT_PATH is then the CA bundle the server checks the hub API with
    (JUPYTERHUB_SSL_CLIENT_CA, in the user's certificate folder), so that MLflow's client checks
    the proxy against the hub's CA and nothing else.
    """
    out = dict(NO_TELEMETRY)
    if spawner.mlflow_tracking_uri:
        out["MLFLOW_TRACKING_URI"] = spawner.mlflow_tracking_uri
        if spawner.mlflow_send_token and env.get("JUPYTERHUB_API_TOKEN"):
            out["MLFLOW_TRACKING_TOKEN"] = env["JUPYTERHUB_API_TOKEN"]
        if spawner.mlflow_send_token:
            # MLflow's "View run at <MLFLOW_TRACKING_URI>/#/..." would show the address jobs reach
            # the hub's MLflow at, which a browser cannot use; werkbank_lab.tracking.run_url gives
            # the one it can.
            out["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        if env.get("JUPYTERHUB_USER"):
            out["MLFLOW_EXPERIMENT_NAME"] = f"{env['JUPYTERHUB_USER']}/default"
        if spawner.mlflow_send_token and env.get("JUPYTERHUB_SSL_CLIENT_CA") and spawner.internal_ssl:
            out["MLFLOW_TRACKING_SERVER_CERT_PATH"] = env["JUPYTERHUB_SSL_CLIENT_CA"]
    return out


__all__ = ["OPTION_KEYS", "WerkbankLocalSpawner", "WerkbankSlurmSpawner", "validate_user_options"]
