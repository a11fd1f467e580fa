"""The session's clock (werkbank_lab.session.JobClock): the job's end from Slurm's time left,
asked again only now and then, and kept when Slurm does not answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from werkbank_lab.session import JobClock


def fake_squeue(tmp_path: Path, answer: str, status: int = 0) -> tuple[str, Path]:
    calls = tmp_path / "calls"
    script = tmp_path / "squeue"
    script.write_text(f'#!/bin/sh\necho "$*" >>{calls}\necho "{answer}"\nexit {status}\n')
    script.chmod(0o755)
    return str(script), calls


def test_the_end_is_now_plus_what_slurm_says_is_left(tmp_path):
    squeue, calls = fake_squeue(tmp_path, "1-02:03:04")
    clock = JobClock("42", squeue=squeue, refresh=300)
    ends_at = asyncio.run(clock.ends_at())
    left = 26 * 3600 + 3 * 60 + 4
    assert abs(ends_at - (time.time() + left)) < 5
    assert asyncio.run(clock.ends_at()) == ends_at  # remembered: Slurm is not asked again
    assert calls.read_text().splitlines() == ["--noheader --jobs 42 --format %L"]


def test_slurm_is_asked_again_after_the_refresh_and_kept_when_it_fails(tmp_path):
    squeue, calls = fake_squeue(tmp_path, "10:00")
    clock = JobClock("42", squeue=squeue, refresh=0)
    first = asyncio.run(clock.ends_at())
    assert abs(first - (time.time() + 600)) < 5
    # An admin extended the walltime: the next question sees it.
    Path(squeue).write_text(f'#!/bin/sh\necho "$*" >>{calls}\necho "1:10:00"\n')
    later = asyncio.run(clock.ends_at())
    assert abs(later - (time.time() + 4200)) < 5
    # Slurm down: the last known end stays.
    Path(squeue).write_text(
        f'#!/bin/sh\necho "$*" >>{calls}\necho "Unable to contact slurm controller" >&2\nexit 1\n'
    )
    assert asyncio.run(clock.ends_at()) == later
    assert len(calls.read_text().splitlines()) == 3


def test_outside_a_slurm_job_there_is_no_end(tmp_path):
    squeue, calls = fake_squeue(tmp_path, "10:00")
    assert asyncio.run(JobClock("", squeue=squeue).ends_at()) is None
    assert not calls.exists()
