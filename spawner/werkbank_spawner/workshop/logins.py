"""Course logins on the hub's login form, beside the site's own (PAM or the demo's shared
password): the authenticator classes the site file's ``auth.type`` names.

- **event-code**: the participant types a nickname as user name and the course's event code as
  password, and gets the course's next free pool account (the same one again with the same
  nickname), as 2i2c's workshop hubs do with a shared password. Whoever knows the code can log in
  as any nickname: a code is for one course's room and window, like a shared password.
- **sheet**: a pool account's name and its password from the printed sheet.

Pool accounts log in only while their course is open, from ``starts`` to ``ends`` plus the
grace period; outside it the login page says which course and when, and a pool account is not
allowed in by any other path either (e.g. the demo's shared password). Listed (existing)
accounts keep the site's own login.
"""

from __future__ import annotations

import re
from hmac import compare_digest

from jupyterhub.auth import Authenticator, PAMAuthenticator
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from tornado import web
from traitlets import Unicode

from .store import CourseRecord, CourseStore

#: What a nickname may be: short and plain, it is shown to the trainer.
NICKNAME = re.compile(r"[\w .'-]{1,40}\Z")


class CourseLogins(Authenticator):
    """Mixed into a form-based authenticator (before it in the bases): course logins first, then
    the site's own."""

    workshops_dir = Unicode(
        "", help="The hub's course store (werkbank_spawner.workshop.store); empty: no courses."
    ).tag(config=True)

    @property
    def courses(self) -> CourseStore | None:
        return CourseStore(self.workshops_dir) if self.workshops_dir else None

    async def authenticate(self, handler, data):
        if self.courses and isinstance(data, dict):
            found = self._course_login(str(data.get("username", "")), str(data.get("password", "")))
            if found:
                return found
        return await super().authenticate(handler, data)

    def check_allowed(self, username, authentication=None):
        record = self.courses.course_of(username) if self.courses else None
        if record is not None and record.course.accounts == "pool":
            # A pool account comes in while its course is open, by whatever login, and never
            # outside it; the message says why.
            if not record.is_open():
                raise web.HTTPError(403, record.closed_message())
            return True
        return super().check_allowed(username, authentication)

    def _course_login(self, username: str, password: str) -> dict | None:
        """The auth model of a course login, None if this is not one; HTTP 403 with the course's
        window when it is one outside that window or the course is full."""
        for record in self.courses.running():
            if record.event_code and compare_digest(password.encode(), record.event_code.encode()):
                return self._event_code_login(record, username)
            secret = record.passwords.get(username, "")
            if secret and compare_digest(password.encode(), secret.encode()):
                if not record.is_open():
                    raise web.HTTPError(403, record.closed_message())
                return {"name": username}
        return None

    def _event_code_login(self, record: CourseRecord, nickname: str) -> dict:
        if not record.is_open():
            raise web.HTTPError(403, record.closed_message())
        nickname = " ".join(nickname.split())
        if not NICKNAME.match(nickname):
            raise web.HTTPError(
                403, "Type a nickname of your choice as user name (letters, digits, spaces; up to 40)."
            )
        account = self.courses.claim(record, nickname.casefold())
        if account is None:
            raise web.HTTPError(403, f"The course {record.name} is full: every account is taken.")
        self.log.info("werkbank: %r logged in to course %s as %s", nickname, record.name, account)
        return {"name": account}


class CoursePAMAuthenticator(CourseLogins, PAMAuthenticator):
    """System accounts (PAM), and course logins."""


class CourseSharedPasswordAuthenticator(CourseLogins, SharedPasswordAuthenticator):
    """The demo's shared password, and course logins."""
