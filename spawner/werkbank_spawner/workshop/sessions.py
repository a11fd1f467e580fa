"""What a participant's server gets while their course is open: the course's profile and nothing
else (no other profile, no custom field), in the course's reservation, its time limit cut to the
course's end so that the session's walltime clock tells the truth."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from werkbank_core.policy import Limits, Policy, Profile, describe

from .roles import group_name
from .store import CourseRecord, CourseStore

#: The one profile a participant is offered.
COURSE_PROFILE = "course"


def participant_course(store: CourseStore, user: str, groups: list[str]) -> CourseRecord | None:
    """The running course ``user`` takes part in (listed as its participant and in its group).
    Only the courses of the user's ``course-*`` groups are read: a spawn costs the same however
    many courses the store remembers."""
    prefix = group_name("")
    for group in groups:
        if group.startswith(prefix):
            record = store.get(group[len(prefix) :])
            if record is not None and record.ended is None and user in record.accounts:
                return record
    return None


def course_policy(record: CourseRecord, at: datetime | None = None) -> Policy:
    """A policy with the course's profile as the only choice and its values as the limits."""
    p = record.course.profile
    at = at or record.now()
    left = int((record.closes - at).total_seconds() // 60)
    walltime = max(1, min(p.walltime_min, left))
    gpus, cpus, memory = p.gpu_count, p.cpu_count, p.memory_mb
    profile = Profile(
        name=COURSE_PROFILE,
        partition=record.partition,
        cpus=cpus,
        memory_mb=memory,
        walltime_min=walltime,
        gpus=gpus,
        display_name=f"Course {record.name} · " + describe(gpus, cpus, memory, walltime),
        description=f"The same for every participant of the course ({record.window()}).",
    )
    limits = Limits(
        gpus=gpus, cpus=cpus, memory_mb=memory, walltime_min=walltime, partitions=(record.partition,)
    )
    return Policy(profiles=(profile,), default_limits=limits)


def material_folder(record: CourseRecord) -> str:
    """Where the course's material lands in a participant's home: the course's name."""
    return record.name


def material_url(record: CourseRecord) -> str:
    """The participant's first page: nbgitpuller pulls the material into ``~/<course>`` (merging,
    never overwriting the participant's own edits) and opens it in JupyterLab."""
    material = record.course.material
    query = urlencode(
        {
            "repo": material.repo,
            "branch": material.branch,
            "targetpath": material_folder(record),
            "urlpath": f"lab/tree/{material_folder(record)}",
        }
    )
    return f"/git-pull?{query}"


def local_repository(record: CourseRecord) -> str:
    """The material's repository when it is a path on the cluster (which git refuses to read
    from another user's account unless named safe), else empty."""
    material = record.course.material
    return material.repo if material is not None and material.repo.startswith("/") else ""
