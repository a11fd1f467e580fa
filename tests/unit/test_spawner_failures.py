"""WerkbankSlurmSpawner when Slurm's commands fail: real subprocesses (small shell scripts in
place of squeue/scancel, which the spawner runs as argument vectors), no Slurm. The same paths
against the real cluster are in tests/integration/test_spawn.py."""

from __future__ import annotations

import asyncio
import logging
import stat
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from werkbank_core.slurm import SlurmCommandError
from werkbank_spawner.spawner import WerkbankSlurmSpawner

from .test_policy import SITE


def command(tmp_path: Path, name: str, body: str) -> str:
    """An executable shell script standing in for one of Slurm's commands."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def spawner(tmp_path: Path, **traits) -> WerkbankSlurmSpawner:
    user = SimpleNamespace(name="alice", groups=[], url="/user/alice/")
    # A queue of its own (the queue is shared by squeue command and interval).
    if "squeue_cmd" not in traits:
        traits["squeue_cmd"] = [command(tmp_path, "squeue", "exit 0\n")]
    return WerkbankSlurmSpawner(user=user, policy_config=SITE, sudo_cmd=[], **traits)


async def test_a_command_that_does_not_answer_is_killed_and_named(tmp_path):
    s = spawner(tmp_path)
    hang = command(tmp_path, "sbatch", "echo started > $0.ran\nexec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(SlurmCommandError, match=r"^sbatch did not answer in 0.3 s$"):
        await s._run([hang], timeout=0.3)
    assert time.monotonic() - started < 10  # killed, not waited for
    assert Path(hang + ".ran").exists()


async def test_a_failing_command_is_an_error_with_its_message(tmp_path):
    s = spawner(tmp_path)
    refuse = command(tmp_path, "sbatch", "echo 'sbatch: error: invalid partition specified: x' >&2\nexit 1\n")
    with pytest.raises(SlurmCommandError, match=r"^sbatch: error: invalid partition specified: x$"):
        await s._run([refuse])
    silent = command(tmp_path, "scancel", "exit 3\n")
    with pytest.raises(SlurmCommandError, match=r"^exit status 3$"):
        await s._run([silent])
    with pytest.raises(SlurmCommandError, match=r"^sbatch could not be run: No such file or directory$"):
        await s._run([str(tmp_path / "missing" / "sbatch")])


async def test_the_server_is_kept_while_slurm_is_unreachable_then_dropped_with_the_reason(tmp_path, caplog):
    down = command(
        tmp_path, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n"
    )
    s = spawner(tmp_path, squeue_cmd=[down], unreachable_grace=1.0, queue_poll_interval=60)
    s.job_id = "41"
    caplog.set_level(logging.WARNING)
    assert await s.poll() is None  # within the grace period: kept
    assert "Slurm unreachable" in caplog.text and "job 41" in caplog.text
    await asyncio.sleep(1.2)  # no answer from Slurm since the first poll: the grace has passed
    assert await s.poll() == 1
    assert s.last_end_reason.startswith("Slurm did not answer for ")
    assert "Unable to contact slurm controller" in s.last_end_reason
    assert s.job_id == ""  # forgotten: the hub shows the server as stopped, with the reason


async def test_a_failing_scancel_is_logged_and_stop_returns(tmp_path, caplog):
    gone = command(tmp_path, "squeue", "exit 0\n")  # the job is no longer listed
    scancel = command(tmp_path, "scancel", "echo 'scancel: error: Kill job error on job id 42' >&2\nexit 1\n")
    s = spawner(tmp_path, squeue_cmd=[gone], scancel_cmd=[scancel])
    s.job_id = "42"
    caplog.set_level(logging.ERROR)
    await asyncio.wait_for(s.stop(), 30)
    assert "scancel 42 failed: scancel: error: Kill job error on job id 42" in caplog.text
    assert "42" not in s.queue._watched
