"""The shared queue poller's logic, driven by a stand-in ``squeue`` script.

The real ``squeue`` is exercised by tests/integration; here a tiny script prints canned
output so that coalescing, state mapping and the unreachable/gone distinction are tested
fast and deterministically.
"""

import asyncio
import stat
import textwrap
from pathlib import Path

import pytest

from werkbank_spawner.queue import JobInfo, JobState, NodeAddresses, SlurmQueue, parse_squeue
from werkbank_spawner.spawner import progress_message


def test_parse_squeue_maps_states():
    out = textwrap.dedent(
        """\
        10|PENDING|Resources|2026-11-23T10:00:00|
        11|RUNNING|None|2026-11-23T09:00:00|node1
        12|CANCELLED|None|2026-11-23T09:00:00|node1
        13|COMPLETING|None|N/A|node1
        garbage line
        """
    )
    jobs = parse_squeue(out, 5.0, {})
    assert jobs["10"] == JobInfo(
        "10", JobState.PENDING, "PENDING", "Resources", "2026-11-23T10:00:00", "", 5.0
    )
    assert jobs["11"].state is JobState.RUNNING and jobs["11"].nodes == "node1"
    assert jobs["11"].reason == ""
    assert jobs["12"].state is JobState.GONE
    assert jobs["13"].state is JobState.GONE
    assert set(jobs) == {"10", "11", "12", "13"}


def test_state_since_is_kept_while_the_state_holds():
    first = parse_squeue("11|RUNNING|None|x|node1\n", 1.0, {})
    again = parse_squeue("11|RUNNING|None|x|node1\n", 9.0, first)
    assert again["11"].since == 1.0


@pytest.mark.parametrize(
    "info, words",
    [
        (JobInfo("7", JobState.GONE, "TIMEOUT"), "job 7 ended: TIMEOUT (walltime reached)"),
        (JobInfo("7", JobState.GONE, "CANCELLED"), "job 7 ended: CANCELLED (cancelled)"),
        (JobInfo("7", JobState.GONE, "NODE_FAIL", "NodeDown"), "job 7 ended: NODE_FAIL (NodeDown)"),
        (JobInfo("7", JobState.GONE), "job 7 is no longer known to Slurm"),
    ],
)
def test_explain(info, words):
    assert info.explain() == words


def test_progress_messages():
    pending = JobInfo("5", JobState.PENDING, "PENDING", "Resources", "2026-11-23T10:00:00")
    assert progress_message("5", pending, 0)[0] == (
        "Slurm job 5 is pending (reason: Resources); estimated start 2026-11-23T10:00:00"
    )
    running = JobInfo("5", JobState.RUNNING, "RUNNING", nodes="node1")
    assert progress_message("5", running, 0)[0] == "Slurm job 5 running on node1; starting Jupyter…"


@pytest.fixture
def fake_squeue(tmp_path):
    """A stand-in squeue: prints the file 'out', exits with the number in 'rc', logs each call."""
    script = tmp_path / "squeue"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "$@" >> {tmp_path}/calls
            cat {tmp_path}/out
            cat {tmp_path}/err >&2
            exit $(cat {tmp_path}/rc)
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)

    def set_answer(out="", rc=0, err=""):
        (tmp_path / "out").write_text(out)
        (tmp_path / "rc").write_text(str(rc))
        (tmp_path / "err").write_text(err)

    def calls():
        path = tmp_path / "calls"
        return path.read_text().splitlines() if path.exists() else []

    set_answer()
    return script, set_answer, calls


async def test_one_call_answers_all_watchers(fake_squeue):
    script, set_answer, calls = fake_squeue
    set_answer("1|RUNNING|None|x|node1\n2|PENDING|Priority|N/A|\n")
    queue = SlurmQueue([str(script)], interval=60)
    queue.watch("1")
    queue.watch("2")
    results = await asyncio.gather(*(queue.refresh() for _ in range(20)))
    assert results == [None] * 20
    assert queue.get("1").state is JobState.RUNNING
    assert queue.get("2").reason == "Priority"
    assert len(calls()) <= 2  # the loop's first refresh and ours, joined
    assert "--jobs=1,2" in calls()[-1]
    queue.unwatch("1")
    queue.unwatch("2")


async def test_unreachable_is_not_gone_and_gone_is_remembered(fake_squeue):
    script, set_answer, _ = fake_squeue
    queue = SlurmQueue([str(script)], interval=60)
    queue.watch("3")
    set_answer("3|CANCELLED|None|x|node1\n")
    assert (await queue.refresh("3")).slurm_state == "CANCELLED"
    queue.watch("4")
    set_answer("", rc=1, err="slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    info = await queue.refresh("4")
    assert info.state is JobState.UNREACHABLE and "Unable to contact" in info.error
    assert queue.get("3").state is JobState.GONE  # an ended job stays ended
    since = info.since
    assert (await queue.refresh("4")).since == since  # the outage started once
    # Slurm forgot the job (MinJobAge passed): a single unknown id is an error, but not an outage.
    set_answer("", rc=1, err="slurm_load_jobs error: Invalid job id specified")
    assert (await queue.refresh("4")).state is JobState.GONE
    assert queue.get("3").slurm_state == "CANCELLED"
    queue.unwatch("3")
    queue.unwatch("4")


async def test_a_hung_sinfo_does_not_hold_up_spawns(tmp_path):
    """Every spawn asks for its node's address under one lock: sinfo is given up after its
    timeout, and the node's name stands in for its address."""
    hung = tmp_path / "sinfo"
    hung.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 600\n")
    hung.chmod(0o755)
    addresses = NodeAddresses([str(hung)], timeout=0.3, min_age=0)
    both = asyncio.gather(addresses.address("node1"), addresses.address("node2"))
    assert await asyncio.wait_for(both, 60) == ["node1", "node2"]
    assert addresses.calls == 2
    for pid in (tmp_path / "pids").read_text().split():  # each sinfo was killed, not waited for
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


async def test_a_cancelled_wait_for_update_stays_cancelled():
    """JupyterHub's progress stream cancels the spawner's progress generator when the spawn ends;
    if that generator swallowed the cancellation (asyncio.wait_for on Python 3.11 does when the
    awaited event fired in the same moment), it would carry on waiting for a next message, the
    stream with it, and the spawn-pending page would never hear "ready" (seen once in 30 in a
    workshop burst)."""
    queue = SlurmQueue(["squeue"])

    async def progress():  # as WerkbankSlurmSpawner.progress waits between its messages
        while True:
            await queue.wait_for_update(30)

    generator = asyncio.ensure_future(progress())
    await asyncio.sleep(0)  # waiting now
    fired, queue._updated = queue._updated, asyncio.Event()  # a refresh completes, as _query does
    fired.set()
    await asyncio.sleep(0)  # ... the wait's inner steps run
    generator.cancel()  # in the same moment the stream gives up on the generator
    done, _ = await asyncio.wait([generator], timeout=2)
    assert done and generator.cancelled()
