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


def job_in_state(tmp_path: Path, state: str) -> str:
    """squeue that lists job 77 in ``state`` (werkbank's format: id|state|reason|start|nodes)."""
    return command(tmp_path, "squeue", f"echo '77|{state}|None|2026-12-05T10:00:00|node1'\n")


async def test_a_jobs_end_report_counts_only_for_its_current_job(tmp_path):
    s = spawner(tmp_path, squeue_cmd=[job_in_state(tmp_path, "RUNNING")], queue_poll_interval=60)
    s.job_id = "77"
    assert s.job_ended("76", "signal", 0) == "not this job"  # a late report of an earlier job
    assert await s.poll() is None
    s._stop_pending = True  # the hub stops it already (its scancel made the job report)
    assert s.job_ended("77", "signal", 0) == "stopping"
    assert s._reported_end == ""


async def test_a_reported_end_stops_the_server_and_a_job_slurm_still_runs_is_cancelled(tmp_path):
    scancel = command(tmp_path, "scancel", 'echo "$@" >> $0.calls\n')
    s = spawner(tmp_path, squeue_cmd=[job_in_state(tmp_path, "RUNNING")], scancel_cmd=[scancel])
    s.job_id = "77"
    stopped = []
    s.add_poll_callback(lambda: stopped.append(True))  # what JupyterHub registers: user_stopped
    assert s.job_ended("77", "exit", 3) == "ending"
    assert s.last_end_reason == "Jupyter exited with status 3 in job 77; reported by the job"
    await s._end_task
    assert stopped == [True]
    assert await s.poll() == 1
    # Slurm still runs it (a report that was not true): cancelled, since JupyterHub will not call stop().
    assert Path(scancel + ".calls").read_text().split() == ["77"]


async def test_a_reported_signal_takes_slurms_reason_and_cancels_nothing(tmp_path):
    scancel = command(tmp_path, "scancel", 'echo "$@" >> $0.calls\n')
    s = spawner(tmp_path, squeue_cmd=[job_in_state(tmp_path, "TIMEOUT")], scancel_cmd=[scancel])
    s.job_id = "77"
    s.add_poll_callback(s.clear_state)  # as JupyterHub's stop does: the job id forgotten
    assert s.job_ended("77", "signal", 0) == "ending"
    assert "Slurm ended job 77" in s.last_end_reason
    await s._end_task
    assert s.last_end_reason.startswith("job 77 ended: TIMEOUT") and s.last_end_reason.endswith("by the job")
    assert not Path(scancel + ".calls").exists()


def test_commands_run_as_the_user_keep_the_sites_slurm_conf():
    # sudo resets the environment; a site with its own slurm.conf must reach the same cluster with
    # scancel as with sbatch (found on the multi-node test cluster: scancel asked /etc/slurm's).
    user = SimpleNamespace(name="alice", groups=[], url="/user/alice/")
    site = WerkbankSlurmSpawner(
        user=user, policy_config=SITE, slurm_conf="/run/werkbank-multinode/slurm.conf"
    )
    assert site._as_user(["scancel", "7"]) == [
        "sudo", "--preserve-env=SLURM_CONF", "-n", "-u", "alice", "scancel", "7",
    ]  # fmt: skip
    plain = WerkbankSlurmSpawner(user=user, policy_config=SITE)
    assert plain._as_user(["scancel", "7"]) == ["sudo", "-n", "-u", "alice", "scancel", "7"]


async def _no_answer(host, port, **kw):
    """A connection attempt whose SYN is dropped: a node whose link is down."""
    await asyncio.sleep(30)


def _running_on(tmp_path, name: str, job_id: str = "88", node: str = "node2"):
    return [command(tmp_path, name, f'echo "{job_id}|RUNNING|None|2026-01-01T00:00:00|{node}"\n')]


async def test_a_running_server_whose_node_is_lost_is_dropped_with_the_reason_and_cancelled(
    tmp_path, monkeypatch
):
    """Slurm marks the node not responding ("*") and the hub cannot connect to the server: poll()
    reports the server ended, says why, and cancels the job (Slurm would end it only once the node
    is DOWN, or never if it answers again)."""
    monkeypatch.setattr(asyncio, "open_connection", _no_answer)
    sinfo = command(tmp_path, "sinfo", 'echo "node2 mixed*"\n')
    scancel = command(tmp_path, "scancel", f'echo "$@" >> {tmp_path}/scancel.calls\n')
    squeue = _running_on(tmp_path, "squeue")
    s = spawner(tmp_path, squeue_cmd=squeue, sinfo_cmd=[sinfo], scancel_cmd=[scancel])
    s.job_id, s._server = "88", SimpleNamespace(ip="10.77.0.12", port=50123)
    assert await s.poll() == 1
    assert s.last_end_reason == (
        "its node does not respond (Slurm: node2 mixed*) and the hub cannot reach the server at "
        "10.77.0.12:50123; job 88 is cancelled"
    )
    assert (tmp_path / "scancel.calls").read_text() == "88\n"
    assert s.job_id == ""


@pytest.mark.parametrize(
    "sinfo_body",
    [
        'echo "node2 mixed"\n',  # Slurm still hears from the node: the hub's connection alone is no proof
        "echo 'Unable to contact slurm controller' >&2\nexit 1\n",  # Slurm does not answer: no witness
    ],
)
async def test_a_server_the_hub_cannot_reach_is_kept_without_slurms_word(tmp_path, monkeypatch, sinfo_body):
    monkeypatch.setattr(asyncio, "open_connection", _no_answer)
    monkeypatch.setattr("werkbank_spawner.spawner.LOST_NODE_SLURM_WAIT", 1.0)
    sinfo = command(tmp_path, "sinfo", sinfo_body)
    s = spawner(tmp_path, squeue_cmd=_running_on(tmp_path, "squeue"), sinfo_cmd=[sinfo])
    s.job_id, s._server = "88", SimpleNamespace(ip="10.77.0.12", port=50123)
    assert await s.poll() is None
    assert s.job_id == "88" and s.last_end_reason == ""


async def test_a_reachable_server_is_not_asked_about_in_slurm(tmp_path):
    """A server that accepts the connection (or refuses it: the node is there, Jupyter ended, which
    its job reports) costs no sinfo call."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    sinfo = command(tmp_path, "sinfo", f'touch {tmp_path}/sinfo.ran\necho "node2 mixed*"\n')
    s = spawner(tmp_path, squeue_cmd=_running_on(tmp_path, "squeue"), sinfo_cmd=[sinfo])
    s.job_id, s._server = "88", SimpleNamespace(ip="127.0.0.1", port=listener.getsockname()[1])
    assert await s.poll() is None
    listener.close()
    assert await s.poll() is None  # refused now
    assert not (tmp_path / "sinfo.ran").exists()
