"""Running Slurm's commands from the hub: one asynchronous runner for ``sbatch``, ``squeue``,
``scancel`` and ``sinfo``, used by the spawner (:mod:`werkbank_spawner.spawner`) and the shared
queue (:mod:`werkbank_spawner.queue`).

Every command is an argument vector (never a shell), runs with a timeout (a hung ``sinfo`` or
``squeue``, e.g. while ``slurmctld`` restarts, must not hold up every spawn), and is killed
when the timeout passes. What a non-zero exit means is the caller's business: ``squeue`` says
"Invalid job id specified" for a job Slurm has forgotten, which is not an outage.
"""

from __future__ import annotations

import asyncio
import os
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

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0])

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
