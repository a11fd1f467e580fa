"""The Linux side of a course: its pool accounts, their processes and homes, its Slurm jobs and
reservation. Every command is an argument vector with names checked against
:data:`~werkbank_core.script.USERNAME` before they reach it; all of this needs root (the hub's
host, where ``werkbank-workshop`` runs).
"""

from __future__ import annotations

import os
import pwd
import tarfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from werkbank_core.script import USERNAME
from werkbank_core.slurm import SlurmCommandError, rows, run_sync

#: The shell a locked account gets: no login, no ssh command.
NOLOGIN = "/usr/sbin/nologin"


class WorkshopError(RuntimeError):
    """A step of creating or ending a course failed; the message says which and why."""


def _checked(names: Iterable[str]) -> list[str]:
    names = list(names)
    for name in names:
        if not USERNAME.match(name):
            raise WorkshopError(f"{name!r} is not a valid account name")
    return names


def _run(argv: Sequence[str], what: str, ok: Iterable[int] = (0,)) -> str:
    try:
        done = run_sync(argv, timeout=120)
    except SlurmCommandError as e:
        raise WorkshopError(f"{what}: {e}") from None
    if done.returncode not in set(ok):
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise WorkshopError(f"{what}: {detail[-1] if detail else f'exit status {done.returncode}'}")
    return done.stdout


# --- accounts ----------------------------------------------------------------------------------


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_account(name: str, course: str) -> None:
    """A course account with a home and its own group, no password (it logs in through the
    hub's course login only)."""
    (name,) = _checked([name])
    _run(
        [
            "useradd",
            "--create-home",
            "--user-group",
            "--shell",
            "/bin/bash",
            "--comment",
            f"werkbank course {course}",
            "--",
            name,
        ],
        f"creating account {name}",
    )


def stop_processes(names: Iterable[str]) -> None:
    """Kill every process of these accounts (pkill's status 1: there was none)."""
    for name in _checked(names):
        if exists(name):
            _run(["pkill", "--signal", "KILL", "--uid", name], f"stopping {name}'s processes", ok=(0, 1))


def processes_of(names: Iterable[str]) -> list[str]:
    """``<account> <pid> <command>`` of every process these accounts still run."""
    found = []
    for name in _checked(names):
        if exists(name):
            out = _run(["pgrep", "--list-full", "--uid", name], f"listing {name}'s processes", ok=(0, 1))
            found += [f"{name} {line}" for line in out.splitlines() if line.strip()]
    return found


def lock_account(name: str) -> None:
    """No password, expired, no shell: the account and its home stay, nobody logs in."""
    (name,) = _checked([name])
    _run(["usermod", "--lock", "--expiredate", "1", "--shell", NOLOGIN, "--", name], f"locking {name}")


def is_locked(name: str) -> bool:
    return pwd.getpwnam(name).pw_shell == NOLOGIN


def remove_account(name: str) -> None:
    """The account, its group and its home."""
    (name,) = _checked([name])
    # userdel's 12: the home could not be removed completely; 6: no such user (already gone).
    _run(["userdel", "--remove", "--", name], f"removing account {name}", ok=(0, 6, 12))


def archive_homes(names: Iterable[str], archive: Path) -> Path | None:
    """One ``tar.gz`` of these accounts' homes (the files a participant made, without the
    hidden ones at the top: caches, logs, settings); None when nobody made anything."""
    homes = [(n, Path(pwd.getpwnam(n).pw_dir)) for n in _checked(names) if exists(n)]
    return write_archive(
        archive,
        [
            (entry, f"{name}/{entry.name}")
            for name, home in homes
            if home.is_dir()
            for entry in sorted(home.iterdir())
            if not entry.name.startswith(".")
        ],
    )


def write_archive(archive: Path, entries: list[tuple[Path, str]]) -> Path | None:
    """``archive`` (tar.gz, in a folder of root's alone) of ``(path, name in the archive)``;
    links are archived as links, never followed. None, and no file, without entries."""
    if not entries:
        return None
    archive.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path, name in entries:
            tar.add(path, arcname=name)
    return archive


