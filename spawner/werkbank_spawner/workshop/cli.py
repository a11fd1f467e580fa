"""``werkbank-workshop``: courses from the hub's host, as root.

::

    werkbank-workshop check course.yaml              # validate, change nothing
    werkbank-workshop create course.yaml --site S    # accounts, reservation, group, trainer role
    werkbank-workshop list --site S
    werkbank-workshop status NAME --site S           # accounts, nicknames, servers
    werkbank-workshop sheet NAME --site S            # NAME-sheet.html and NAME-sheet.pdf
    werkbank-workshop end NAME --site S              # stop, archive, remove; nothing left

``--site`` defaults to ``$WERKBANK_SITE_CONFIG``, the file the hub reads. Errors are one line,
``FATAL: <what>``, and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..site import SiteConfigError
from ..site import load as load_site
from ..site import validate as validate_site
from ..site.services import data_dir
from .accounts import WorkshopError
from .course import validate
from .hub import HubAPI
from .lifecycle import Machine, create, end
from .sheet import sheet_html, sheet_pdf
from .store import CourseRecord, CourseStore, workshops_dir

COURSE_FILE_TOP = "course settings (name:, trainers:, ...)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="werkbank-workshop", description="Workshops from a course file.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a course file without changing anything")
    check.add_argument("file", help="the course file, e.g. course.yaml")
    for name, text in (
        ("create", "create the course: accounts, reservation, hub group, trainer role"),
        ("list", "the hub's courses"),
        ("status", "a course's accounts, nicknames and servers"),
        ("sheet", "write the printable sheet (HTML and PDF) with the hub's address and the logins"),
        ("end", "end a course: stop its servers and jobs, hand out the work, remove what it made"),
    ):
        command = commands.add_parser(name, help=text)
        if name == "create":
            command.add_argument("file", help="the course file")
        elif name in ("status", "end", "sheet"):
            command.add_argument("name", help="the course's name")
        if name == "sheet":
            command.add_argument("--html", help="where to write the HTML sheet (default: NAME-sheet.html)")
            command.add_argument("--pdf", help="where to write the PDF sheet (default: NAME-sheet.pdf)")
        command.add_argument(
            "--site", default=os.environ.get("WERKBANK_SITE_CONFIG", ""), help="the hub's site file"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.file)
        machine = _machine(args.site)
        return COMMANDS[args.command](args, machine)
    except (SiteConfigError, WorkshopError) as e:
        print(f"FATAL: {e}", file=sys.stderr)
        return 1


def _check(file: str) -> int:
    course = validate(load_site(file, what=COURSE_FILE_TOP))
    accounts = course.account_names()
    window = f"{course.starts:%Y-%m-%d %H:%M} to {course.ends:%Y-%m-%d %H:%M}"
    print(f"ok: {file}: course {course.name}, {len(accounts)} participants ({accounts[0]}..), {window}")
    return 0


def _machine(site_file: str) -> Machine:
    if not site_file:
        raise WorkshopError("name the hub's site file: --site FILE (or set WERKBANK_SITE_CONFIG)")
    path = Path(site_file)
    site = validate_site(load_site(path))
    state = data_dir(site, path.resolve().parent)
    return Machine(site=site, store=CourseStore(workshops_dir(state)), hub=HubAPI.for_site(site, state))


def _create(args, machine: Machine) -> int:
    course = validate(load_site(args.file, what=COURSE_FILE_TOP))
    record = create(course, machine)
    print(f"created: course {record.name}, {record.window()}")
    _describe(record, machine)
    return 0


def _describe(record: CourseRecord, machine: Machine) -> None:
    print(f"  hub: {machine.site.hub.users_url}")
    print(f"  accounts: {', '.join(record.accounts)}")
    if record.event_code:
        print(f"  event code: {record.event_code}  (user name: a nickname of one's choice)")
    if record.passwords:
        print("  logins (user name, password):")
        for name, password in record.passwords.items():
            print(f"    {name}  {password}")
    print(f"  trainers: {', '.join(record.course.trainers)}")
    print(
        f"  servers: partition {record.partition}"
        + (f", reservation {record.reservation}" if record.reservation else "")
    )


def _list(args, machine: Machine) -> int:
    for record in machine.store.records():
        state = (
            f"ended {record.ended:%Y-%m-%d %H:%M}"
            if record.ended
            else ("open" if record.is_open() else "not open")
        )
        print(f"{record.name}\t{record.window()}\t{len(record.accounts)} participants\t{state}")
    return 0


def _status(args, machine: Machine) -> int:
    record = _record(machine, args.name)
    print(
        f"course {record.name}, {record.window()}, "
        + ("ended" if record.ended else "open" if record.is_open() else "not open")
    )
    nicknames = {account: nick for nick, account in machine.store.nicknames(record.name).items()}
    for name in record.accounts:
        user = machine.hub.user(name) or {}
        server = (user.get("servers") or {}).get("")
        state = (
            "no server"
            if not server
            else ("ready" if server.get("ready") else f"{server.get('pending') or 'starting'}")
        )
        print(
            f"  {name}\t{nicknames.get(name, '-')}\t{state}\tlast activity {user.get('last_activity') or '-'}"
        )
    return 0


def _end(args, machine: Machine) -> int:
    record = _record(machine, args.name)
    ended = end(record, machine)
    print(f"ended: course {ended.name}; nothing of it is left running")
    for path in ended.handed_out:
        print(f"  participants' work: {path}")
    return 0


def _sheet(args, machine: Machine) -> int:
    record = _record(machine, args.name)
    hub = machine.site.hub.users_url
    for path, text in (
        (args.html or f"{record.name}-sheet.html", sheet_html(record, hub).encode()),
        (args.pdf or f"{record.name}-sheet.pdf", sheet_pdf(record, hub)),
    ):
        # It holds the logins: readable by whoever runs this (root) alone.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        print(f"wrote {path}")
    return 0


def _record(machine: Machine, name: str) -> CourseRecord:
    record = machine.store.get(name)
    if record is None:
        known = ", ".join(machine.store.names()) or "none"
        raise WorkshopError(f"no course named {name!r} (courses: {known})")
    return record


COMMANDS = {"create": _create, "list": _list, "status": _status, "sheet": _sheet, "end": _end}
