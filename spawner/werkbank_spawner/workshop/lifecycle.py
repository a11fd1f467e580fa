"""Creating and ending a course: the steps in order, each undone by :func:`end`.

:func:`create` checks what it can before it changes anything (the name is free, the accounts are
as the site says, the trainers are hub users or valid names), then records the course in the
store *before* each step that makes something, so that a failure halfway is undone by
:func:`end` and nothing is left behind. :func:`end` is safe to run again: each step does nothing
where there is nothing (left) to do.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from werkbank_core.policy import MAX_GPUS, parse_count

from ..site.schema import Site
from . import accounts
from .accounts import WorkshopError
from .course import Course
from .hub import HubAPI
from .roles import group_name
from .sessions import COURSE_PROFILE, material_folder
from .store import CourseRecord, CourseStore

#: Event codes and sheet passwords: letters and digits nobody confuses when read aloud or
#: printed (no 0/o, 1/l/i).
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def stamp() -> str:
    """For the names of archives and set-aside folders: when, to the second."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def new_code(length: int = 8) -> str:
    """``xxxx-xxxx``: 40 bits, typed in a few seconds from a projector."""
    code = "".join(secrets.choice(ALPHABET) for _ in range(length))
    return f"{code[: length // 2]}-{code[length // 2 :]}"


@dataclass(frozen=True)
class Machine:
    """Where a course is applied: the site, its course store, the hub's API, Slurm's commands."""

    site: Site
    store: CourseStore
    hub: HubAPI

    def slurm(self, command: str) -> str:
        return str(Path(self.site.slurm.bin_dir) / command)


def course_partition(course: Course, site: Site) -> str:
    """The course's partition, or the site's first profile's with the course's GPUs."""
    if course.profile.partition:
        return course.profile.partition
    gpus = course.profile.gpu_count
    for profile in site.profiles:
        offered = parse_count(profile.gpus, "gpus", minimum=0, maximum=MAX_GPUS)
        if offered >= gpus and (gpus or not offered):
            return profile.partition
    raise WorkshopError(f"profile: no site profile offers {gpus} GPUs; name a partition")


def preflight(course: Course, machine: Machine) -> str:
    """What :func:`create` checks before changing anything; returns the partition."""
    site, workshops = machine.site, machine.site.workshops
    if not workshops.enabled:
        raise WorkshopError("workshops are switched off in the site file (workshops.enabled)")
    existing = machine.store.get(course.name)
    if existing is not None:
        state = "ended" if existing.ended else "running"
        raise WorkshopError(f"a course named {course.name} exists ({state}); choose another name")
    if course.accounts == "pool" and site.auth.type == "oauth":
        raise WorkshopError(
            "accounts: this hub logs in through OAuth, which has no course logins; list the "
            "participants' existing accounts (accounts: existing, login: sheet)"
        )
    names = course.account_names()
    if course.accounts == "pool" and workshops.create_accounts:
        taken = [n for n in names if accounts.exists(n)]
        if taken:
            raise WorkshopError(
                f"account {taken[0]} exists already; choose another account_prefix "
                "(course accounts are made new, never taken over)"
            )
    else:
        missing = [n for n in names if not accounts.exists(n)]
        if missing:
            raise WorkshopError(f"account {missing[0]} does not exist on this machine")
    for trainer in course.trainers:
        if not accounts.exists(trainer):
            raise WorkshopError(f"trainers: {trainer} has no account on this machine")
    for other in machine.store.running():
        both = sorted(set(other.accounts) & set(names))
        if both:
            raise WorkshopError(f"account {both[0]} takes part in the running course {other.name}")
    if machine.hub.group(group_name(course.name)) is not None:
        raise WorkshopError(f"the hub has a group {group_name(course.name)} already")
    return course_partition(course, site)


