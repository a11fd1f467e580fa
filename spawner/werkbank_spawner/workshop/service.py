"""The trainer console: a managed hub service named ``werkbank-workshop`` at
``<hub>/services/werkbank-workshop/``, hub-authenticated, in the hub's look, with the same as a
REST API; and the courses' housekeeping (idle servers stopped, courses ended when they close).

Who may do what: a course's trainers (their role grants them access to this service) act on
their course; hub admins on every course, and only they create courses here. Everything else is
refused with 403 before anything happens. The service acts with its own hub token (the scopes
``werkbank-workshop`` has: werkbank_spawner.site.apply.WORKSHOP_SCOPES) and as root on the hub's
host (accounts, Slurm), like ``werkbank-workshop`` on the command line, whose functions it calls
(:mod:`.lifecycle`) in a worker thread, one at a time per course.

REST, under ``api/`` (JSON; cookie-authenticated requests need JupyterHub's XSRF token)::

    GET    api/courses                                   the courses you may run
    POST   api/courses                    {"course": {...}}   create (hub admins)
    GET    api/courses/<name>                            the course and its participants
    (pages: ``courses/<name>``, the printable ``courses/<name>/sheet.html`` and ``sheet.pdf``)
    POST   api/courses/<name>/servers                    start every participant's server
    DELETE api/courses/<name>/servers                    stop them all
    DELETE api/courses/<name>/participants/<account>/server
    POST   api/courses/<name>/participants/<account>/reset   material put aside, fresh next pull
    POST   api/courses/<name>/broadcast   {"message": "..."}
    POST   api/courses/<name>/collect                    a tar.gz of everyone's course folder
    POST   api/courses/<name>/end                        stop, hand out, remove: nothing left

Run by the hub (werkbank_spawner.site.apply)::

    python -m werkbank_spawner.workshop.service --site /etc/werkbank/site.yaml --check-every 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from html import escape
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web
from tornado.httpserver import HTTPServer

from ..server_certs import serving_tls
from ..site import SiteConfigError
from . import lifecycle
from .accounts import WorkshopError
from .cli import _machine
from .course import validate
from .lifecycle import Machine
from .sheet import sheet_html, sheet_pdf
from .store import CourseRecord

log = logging.getLogger("werkbank.workshop")


class Console:
    """The service's state: the machine it acts on, its hub auth, one lock per course."""

    def __init__(self, machine: Machine, hub_auth: HubOAuth, prefix: str):
        self.machine, self.hub_auth, self.prefix = machine, hub_auth, prefix
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def act(self, name: str, work, *args):
        """``work(*args)`` in a thread, one action per course at a time; its refusal as 409."""
        async with self.lock(name):
            try:
                return await asyncio.to_thread(work, *args)
            except (WorkshopError, SiteConfigError) as e:
                raise web.HTTPError(409, str(e)) from None

    def app(self) -> web.Application:
        p = self.prefix.rstrip("/")
        course = r"(?P<name>[a-z0-9][a-z0-9-]{2,39})"
        account = r"(?P<account>[a-z_][a-z0-9_-]{0,31})"
        handlers = [
            (rf"{p}/?", IndexPage),
            (rf"{p}/courses/{course}/?", CoursePage),
            (rf"{p}/courses/{course}/sheet\.(?P<kind>html|pdf)", SheetPage),
            (rf"{p}/api/courses/?", CoursesAPI),
            (rf"{p}/api/courses/{course}/?", CourseAPI),
            (rf"{p}/api/courses/{course}/servers/?", ServersAPI),
            (rf"{p}/api/courses/{course}/participants/{account}/server/?", ParticipantServerAPI),
            (rf"{p}/api/courses/{course}/participants/{account}/reset/?", ResetAPI),
            (rf"{p}/api/courses/{course}/broadcast/?", BroadcastAPI),
            (rf"{p}/api/courses/{course}/collect/?", CollectAPI),
            (rf"{p}/api/courses/{course}/end/?", EndAPI),
            (rf"{p}/oauth_callback", OAuthCallback, {"console": self}),
            (rf"{p}/static/(console\.js)", web.StaticFileHandler, {"path": str(CONSOLE)}),
        ]
        return web.Application(
            [(h[0], h[1], h[2] if len(h) > 2 else {"console": self}) for h in handlers],
            cookie_secret=os.urandom(32),
            # The XSRF cookie for this service's pages only: at "/" (tornado's default) it would
            # shadow JupyterLab's and the hub's own _xsrf cookies on the same origin.
            xsrf_cookie_kwargs={"path": self.prefix},
        )

    async def housekeeping(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for record in self.machine.store.running():
                async with self.lock(record.name):
                    try:
                        await asyncio.to_thread(lifecycle.tidy, record, self.machine, log)
                    except Exception:  # the next round tries again; the console shows the state
                        log.exception("werkbank: housekeeping of course %s failed", record.name)


class OAuthCallback(HubOAuthCallbackHandler):
    def initialize(self, console: Console):
        self.hub_auth = console.hub_auth


class Base(HubOAuthenticated, web.RequestHandler):
    """Hub-authenticated; knows the caller's courses."""

    def initialize(self, console: Console):
        self.console, self.hub_auth = console, console.hub_auth

    @property
    def machine(self) -> Machine:
        return self.console.machine

    def caller(self) -> dict:
        user = self.current_user
        if not user or user.get("kind", "user") != "user":
            raise web.HTTPError(403, "trainers and hub admins only")
        return user

    def may_run(self, record: CourseRecord) -> bool:
        user = self.caller()
        return bool(user.get("admin")) or user["name"] in record.course.trainers

    def course(self, name: str) -> CourseRecord:
        record = self.machine.store.get(name)
        if record is None or not self.may_run(record):
            # The same answer for "no such course" and "not yours": course names are not public.
            raise web.HTTPError(404, f"no course {name} of yours")
        return record

    def running(self, name: str) -> CourseRecord:
        record = self.course(name)
        if record.ended is not None:
            raise web.HTTPError(409, f"the course {name} has ended")
        return record

    def my_courses(self) -> list[CourseRecord]:
        return [r for r in self.machine.store.records() if self.may_run(r)]


class API(Base):
    """JSON in and out. A cookie-authenticated request counts only with the XSRF token the pages
    carry (HubOAuth calls tornado's check); token-authenticated clients need none."""

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "expected a JSON object")
        return body

    def answer(self, data: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        message = getattr(error, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


def describe(record: CourseRecord) -> dict:
    return {
        "name": record.name,
        "window": record.window(),
        "open": record.is_open(),
        "ended": record.ended,
        "trainers": list(record.course.trainers),
        "accounts": list(record.accounts),
        "login": record.course.login,
        "reservation": record.reservation,
        "partition": record.partition,
        "material": record.course.material.model_dump() if record.course.material else None,
    }


class CoursesAPI(API):
    @web.authenticated
    def get(self):
        self.answer([describe(r) for r in self.my_courses()])

    @web.authenticated
    async def post(self):
        if not self.caller().get("admin"):
            raise web.HTTPError(403, "only hub admins create courses")
        body = self.json_body()
        try:
            course = validate(body.get("course"))
        except SiteConfigError as e:
            raise web.HTTPError(400, f"course: {e}") from None
        record = await self.console.act(course.name, lifecycle.create, course, self.machine)
        self.answer({**describe(record), "event_code": record.event_code}, 201)


class CourseAPI(API):
    @web.authenticated
    async def get(self, name):
        record = self.course(name)
        participants = await asyncio.to_thread(lifecycle.status, record, self.machine)
        self.answer(
            {
                **describe(record),
                "participants": participants,
                "broadcast": self.machine.store.broadcast(name),
            }
        )


class ServersAPI(API):
    @web.authenticated
    async def post(self, name):
        started = await self.console.act(name, lifecycle.start_all, self.running(name), self.machine)
        self.answer({"started": started})

    @web.authenticated
    async def delete(self, name):
        stopped = await self.console.act(name, lifecycle.stop_all, self.running(name), self.machine)
        self.answer({"stopped": stopped})


class ParticipantServerAPI(API):
    @web.authenticated
    async def delete(self, name, account):
        record = self.running(name)
        if account not in record.accounts:
            raise web.HTTPError(404, f"{account} takes no part in the course {name}")
        await self.console.act(name, self.machine.hub.stop_server, account)
        self.answer({"stopped": [account]})


class ResetAPI(API):
    @web.authenticated
    async def post(self, name, account):
        aside = await self.console.act(name, lifecycle.reset_material, self.running(name), account)
        self.answer({"account": account, "put_aside_as": aside})


class BroadcastAPI(API):
    @web.authenticated
    async def post(self, name):
        message = self.json_body().get("message")
        if not isinstance(message, str):
            raise web.HTTPError(400, 'expected {"message": "<text>"}')
        record = self.running(name)
        sent = await self.console.act(
            name, lifecycle.broadcast, record, self.machine, message, self.caller()["name"]
        )
        self.answer(sent)


class CollectAPI(API):
    @web.authenticated
    async def post(self, name):
        archive = await self.console.act(name, lifecycle.collect, self.course(name), self.machine)
        if archive is None:
            raise web.HTTPError(404, "no participant has the course's folder yet")
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Content-Disposition", f'attachment; filename="{archive.name}"')
        f = await asyncio.to_thread(archive.open, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                self.write(chunk)
                await self.flush()
        finally:
            f.close()
        self.finish()


class EndAPI(API):
    @web.authenticated
    async def post(self, name):
        ended = await self.console.act(name, lifecycle.end, self.running(name), self.machine)
        self.answer({**describe(ended), "handed_out": list(ended.handed_out)})


# --- pages -------------------------------------------------------------------------------------

#: The console's page and script (in the hub's look: its style sheet, logo and navigation bar).
CONSOLE = Path(__file__).resolve().parent / "console"
PAGE = Template((CONSOLE / "page.html").read_text(encoding="utf-8"))


class Page(Base):
    def page(self, title: str, body: str) -> None:
        hub = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub"
        token = self.xsrf_token
        prefix = self.console.prefix.rstrip("/")
        self.finish(
            PAGE.substitute(
                title=escape(title),
                body=body,
                hub=escape(hub),
                user=escape(self.caller()["name"]),
                xsrf=escape(token.decode() if isinstance(token, bytes) else token),
                api=escape(f"{prefix}/api"),
                static=escape(f"{prefix}/static"),
            )
        )


class IndexPage(Page):
    @web.authenticated
    def get(self):
        rows = "".join(
            "<tr>"
            + cells(f'<a href="courses/{escape(r.name)}">{escape(r.name)}</a>', escape(r.window()))
            + cells(str(len(r.accounts)), "ended" if r.ended else "open" if r.is_open() else "not open")
            + "</tr>"
            for r in self.my_courses()
        )
        head = "<tr><th>Course</th><th>When</th><th>Participants</th><th>State</th></tr>"
        body = (
            f'<table class="table"><thead>{head}</thead><tbody>{rows}</tbody></table>'
            if rows
            else '<p class="text-muted">You train no course here.</p>'
        )
        self.page("Your courses", body)


class CoursePage(Page):
    @web.authenticated
    async def get(self, name):
        record = self.course(name)
        participants = await asyncio.to_thread(lifecycle.status, record, self.machine)
        message = self.machine.store.broadcast(name)
        here = f"{self.console.prefix.rstrip('/')}/courses/{record.name}"
        self.page(f"Course {record.name}", course_body(record, participants, message, here))


class SheetPage(Base):
    """The printable sheet (it holds the course's logins: its trainers and hub admins only)."""

    @web.authenticated
    async def get(self, name, kind):
        record = self.course(name)
        hub = self.machine.site.hub.users_url
        if kind == "pdf":
            self.set_header("Content-Type", "application/pdf")
            self.set_header("Content-Disposition", f'inline; filename="{record.name}-sheet.pdf"')
            self.finish(await asyncio.to_thread(sheet_pdf, record, hub))
        else:
            self.finish(sheet_html(record, hub))


def counted(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def cells(*html: str) -> str:
    return "".join(f"<td>{h}</td>" for h in html)


def moment(text: str) -> str:
    return escape(text[:19].replace("T", " "))


def button(label: str, action: str, style: str = "btn-outline-secondary", **data: str) -> str:
    extra = "".join(f' data-{k}="{escape(v)}"' for k, v in data.items())
    return f'<button class="btn {style}" data-action="{escape(action)}"{extra}>{escape(label)}</button>'


def link(label: str, href: str) -> str:
    return f'<a class="btn btn-outline-secondary" href="{escape(href)}" target="_blank">{escape(label)}</a>'


def participant_row(p: dict) -> str:
    account = p["account"]
    actions = button("Stop", f"DELETE participants/{account}/server", "btn-sm btn-outline-danger") + button(
        "Reset material", f"POST participants/{account}/reset", "btn-sm btn-outline-secondary"
    )
    return (
        f'<tr data-account="{escape(account)}">'
        + cells(escape(account), escape(p["nickname"]), escape(p["server"]), escape(p["node"]))
        + cells(moment(p["started"]), moment(p["last_activity"]), escape(p["reason"]), actions)
        + "</tr>"
    )


def course_body(record: CourseRecord, participants: list[dict], message: dict | None, here: str) -> str:
    """The course page's content; ``here`` is the page's own path (links are made from it)."""
    running = sum(p["server"] == "running" for p in participants)
    facts = [
        record.window(),
        counted(len(record.accounts), "participant"),
        f"{counted(running, 'server')} running",
    ]
    facts.append(f"partition {record.partition}")
    if record.reservation:
        facts.append(f"reservation {record.reservation}")
    if record.ended:
        facts.append("ended")
    parts = [f"<p>{escape(' · '.join(facts))}</p>"]
    if message:
        parts.append(f"<p>Last message: <em>{escape(message['message'])}</em></p>")
    if record.ended is None:
        confirm = f"End the course {record.name}: stop every server and lock or remove its accounts?"
        parts.append(
            '<div class="mb-3">'
            + button("Start all", "POST servers", "btn-primary")
            + button("Stop all", "DELETE servers", "btn-outline-danger")
            + button("Collect work", "POST collect", download="1")
            + link("Sheet", f"{here}/sheet.html")
            + link("Sheet (PDF)", f"{here}/sheet.pdf")
            + button("End course", "POST end", "btn-danger float-end", confirm=confirm)
            + "</div>"
            + BROADCAST_FORM
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Account", "Nickname", "Server", "Node", "Since", "Last activity", "Pending because", "")
    )
    rows = "".join(participant_row(p) for p in participants)
    parts.append('<div id="werkbank-result" class="alert alert-info d-none" role="status"></div>')
    parts.append(
        f'<table class="table table-sm" id="werkbank-participants" data-course="{escape(record.name)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )
    return "\n".join(parts)


BROADCAST_FORM = """<form id="werkbank-broadcast" class="input-group mb-3">
<input class="form-control" name="message" maxlength="500" required
 placeholder="A message for everyone's JupyterLab and hub pages">
<button class="btn btn-outline-primary" type="submit">Broadcast</button></form>"""


# --- command line -------------------------------------------------------------------------


async def serve(site_file: str, check_every: float) -> None:
    service_url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
    if not service_url or not prefix:
        raise SystemExit("werkbank-workshop service: run me as a JupyterHub service with a url")
    console = Console(
        _machine(site_file), HubOAuth(base_url=prefix, allow_token_in_url=False, cache_max_age=60), prefix
    )
    listen = urlsplit(service_url)
    # With the hub's internal_ssl: TLS with JupyterHub's certificate for this service (the
    # console runs as the hub's account, which reads it), as HubOAuth uses it for its calls.
    server = HTTPServer(console.app(), xheaders=True, ssl_options=serving_tls(listen.scheme))
    server.listen(listen.port or (443 if listen.scheme == "https" else 80), listen.hostname or "127.0.0.1")
    log.info("werkbank workshop service: %s%s", service_url.rstrip("/"), prefix)
    housekeeping = asyncio.create_task(console.housekeeping(check_every))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    housekeeping.cancel()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m werkbank_spawner.workshop.service", description="werkbank's trainer console service."
    )
    parser.add_argument("--site", required=True, help="the hub's site file")
    parser.add_argument("--check-every", type=float, default=60, help="seconds between housekeeping rounds")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("WERKBANK_WORKSHOP_LOG_LEVEL", "INFO"),
        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args.site, args.check_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
