"""The course file a trainer writes: one YAML file per workshop, read into a typed, frozen
:class:`Course` (pydantic, the same strictness and error messages as the site file)::

    name: llm-finetuning-2027-01
    trainers: [alice]
    participants: 30            # or a list of existing accounts
    accounts: pool              # create course accounts <account_prefix>01.. ; "existing" with a list
    login: event-code           # one code for everyone (each picks a nickname), or: sheet
    profile: {gpus: 1, cpus: 4, memory: 16G, walltime: 3h}   # locked for participants
    starts: 2027-01-20T13:00
    ends: 2027-01-20T18:00
    reservation: true           # a Slurm reservation for the course's accounts and window
    material: {repo: /srv/courses/llm.git, branch: main}
    idle_timeout: 30m

:func:`validate` (and ``werkbank-workshop check FILE``) report the first problem as
``<key.path>: <what is wrong>``; times are the hub's local time unless they name a zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, PlainSerializer, PlainValidator, StrictBool, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from werkbank_core.policy import (
    MAX_CPUS,
    MAX_GPUS,
    PolicyError,
    describe,
    parse_count,
    parse_memory,
    parse_name,
    parse_walltime,
)
from werkbank_core.script import USERNAME

from ..site.load import validated
from ..site.schema import Amount, Names, Section, SiteConfigError, section, setting
from .roles import group_name

#: A course's name: also its JupyterHub group (``course-<name>``) and Slurm reservation.
COURSE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{2,39}\Z")
#: The most participants one course may have (a hub's and a reservation's sense of scale).
MAX_PARTICIPANTS = 200
#: The longest course: a week of daily sessions at most; longer is a project, not a workshop.
MAX_LENGTH = timedelta(days=14)
#: A git repository werkbank may pull material from: a path on the cluster, or a URL.
#: Plain characters only: a path goes into the job's git configuration, a URL into a link.
_REPO = re.compile(
    r"(/[A-Za-z0-9._/+@-]+|(https?|ssh|git|file)://[A-Za-z0-9._~:/@%+=-]+|[\w.-]+@[\w.-]+:[A-Za-z0-9._/+-]+)\Z"
)
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}\Z")


def _moment(value: object) -> datetime:
    """A time of day and date: a YAML timestamp, or ISO text such as ``2027-01-20T13:00``."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise PydanticCustomError("moment", "expected a date and time like 2027-01-20T13:00")


#: Written back as ISO text (the course store keeps it as JSON).
Moment = Annotated[datetime, PlainValidator(_moment), PlainSerializer(datetime.isoformat, when_used="json")]


