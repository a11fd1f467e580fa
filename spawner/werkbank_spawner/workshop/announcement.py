"""The trainers' latest message on the hub's pages: JupyterHub renders ``announcement`` (a
template variable, here a callable of the page's user) above every page."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .store import CourseStore


@dataclass(frozen=True)
class CourseAnnouncement:
    """``template_vars["announcement"]``: the message of the running course the user takes part
    in or trains, escaped (the template marks it safe); "" for anyone else."""

    folder: str

    def __call__(self, user) -> str:
        name = getattr(user, "name", None)
        if not name:
            return ""
        message = CourseStore(self.folder).broadcast_for(name)
        if not message:
            return ""
        return (
            f'<span id="werkbank-broadcast">Course {escape(message["course"])}: '
            f"{escape(message['message'])}</span>"
        )