def create(course: Course, machine: Machine) -> CourseRecord:
    """Apply a validated course: accounts, reservation, hub users, group and trainer role."""
    partition = preflight(course, machine)
    record = CourseRecord(
        course=course,
        partition=partition,
        event_code=new_code() if course.login == "event-code" else "",
        created=datetime.now(course.starts.tzinfo) if course.starts.tzinfo else datetime.now(),
    )
    machine.store.save(record)
    try:
        return _make(record, machine)
    except Exception:
        # Undo what was made (the store knows, it was saved before each step), then forget it.
        end(machine.store.get(record.name) or record, machine, archive=False)
        machine.store.forget(record.name)
        raise


def _make(record: CourseRecord, machine: Machine) -> CourseRecord:
    course, workshops = record.course, machine.site.workshops
    names = list(record.accounts)
    if course.accounts == "pool" and workshops.create_accounts:
        for name in names:
            record = replace(record, made_accounts=(*record.made_accounts, name))
            machine.store.save(record)
            accounts.make_account(name, course.name)
    if course.login == "sheet" and course.accounts == "pool":
        record = replace(record, passwords={name: new_code(12) for name in names})
        machine.store.save(record)
    if course.reservation:
        record = replace(record, reservation=group_name(course.name))
        machine.store.save(record)
        cores = len(names) * course.profile.cpu_count
        accounts.create_reservation(
            record.reservation,
            names,
            cores=cores,
            partition=record.partition,
            starts=record.opens if record.opens > record.now() else None,
            ends=record.closes,
            scontrol=machine.slurm("scontrol"),
        )
    for user in (*course.trainers, *names):
        machine.hub.ensure_user(user)
    machine.hub.create_group(group_name(course.name), names)
    machine.hub.set_trainers(course.name, list(course.trainers))
    return record


def end(
    record: CourseRecord, machine: Machine, *, archive: bool = True, timeout: float = 120
) -> CourseRecord:
    """Stop and remove everything the course made; returns the ended record. The participants'
    work (pool accounts' homes) is archived first and handed to each trainer
    (``handed_out``). Listed (existing) accounts keep their jobs outside the course."""
    names = list(record.accounts)
    pool = record.course.accounts == "pool"
    for name in names:
        machine.hub.stop_server(name)
    _wait(lambda: not any(machine.hub.has_server(n) for n in names), timeout, "the course's servers to stop")
    if pool:
        accounts.cancel_jobs(names, scancel=machine.slurm("scancel"))
        _wait(
            lambda: not accounts.jobs_of(names, squeue=machine.slurm("squeue")),
            timeout,
            "the course's jobs to end",
        )
        accounts.stop_processes(names)
    if archive and pool:
        record = replace(record, handed_out=_hand_out_work(record, machine))
    if record.reservation:
        accounts.delete_reservation(record.reservation, scontrol=machine.slurm("scontrol"))
    machine.hub.remove_trainers(record.name)
    machine.hub.delete_group(group_name(record.name))
    if pool:
        for name in names:
            machine.hub.delete_user(name)
    for name in record.made_accounts:
        if not accounts.exists(name):
            continue
        if machine.site.workshops.retention == "delete":
            accounts.remove_account(name)
        else:
            accounts.lock_account(name)
    return machine.store.mark_ended(record) if machine.store.get(record.name) else record


def _hand_out_work(record: CourseRecord, machine: Machine) -> tuple[str, ...]:
    """One archive of the participants' homes, kept in the store and copied to each trainer."""
    archive = accounts.archive_homes(
        record.accounts, machine.store.folder / record.name / f"{record.name}-work-{stamp()}.tar.gz"
    )
    if archive is None:
        return ()
    return tuple(
        str(accounts.hand_to(t, archive, archive.name)) for t in record.course.trainers if accounts.exists(t)
    )


def _wait(done, timeout: float, what: str) -> None:
    deadline, pause = time.monotonic() + timeout, 0.2
    while not done():
        if time.monotonic() > deadline:
            raise WorkshopError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


# --- during the course: what the trainer console does ---------------------------------------


