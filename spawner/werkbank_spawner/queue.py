"""One shared view of the Slurm queue for every werkbank server in this hub.

Stock batchspawner runs one ``squeue`` per spawner every 0.5 s while starting and one per
hub poll afterwards, each behind ``sudo``: 30 pending spawns cost ~50 scheduler calls per
second. :class:`SlurmQueue` instead asks once per interval about *all* watched jobs
(``squeue -j id1,id2,...``; any user may read the queue, so no ``sudo``) and every spawner
reads the cached answer. Callers that need fresh data (a job just reported its port, the hub
restarted) call :meth:`SlurmQueue.refresh`, which joins a refresh already under way.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from werkbank_core.slurm import SlurmCommandError, run

log = logging.getLogger(__name__)

# Slurm's long state names (squeue %T), sorted into what they mean for a Jupyter server.
PENDING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
# A suspended job keeps its server (it resumes); COMPLETING means it is already ending.
RUNNING_STATES = frozenset({"RUNNING", "SUSPENDED"})

# What squeue prints when the controller does not answer, as opposed to an unknown job.
_INVALID_JOB = "Invalid job id specified"
_FIELDS = "%i|%T|%r|%S|%N"


class JobState(enum.Enum):
    """What a server's Slurm job is, from the hub's point of view."""

    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"  # ended or unknown to Slurm: the server is not coming back
    UNREACHABLE = "unreachable"  # the scheduler did not answer: nothing is known


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: JobState
    slurm_state: str = ""  # PENDING, RUNNING, CANCELLED, TIMEOUT, ... ("" if unknown)
    reason: str = ""  # pending reason (Priority, Resources, ...) or why it ended
    start_time: str = ""  # expected start while pending, actual start once running
    nodes: str = ""  # node list once running
    since: float = 0.0  # time.monotonic() when this state was first seen
    error: str = ""  # the scheduler's error text while UNREACHABLE

    def explain(self) -> str:
        """A sentence for the user about a job that is gone."""
        if not self.slurm_state:
            return f"job {self.job_id} is no longer known to Slurm"
        if self.slurm_state == "COMPLETING":  # seen before Slurm recorded why it ended
            return f"job {self.job_id} ended"
        text = f"job {self.job_id} ended: {self.slurm_state}"
        if self.slurm_state == "TIMEOUT":
            text += " (walltime reached)"
        elif self.slurm_state == "CANCELLED":
            text += " (cancelled)"
        elif self.reason and self.reason not in ("None", "(null)"):
            text += f" ({self.reason})"
        return text


def parse_squeue(output: str, now: float, previous: Mapping[str, JobInfo]) -> dict[str, JobInfo]:
    """Parse ``squeue -h -o '%i|%T|%r|%S|%N'`` output into JobInfo by job id."""
    jobs = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        job_id, slurm_state, reason, start, nodes = parts
        slurm_state = slurm_state.split()[0] if slurm_state else ""
        if slurm_state in PENDING_STATES:
            state = JobState.PENDING
        elif slurm_state in RUNNING_STATES:
            state = JobState.RUNNING
        else:
            state = JobState.GONE
        old = previous.get(job_id)
        jobs[job_id] = JobInfo(
            job_id=job_id,
            state=state,
            slurm_state=slurm_state,
            reason="" if reason in ("None", "(null)") else reason,
            start_time="" if start in ("N/A", "Unknown", "(null)") else start,
            nodes="" if nodes in ("(null)", "") else nodes,
            since=old.since if old and old.state is state else now,
        )
    return jobs


class SlurmQueue:
    """Shared, cached ``squeue`` state for a set of watched job ids.

    A background task refreshes every ``interval`` seconds while any job is watched, and
    stops when none is. ``calls`` counts scheduler invocations (for tests and benchmarks).
    """

    def __init__(
        self,
        squeue: list[str],
        *,
        env: Mapping[str, str] | None = None,
        interval: float = 2.0,
        timeout: float = 20.0,
    ):
        self.squeue = list(squeue)
        self.env = dict(env) if env is not None else None
        self.interval = interval
        self.timeout = timeout
        self.calls = 0
        self._watched: set[str] = set()
        self._info: dict[str, JobInfo] = {}
        self._inflight: asyncio.Future | None = None
        self._updated: asyncio.Event = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    # -- what spawners use

    def watch(self, job_id: str) -> None:
        """Start following ``job_id`` (idempotent) and make sure the refresher runs."""
        self._watched.add(job_id)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._run())

    def unwatch(self, job_id: str) -> None:
        self._watched.discard(job_id)
        self._info.pop(job_id, None)

    def get(self, job_id: str) -> JobInfo | None:
        """The last known state, or None if not yet observed."""
        return self._info.get(job_id)

    async def refresh(self, job_id: str | None = None) -> JobInfo | None:
        """Fresh state now (joining a refresh under way); returns ``job_id``'s info."""
        for _ in range(2):
            # A refresh already in flight may have started before job_id was watched.
            started_with = set(self._watched)
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._query())
            inflight = self._inflight
            await asyncio.shield(inflight)
            if job_id is None or job_id in started_with:
                break
        return self._info.get(job_id) if job_id else None

    async def wait_for_update(self, timeout: float | None = None) -> None:
        """Wait until the next refresh completes (or ``timeout`` passes).

        ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter returns normally
        when it is cancelled in the moment the event fires, and a cancelled progress generator
        that carries on hangs JupyterHub's progress stream (tests/unit/test_queue.py)."""
        event = self._updated
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass

    def notify(self) -> None:
        """Wake whoever waits for an update, without asking Slurm: news of a job from elsewhere
        (its script's report that it ended)."""
        event, self._updated = self._updated, asyncio.Event()
        event.set()

    # -- internals

    async def _run(self) -> None:
        while self._watched:
            try:
                await self.refresh()
            except Exception:  # keep polling; one broken call must not stop the poller
                log.exception("werkbank: squeue refresh failed")
            await asyncio.sleep(self.interval)

    async def _query(self) -> None:
        try:
            ids = sorted(self._watched, key=int)
            if ids:
                await self._query_ids(ids)
        finally:
            self._inflight = None
            self.notify()

    async def _query_ids(self, ids: list[str]) -> None:
        argv = [*self.squeue, "--noheader", "--states=all", "--jobs=" + ",".join(ids), "--format=" + _FIELDS]
        self.calls += 1
        now = time.monotonic()
        try:
            completed = await run(argv, env=self.env, timeout=self.timeout)
        except SlurmCommandError as e:
            self._mark_unreachable(ids, now, str(e))
            return
        stderr = completed.stderr.strip()
        if completed.returncode != 0 and _INVALID_JOB not in stderr:
            self._mark_unreachable(ids, now, stderr or f"squeue exited {completed.returncode}")
            return
        seen = parse_squeue(completed.stdout, now, self._info)
        for job_id in ids:
            if job_id not in self._watched:
                continue  # unwatched while squeue ran
            info = seen.get(job_id)
            if info is None:
                old = self._info.get(job_id)
                if old is not None and old.state is JobState.GONE:
                    info = old  # keep the end state we saw before Slurm forgot the job
                else:
                    info = JobInfo(job_id, JobState.GONE, since=now)
            self._info[job_id] = info

    def _mark_unreachable(self, ids: list[str], now: float, error: str) -> None:
        log.warning("werkbank: Slurm did not answer (%s)", error)
        for job_id in ids:
            old = self._info.get(job_id)
            if old is not None and old.state is JobState.GONE:
                continue
            since = old.since if old and old.state is JobState.UNREACHABLE else now
            self._info[job_id] = JobInfo(job_id, JobState.UNREACHABLE, since=since, error=error)


