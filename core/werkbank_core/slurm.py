"""Running Slurm's commands and reading what they print, for the hub and for sessions.

:func:`run` (asynchronous) serves the hub: the spawner (``werkbank_spawner.spawner``) and the
shared queue (``werkbank_spawner.queue``). :func:`run_sync` serves what runs in a session or a
job: ``werkbank submit/jobs/cancel`` (``werkbank_lab.batch``), the session panel
(``werkbank_lab.widgets``), the job runner (``werkbank_lab.runjob``) and template 01, with
the readers below (:func:`rows`, :func:`time_left`, :func:`parse_time`, :func:`hostnames`,
:func:`node_address`).

Every command is an argument vector (never a shell), runs with a timeout (a hung ``sinfo`` or
``squeue``, e.g. while ``slurmctld`` restarts, must not hold up every spawn), and is killed
when the timeout passes. What a non-zero exit means is the caller's business: ``squeue`` says
"Invalid job id specified" for a job Slurm has forgotten, which is not an outage.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Seconds a command may take by default. Slurm's own client timeout (MessageTimeout, 10 s,
#: retried) is below it, so a controller that does not answer shows as sbatch's own error.
DEFAULT_TIMEOUT = 60.0


class SlurmCommandError(RuntimeError):
    """A Slurm command could not be run, did not answer in time, or (:func:`check`) failed;
    ``str(error)`` says which, in the command's own words where it had any."""


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end: exit status and decoded output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> str:
        """``stdout``, or :class:`SlurmCommandError` with the command's error text."""
        if self.returncode != 0:
            raise SlurmCommandError(self.stderr.strip() or f"exit status {self.returncode}")
        return self.stdout


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Completed:
    """Run ``argv`` (no shell) and wait at most ``timeout`` seconds for it.

    Returns :class:`Completed` whatever the exit status; raises :class:`SlurmCommandError` if
    the command cannot be started or does not finish in time (it is killed then).
    """
    argv = tuple(argv)
    name = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise SlurmCommandError(f"{name} could not be run: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmCommandError(f"{name} did not answer in {timeout:g} s") from None
    except BaseException:  # cancelled: leave no process behind
        proc.kill()
        await proc.wait()
        raise
    return Completed(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def run_sync(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Completed:
    """:func:`run` for synchronous callers: the same result and the same errors."""
    argv = tuple(argv)
    name = os.path.basename(argv[0])
    feed = {"input": stdin.encode()} if stdin is not None else {"stdin": subprocess.DEVNULL}
    try:
        done = subprocess.run(
            argv,
            env=dict(env) if env is not None else None,
            **feed,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except OSError as e:
        raise SlurmCommandError(f"{name} could not be run: {e.strerror or e}") from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError(f"{name} did not answer in {timeout:g} s") from None
    return Completed(
        argv, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


# --- what the commands print -------------------------------------------------------------------


def rows(out: str, fields: int) -> list[list[str]]:
    """The lines of ``squeue --noheader --format a|b|...`` as lists of exactly ``fields`` texts."""
    return [
        [*line.split("|", fields - 1), *[""] * fields][:fields] for line in out.splitlines() if line.strip()
    ]


def parse_time(text: str) -> int | None:
    """Seconds from a Slurm duration (``[D-]HH:MM:SS``, ``MM:SS``, as squeue's ``%L`` prints
    it); None for ``UNLIMITED``, ``INVALID`` or nothing."""
    text = text.strip()
    if not text or not text[0].isdigit():
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds


def time_left_argv(job_id: str, squeue: str = "squeue") -> list[str]:
    """``squeue`` asking for ``job_id``'s time left (``%L``, read by :func:`parse_time`)."""
    return [squeue, "--noheader", "--jobs", job_id, "--format", "%L"]


def time_left(job_id: str, *, squeue: str = "squeue", timeout: float = 15) -> str:
    """What ``squeue -h -j <job> -o %L`` prints for ``job_id``: the time left, e.g. ``3:41:07``
    ("" if Slurm no longer lists the job). Raises :class:`SlurmCommandError`."""
    return run_sync(time_left_argv(job_id, squeue), timeout=timeout).check().strip()


def _plain_hostname(nodelist: str) -> str | None:
    """``nodelist`` itself when it is one plain host name (most jobs: one node), which needs no
    expansion; None for a list or a bracketed range, which only Slurm itself expands."""
    return nodelist if nodelist and not any(c in nodelist for c in "[],") else None


async def hostnames(
    nodelist: str,
    *,
    scontrol: str | Sequence[str] = "scontrol",
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[str]:
    """The host names of a Slurm node list (``gpu[01-03],cpu7``), in order, by
    ``scontrol show hostnames`` (Slurm's own hostlist syntax has more cases than one would parse
    by hand: zero padding, several ranges, nested lists). Raises :class:`SlurmCommandError`."""
    plain = _plain_hostname(nodelist)
    if plain:
        return [plain]
    argv = [scontrol] if isinstance(scontrol, str) else list(scontrol)
    names = (await run([*argv, "show", "hostnames", nodelist], env=env, timeout=timeout)).check().split()
    if not names:
        raise SlurmCommandError(f"no node in {nodelist!r}")
    return names


def node_address(nodelist: str, *, scontrol: str = "scontrol") -> str:
    """The first node of ``nodelist`` (``node[1-3]``) as others reach it: its ``NodeAddr``,
    which may differ from its name (names need not resolve on the other nodes)."""
    plain = _plain_hostname(nodelist)
    names = [plain] if plain else run_sync([scontrol, "show", "hostnames", nodelist]).check().split()
    if not names:
        raise SlurmCommandError(f"no node in {nodelist!r}")
    for token in run_sync([scontrol, "--oneliner", "show", "node", names[0]]).check().split():
        if token.startswith("NodeAddr="):
            return token.split("=", 1)[1]
    return names[0]