def status(record: CourseRecord, machine: Machine) -> list[dict]:
    """Each participant: account, nickname, server (none, pending, running), node, since,
    last activity and, for a pending job, Slurm's reason."""
    nicknames = {account: nick for nick, account in machine.store.nicknames(record.name).items()}
    users = {name: machine.hub.user(name) or {} for name in record.accounts}
    servers = {name: (user.get("servers") or {}).get("") or {} for name, user in users.items()}
    jobs = {name: (server.get("state") or {}).get("job_id", "") for name, server in servers.items()}
    queue = accounts.queue_of([job for job in jobs.values() if job], squeue=machine.slurm("squeue"))
    rows = []
    for name, server in servers.items():
        slurm = queue.get(jobs[name], {})
        state = "none" if not server else ("running" if server.get("ready") else "pending")
        rows.append(
            {
                "account": name,
                "nickname": nicknames.get(name, ""),
                "server": state,
                "job": jobs[name],
                "node": slurm.get("node", ""),
                "reason": slurm.get("reason", "") if state == "pending" else "",
                "started": server.get("started") or "",
                "last_activity": server.get("last_activity") or users[name].get("last_activity") or "",
            }
        )
    return rows


def start_all(record: CourseRecord, machine: Machine) -> list[str]:
    """Start the course profile for every participant without a server; returns whom."""
    started = []
    for name in record.accounts:
        if not machine.hub.has_server(name):
            machine.hub.start_server(name, {"profile": COURSE_PROFILE})
            started.append(name)
    return started


def stop_all(record: CourseRecord, machine: Machine) -> list[str]:
    return [name for name in record.accounts if machine.hub.stop_server(name)]


def reset_material(record: CourseRecord, account: str) -> str:
    """Put the participant's copy of the material aside (renamed, never deleted), so that the
    next pull brings a fresh one; returns the name it was put aside as, or "" if there was none."""
    if account not in record.accounts:
        raise WorkshopError(f"{account} takes no part in the course {record.name}")
    folder = material_folder(record)
    return accounts.put_aside(account, folder, f"{folder}-before-reset-{stamp()}")


def collect(record: CourseRecord, machine: Machine) -> Path | None:
    """One archive of every participant's course folder (``~/<course>``), kept in the store."""
    target = machine.store.folder / record.name / f"{record.name}-collected-{stamp()}.tar.gz"
    return accounts.archive_folders(record.accounts, material_folder(record), target)


def broadcast(record: CourseRecord, machine: Machine, message: str, by: str) -> dict:
    """A message for the course's participants: JupyterLab shows it as a notification, the hub's
    pages as an announcement."""
    text = " ".join(message.split())
    if not 1 <= len(text) <= MAX_MESSAGE:
        raise WorkshopError(f"a message has 1 to {MAX_MESSAGE} characters")
    return machine.store.set_broadcast(record.name, text, by)


MAX_MESSAGE = 500


# --- housekeeping, every minute or so --------------------------------------------------------


def tidy(record: CourseRecord, machine: Machine, log) -> None:
    """End the course if its window has closed; else stop participants' servers idle for longer
    than the course's idle timeout."""
    record = machine.store.get(record.name) or record  # ended meanwhile?
    if record.ended is not None:
        return
    if record.now() > record.closes:
        log.info("werkbank: course %s closed at %s: ending it", record.name, record.closes)
        end(record, machine)
        return
    for name in record.accounts:
        idle = _idle_seconds(machine.hub.user(name))
        if idle is not None and idle > record.idle_seconds:
            log.info("werkbank: %s's server was idle for %d s: stopping it", name, idle)
            machine.hub.stop_server(name)


def _idle_seconds(user: dict | None) -> float | None:
    server = ((user or {}).get("servers") or {}).get("")
    if not server or not server.get("ready") or server.get("pending"):
        return None
    last = server.get("last_activity") or server.get("started")
    if not last:
        return None
    moment = datetime.fromisoformat(last.replace("Z", "+00:00"))
    return (datetime.now(UTC) - moment).total_seconds()