def _participants(value: object) -> int | tuple[str, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise PydanticCustomError("participants", "expected a number of participants or a list of accounts")
    if isinstance(value, int):
        return value
    if not all(isinstance(v, str) for v in value):
        raise PydanticCustomError("participants", "expected a list of account names")
    return tuple(value)


def _plain(value: int | tuple[str, ...]) -> int | list[str]:
    return value if isinstance(value, int) else list(value)


class CourseProfile(Section):
    """What each participant's server gets, the same for everyone and locked."""

    gpus: Amount = setting(0, "GPUs per participant.")
    cpus: Amount = setting(1, "CPU cores per participant.")
    memory: Amount = setting("2G", "Memory per participant, e.g. 16G.")
    walltime: Amount = setting("1h", "Time limit of a participant's server, e.g. 3h.")
    partition: StrictStr = setting("", "Slurm partition; empty: the site's first profile with these GPUs.")

    # The values as numbers, parsed as the course file's check parsed them (PolicyError here
    # only for a profile that never passed :func:`check`).

    @property
    def gpu_count(self) -> int:
        return parse_count(self.gpus, "profile.gpus", minimum=0, maximum=MAX_GPUS)

    @property
    def cpu_count(self) -> int:
        return parse_count(self.cpus, "profile.cpus", minimum=1, maximum=MAX_CPUS)

    @property
    def memory_mb(self) -> int:
        return parse_memory(self.memory, "profile.memory")

    @property
    def walltime_min(self) -> int:
        return parse_walltime(self.walltime, "profile.walltime")

    def describe(self) -> str:
        """``1 GPU · 4 cores · 16 GB · 3 h``, as the spawn page labels resources."""
        return describe(self.gpu_count, self.cpu_count, self.memory_mb, self.walltime_min)


class Material(Section):
    """The course's notebooks, pulled into each participant's home with nbgitpuller."""

    repo: StrictStr = Field(
        description="A git repository: a path on the cluster or a URL compute nodes reach."
    )
    branch: StrictStr = setting("main", "The branch participants get.")


class Course(Section):
    """A workshop."""

    name: StrictStr = Field(description="Short id: lower-case letters, digits and '-', 3 to 40.")
    trainers: Names = Field(description="Hub users who run the course (no hub admin rights needed).")
    participants: Annotated[
        int | tuple[str, ...], PlainValidator(_participants), PlainSerializer(_plain, when_used="json")
    ] = Field(description="How many course accounts to make, or a list of existing accounts.")
    accounts: Literal["pool", "existing"] = setting(
        "pool", "pool: course accounts made for the course; existing: the accounts listed in participants."
    )
    account_prefix: StrictStr = setting(
        "", "Names of pool accounts: <prefix>01, ...; empty: the course name's first word."
    )
    login: Literal["event-code", "sheet"] = setting(
        "event-code",
        "event-code: one code for everyone, each participant picks a nickname and gets the next free "
        "account; sheet: a printed login per participant.",
    )
    profile: CourseProfile = section(CourseProfile, "What each participant's server gets, locked.")
    starts: Moment = Field(description="When course accounts start to work (the hub's local time).")
    ends: Moment = Field(description="When the course ends; accounts work until ends + grace.")
    grace: Amount = setting(
        "1h", "How long after ends participants may still log in and save; 0 for not at all."
    )
    reservation: StrictBool = setting(False, "A Slurm reservation for the course's accounts and window.")
    material: Material | None = setting(None, "The course's notebooks (nbgitpuller); none: no material.")
    idle_timeout: Amount = setting("30m", "A participant's idle server is stopped after this long.")
    max_participants: StrictInt = setting(MAX_PARTICIPANTS, "Refuse more than this many.", ge=1, le=1000)

    @property
    def group(self) -> str:
        """The course's JupyterHub group."""
        return group_name(self.name)

    @property
    def prefix(self) -> str:
        return self.account_prefix or self.name.split("-")[0]

    @property
    def idle_minutes(self) -> int:
        return parse_walltime(self.idle_timeout, "idle_timeout")

    @property
    def grace_minutes(self) -> int:
        if self.grace in (0, "0", "0m"):
            return 0
        return parse_walltime(self.grace, "grace")

    def account_names(self) -> tuple[str, ...]:
        """The participants' accounts: made for the course (``train01``, ...) or listed."""
        if isinstance(self.participants, tuple):
            return self.participants
        width = max(2, len(str(self.participants)))
        return tuple(f"{self.prefix}{i:0{width}d}" for i in range(1, self.participants + 1))


def validate(data: object) -> Course:
    """The :class:`Course` a course file's mapping describes; :class:`SiteConfigError` (``path:
    message``) for the first problem, of shape, then of the rules between keys."""
    return validated(Course, data, check)


def check(course: Course) -> None:
    """The rules between a course's keys."""
    if not COURSE_NAME.match(course.name):
        raise SiteConfigError(
            "name", f"{course.name!r}: lower-case letters, digits and '-', 3 to 40, first not '-'"
        )
    if not course.trainers:
        raise SiteConfigError("trainers", "name at least one trainer")
    for i, user in enumerate(course.trainers):
        if not USERNAME.match(user):
            raise SiteConfigError(f"trainers[{i}]", f"{user!r} is not a valid user name")
    _check_participants(course)
    _check_window(course)
    _check_profile(course)
    if course.material is not None:
        if not _REPO.match(course.material.repo):
            raise SiteConfigError("material.repo", f"{course.material.repo!r}: a path (/...) or a git URL")
        if not _BRANCH.match(course.material.branch) or ".." in course.material.branch:
            raise SiteConfigError("material.branch", f"{course.material.branch!r} is not a branch name")
    _policy(lambda: course.idle_minutes)
    _policy(lambda: course.grace_minutes)


def _check_participants(course: Course) -> None:
    listed = isinstance(course.participants, tuple)
    count = len(course.participants) if listed else course.participants
    if not 1 <= count <= course.max_participants:
        raise SiteConfigError(
            "participants", f"{count}: from 1 to {course.max_participants} (max_participants)"
        )
    if listed != (course.accounts == "existing"):
        raise SiteConfigError(
            "accounts",
            "existing goes with a list of participants' accounts, pool with a number of accounts to make",
        )
    if course.login == "event-code" and course.accounts != "pool":
        raise SiteConfigError("login", "event-code hands out pool accounts; with existing accounts use sheet")
    names = course.account_names()
    for i, name in enumerate(names):
        if not USERNAME.match(name):
            where = f"participants[{i}]" if listed else "account_prefix"
            raise SiteConfigError(where, f"{name!r} is not a valid user name")
    if len(set(names)) != len(names):
        raise SiteConfigError("participants", "an account is listed twice")
    both = sorted(set(names) & set(course.trainers))
    if both:
        raise SiteConfigError("trainers", f"{both[0]!r} is also a participant")


def _check_window(course: Course) -> None:
    starts, ends = course.starts, course.ends
    if (starts.tzinfo is None) != (ends.tzinfo is None):
        raise SiteConfigError("ends", "give both times with a zone, or neither (the hub's local time)")
    if ends <= starts:
        raise SiteConfigError("ends", f"{ends.isoformat()} is not after starts ({starts.isoformat()})")
    if ends - starts > MAX_LENGTH:
        raise SiteConfigError("ends", f"a course lasts at most {MAX_LENGTH.days} days")


def _check_profile(course: Course) -> None:
    p = course.profile
    for value in ("gpu_count", "cpu_count", "memory_mb", "walltime_min"):
        _policy(lambda value=value: getattr(p, value))
    if p.partition:
        _policy(lambda: parse_name(p.partition, "profile.partition"))


def _policy(parse) -> None:
    """Run a policy parser; its error as the course file's."""
    try:
        parse()
    except PolicyError as e:
        raise SiteConfigError(e.field, e.message) from None