def hand_to(account: str, source: Path, name: str) -> Path:
    """A copy of ``source`` in ``account``'s home under ``werkbank-courses/``, theirs."""
    (account,) = _checked([account])
    entry = pwd.getpwnam(account)
    folder = Path(entry.pw_dir) / "werkbank-courses"
    folder.mkdir(exist_ok=True)
    os.chown(folder, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    target = folder / name
    # Written by a process with the account's own rights would be safer against a link placed
    # there; the name is new (dated), and O_EXCL refuses to follow anything already there.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as data:
        os.fchown(out.fileno(), entry.pw_uid, entry.pw_gid)
        while chunk := data.read(1 << 20):
            out.write(chunk)
    return target


# --- Slurm -------------------------------------------------------------------------------------


def slurm_time(moment: datetime) -> str:
    """A time as slurmctld reads it: its local time, to the second."""
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def create_reservation(
    name: str,
    accounts: Sequence[str],
    *,
    cores: int,
    partition: str,
    starts: datetime | None,
    ends: datetime,
    scontrol: str = "scontrol",
) -> None:
    """A reservation of ``cores`` cores in ``partition`` for the accounts from ``starts`` (None:
    now) to ``ends``: other users' jobs keep the rest of the cluster."""
    start = slurm_time(starts) if starts is not None else "now"
    _run(
        [
            scontrol,
            "create",
            "reservation",
            f"ReservationName={name}",
            f"StartTime={start}",
            f"EndTime={slurm_time(ends)}",
            f"Users={','.join(_checked(accounts))}",
            f"CoreCnt={cores}",
            f"PartitionName={partition}",
        ],
        f"creating the Slurm reservation {name}",
    )


def reservation_exists(name: str, scontrol: str = "scontrol") -> bool:
    out = _run([scontrol, "show", "reservation", name], f"reading reservation {name}", ok=(0, 1))
    return f"ReservationName={name} " in out


def delete_reservation(name: str, scontrol: str = "scontrol", timeout: float = 60) -> None:
    """Delete it, waiting while Slurm still counts a cancelled job in it ("in use")."""
    deadline = time.monotonic() + timeout
    while reservation_exists(name, scontrol):
        done = run_sync([scontrol, "delete", f"ReservationName={name}"], timeout=60)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise WorkshopError(f"deleting reservation {name}: {done.stderr.strip() or done.stdout.strip()}")
        time.sleep(1)


def cancel_jobs(accounts: Iterable[str], scancel: str = "scancel") -> None:
    for name in [n for n in _checked(accounts) if exists(n)]:
        _run([scancel, f"--user={name}"], f"cancelling {name}'s jobs", ok=(0, 1))


def jobs_of(accounts: Sequence[str], squeue: str = "squeue") -> list[str]:
    """``<job id> <account> <state>`` of the accounts' jobs Slurm still knows as not finished."""
    names = [n for n in _checked(accounts) if exists(n)]  # squeue refuses unknown users
    if not names:
        return []
    out = _run(
        [squeue, "--noheader", "--states=all", f"--user={','.join(names)}", "--format=%i %u %T"],
        "listing the course's jobs",
        ok=(0, 1),
    )
    ended = (
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    )
    return [line for line in out.splitlines() if line.strip() and not line.split()[-1].startswith(ended)]


def queue_of(jobs: Sequence[str], squeue: str = "squeue") -> dict[str, dict[str, str]]:
    """Slurm's word on these jobs: state, node and, for a pending one, the reason."""
    jobs = [j for j in jobs if j.isdigit()]
    if not jobs:
        return {}
    out = _run(
        [squeue, "--noheader", f"--jobs={','.join(jobs)}", "--format=%i|%T|%N|%r"],
        "reading the course's jobs",
        ok=(0, 1),
    )
    return {
        job: {"state": state, "node": node, "reason": reason} for job, state, node, reason in rows(out, 4)
    }


def put_aside(account: str, folder: str, aside: str) -> str:
    """Rename ``~account/folder`` to ``~account/aside``, as the account (root never moves files
    inside a user's home, where a link could point anywhere); "" when there is no such folder."""
    (account,) = _checked([account])
    for name in (folder, aside):
        if not name or "/" in name or name.startswith("."):
            raise WorkshopError(f"{name!r} is not a folder name")
    home = Path(pwd.getpwnam(account).pw_dir)
    if not (home / folder).is_dir() or (home / folder).is_symlink():
        return ""
    _run(
        [
            "sudo",
            "-n",
            "-u",
            account,
            "mv",
            "--no-target-directory",
            "--",
            str(home / folder),
            str(home / aside),
        ],
        f"putting {account}'s {folder} aside",
    )
    return aside


def archive_folders(names: Iterable[str], folder: str, archive: Path) -> Path | None:
    """One ``tar.gz`` of ``~<name>/<folder>`` for each account that has it (links are archived as
    links, never followed); None when nobody has it."""
    found = []
    for name in _checked(names):
        if exists(name):
            path = Path(pwd.getpwnam(name).pw_dir) / folder
            if path.is_dir() and not path.is_symlink():
                found.append((path, f"{name}/{folder}"))
    return write_archive(archive, found)