class NodeAddresses:
    """Slurm node name → ``NodeAddr`` (what the hub must connect to), from one ``sinfo`` call,
    cached; re-read when an unknown node shows up (at most every ``min_age`` seconds)."""

    def __init__(
        self,
        sinfo: list[str],
        *,
        env: Mapping[str, str] | None = None,
        min_age: float = 5.0,
        timeout: float = 10.0,
    ):
        self.sinfo = list(sinfo)
        self.env = dict(env) if env is not None else None
        self.timeout = timeout
        self.min_age = min_age
        self.calls = 0
        self._addresses: dict[str, str] = {}
        self._read_at = -1e9
        self._lock = asyncio.Lock()

    async def address(self, node: str) -> str:
        """The address of ``node``; the name itself if Slurm does not say."""
        async with self._lock:
            if node not in self._addresses and time.monotonic() - self._read_at > self.min_age:
                await self._read()
        return self._addresses.get(node, node)

    async def _read(self) -> None:
        self.calls += 1
        self._read_at = time.monotonic()
        # Bounded: every spawn waits for this lock, and a hung sinfo must not hold them all.
        try:
            out = (
                await run(
                    [*self.sinfo, "--noheader", "--Node", "--format=%N|%o"],
                    env=self.env,
                    timeout=self.timeout,
                )
            ).check()
        except SlurmCommandError as e:
            log.warning("werkbank: sinfo failed: %s", e)
            return
        for line in out.splitlines():
            name, _, addr = line.strip().partition("|")
            if name and addr:
                self._addresses[name] = addr
