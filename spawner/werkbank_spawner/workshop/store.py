"""Where the hub keeps its courses: one folder per course under ``<hub.data_dir>/../workshops``,
readable by root only (it holds the event code and sheet passwords the printed sheet needs).

``<name>/course.json`` is written by ``werkbank-workshop`` (create, end): the validated course
and what creating it made (:class:`CourseRecord`). ``<name>/logins.json`` is written by the hub's
authenticator alone: which nickname got which pool account. One writer per file, each written
whole through a rename, so a reader never sees half a file.

The hub's authenticator and spawner read the store on each login and spawn (a few small files);
the hub's configuration reads it at start to give the trainers of open courses their roles.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from ..site.services import workshops_dir  # noqa: F401  (where the store is)
from .course import COURSE_NAME, Course, validate

COURSE_FILE = "course.json"
LOGINS_FILE = "logins.json"
BROADCAST_FILE = "broadcast.json"


@dataclass(frozen=True)
class CourseRecord:
    """A course as created: the course file's content and what creating it decided or made."""

    course: Course
    #: The Slurm partition of the participants' servers (the course's, or the site's first
    #: profile with the course's GPUs).
    partition: str
    #: The Slurm reservation the participants' jobs use; empty: none.
    reservation: str = ""
    #: The code participants log in with (login: event-code); empty otherwise.
    event_code: str = ""
    #: Each account's password (login: sheet with pool accounts).
    passwords: Mapping[str, str] = field(default_factory=dict)
    #: Linux accounts werkbank made for the course (and may remove at the end).
    made_accounts: tuple[str, ...] = ()
    created: datetime | None = None
    #: When ``werkbank-workshop end`` ended it; None while it runs.
    ended: datetime | None = None
    #: The archives of the participants' work the end gave the trainers.
    handed_out: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.course.name

    @property
    def accounts(self) -> tuple[str, ...]:
        return self.course.account_names()

    @property
    def opens(self) -> datetime:
        return self.course.starts

    @property
    def closes(self) -> datetime:
        """When course accounts stop working: ``ends`` plus the grace period."""
        return self.course.ends + timedelta(minutes=self.course.grace_minutes)

    @property
    def idle_seconds(self) -> int:
        """After how long without activity a participant's server is stopped."""
        return 60 * self.course.idle_minutes

    def now(self) -> datetime:
        """The current time as the course's times are written (the hub's local time unless they
        name a zone)."""
        zone = self.course.starts.tzinfo
        return datetime.now(zone) if zone else datetime.now()

    def is_open(self, at: datetime | None = None) -> bool:
        at = at or self.now()
        return self.ended is None and self.opens <= at <= self.closes

    def window(self) -> str:
        """``2027-01-20 13:00 to 18:00`` (the day again when the course spans days)."""
        starts, closes = self.opens, self.closes
        end = f"{closes:%H:%M}" if closes.date() == starts.date() else f"{closes:%Y-%m-%d %H:%M}"
        return f"{starts:%Y-%m-%d %H:%M} to {end}"

    def closed_message(self) -> str:
        """Why a course account cannot log in or start a server now."""
        if self.ended is not None:
            return f"The course {self.name} has ended."
        return f"The course {self.name} runs from {self.window()}; its accounts work only then."

    def to_json(self) -> dict:
        return {
            "course": self.course.model_dump(mode="json"),
            "partition": self.partition,
            "reservation": self.reservation,
            "event_code": self.event_code,
            "passwords": dict(self.passwords),
            "made_accounts": list(self.made_accounts),
            "created": self.created.isoformat() if self.created else None,
            "ended": self.ended.isoformat() if self.ended else None,
            "handed_out": list(self.handed_out),
        }

    @classmethod
    def from_json(cls, data: dict) -> CourseRecord:
        return cls(
            course=validate(data["course"]),
            partition=data["partition"],
            reservation=data.get("reservation", ""),
            event_code=data.get("event_code", ""),
            passwords=dict(data.get("passwords") or {}),
            made_accounts=tuple(data.get("made_accounts") or ()),
            created=_moment(data.get("created")),
            ended=_moment(data.get("ended")),
            handed_out=tuple(data.get("handed_out") or ()),
        )


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class CourseStore:
    """The courses in one folder. Reads are cheap and uncached: a course changes under the hub
    (created, ended) without the hub being told."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"CourseStore({str(self.folder)!r})"

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.parent.name for p in self.folder.glob(f"*/{COURSE_FILE}"))

    def get(self, name: str) -> CourseRecord | None:
        if not COURSE_NAME.match(name):  # e.g. a hub group named course-<anything>
            return None
        try:
            data = json.loads((self.folder / name / COURSE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return CourseRecord.from_json(data)

    def records(self) -> Iterator[CourseRecord]:
        for name in self.names():
            record = self.get(name)
            if record is not None:
                yield record

    def running(self) -> list[CourseRecord]:
        """Courses created and not ended (open now or later)."""
        return [r for r in self.records() if r.ended is None]

    def save(self, record: CourseRecord) -> None:
        folder = self.folder / record.name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write(folder / COURSE_FILE, record.to_json())

    def forget(self, name: str) -> None:
        """Remove a course from the store (one whose creation failed and was undone)."""
        folder = self.folder / name
        for path in folder.glob("*"):
            path.unlink()
        folder.rmdir()

    def mark_ended(self, record: CourseRecord) -> CourseRecord:
        ended = replace(record, ended=record.now())
        self.save(ended)
        return ended

    # -- which course an account belongs to

    def course_of(self, account: str) -> CourseRecord | None:
        """The running course ``account`` is a participant of, if any."""
        for record in self.running():
            if account in record.accounts:
                return record
        return None

    # -- the trainers' messages (written by the workshop service, read by the hub)

    def set_broadcast(self, name: str, message: str, by: str) -> dict:
        data = {"course": name, "message": message, "by": by, "at": datetime.now().astimezone().isoformat()}
        _write(self.folder / name / BROADCAST_FILE, data)
        return data

    def broadcast(self, name: str) -> dict | None:
        try:
            return json.loads((self.folder / name / BROADCAST_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def broadcast_for(self, user: str) -> dict | None:
        """The latest message of the running course ``user`` takes part in or trains."""
        for record in self.running():
            if user in record.accounts or user in record.course.trainers:
                return self.broadcast(record.name)
        return None

    # -- event-code logins (written by the hub only)

    def nicknames(self, name: str) -> dict[str, str]:
        """Nickname -> account of the participants who logged in with the event code."""
        try:
            return json.loads((self.folder / name / LOGINS_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def claim(self, record: CourseRecord, nickname: str) -> str | None:
        """The pool account for ``nickname``: the one it got before, or the next free one;
        None when every account is taken. Called by the hub only (one process), so reading and
        writing the file need no lock."""
        taken = self.nicknames(record.name)
        if nickname in taken:
            return taken[nickname]
        free = [a for a in record.accounts if a not in set(taken.values())]
        if not free:
            return None
        taken[nickname] = free[0]
        _write(self.folder / record.name / LOGINS_FILE, taken)
        return free[0]


def _write(path: Path, data: object) -> None:
    """Write JSON whole: to a private temporary file in the same folder, then rename."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
