"""HTTP handlers of the template catalogue.

- ``GET  /werkbank/templates``: the catalogue as a JSON list (``Template.to_json``).
- ``POST /werkbank/templates/<id>/copy``: copies the template into the workspace; 201 with
  ``{"id", "path", "url"}`` (``url`` opens it in JupyterLab). XSRF-checked like every jupyter_server API.
- ``GET  /werkbank/open/<id>``: copies and redirects to ``/lab/tree/<copy>``, so a plain link or a launcher
  entry opens a fresh copy. (A GET that writes: a cross-site link can at most make one more copy, never
  overwrite or read anything.)

Ids are looked up in the catalogue and never joined to a path: an unknown id, ``..`` included, is a 404.
Writes go through the contents manager and the server's authorizer (resource ``contents``, action ``write``).
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_escape, url_path_join
from tornado import web

from werkbank_lab.catalogue import Catalogue, CatalogueError, Template
from werkbank_lab.workspace import Workspace

AUTH_RESOURCE = "contents"


def http_error(status: int, message: str) -> web.HTTPError:
    """An HTTPError whose message reads the same in JSON replies, error pages and the log.

    jupyter_server's API replies show ``log_message`` as it is, its pages and tornado's log apply ``%`` to it:
    so the message carries no ``%`` (written ``%25``, as in URLs) and no arguments.
    """
    return web.HTTPError(status, message.replace("%", "%25"))


class _CatalogueMixin:
    """Shared by the handlers: the catalogue, the workspace, and how errors read."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, catalogue: Catalogue | None, workspace: Workspace, unavailable: str = ""):
        self.catalogue = catalogue
        self.workspace = workspace
        self.unavailable = unavailable  # why there is no catalogue, when there is none

    def templates(self) -> list[Template]:
        if self.catalogue is None:
            raise http_error(503, f"The template catalogue is not available: {self.unavailable}")
        try:
            return self.catalogue.templates()
        except (CatalogueError, OSError) as e:
            self.log.error("werkbank template catalogue: %s", e)
            raise http_error(500, f"The template catalogue cannot be read: {e}") from e

    def template(self, template_id: str, templates: list[Template] | None = None) -> Template:
        templates = self.templates() if templates is None else templates
        for template in templates:
            if template.id == template_id:
                return template
        known = ", ".join(t.id for t in templates) or "none"
        raise http_error(404, f"No template {template_id!r} in the catalogue (templates: {known})")

    async def copy(self, template_id: str) -> tuple[Template, str]:
        templates = self.templates()  # read once: the template, and the links to the others
        template = self.template(template_id, templates)
        try:
            open_urls = {t.id: self.open_url(t.id) for t in templates}
            path = await self.workspace.copy(template, open_urls)
        except (OSError, ValueError) as e:
            raise http_error(500, f"Could not copy {template.id}: {e}") from e
        self.log.info("werkbank: copied template %s to %s", template.id, path)
        return template, path

    def open_url(self, template_id: str) -> str:
        """The route that copies a template and opens the copy (:class:`OpenHandler`)."""
        return url_path_join(self.base_url, "werkbank", "open", url_escape(template_id))

    def lab_url(self, path: str) -> str:
        return url_path_join(self.base_url, "lab", "tree", url_escape(path))


class TemplatesHandler(_CatalogueMixin, APIHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps([t.to_json() for t in self.templates()]))


class CopyHandler(_CatalogueMixin, APIHandler):
    @web.authenticated
    @authorized
    async def post(self, template_id: str):
        template, path = await self.copy(template_id)
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.set_header("Location", self.lab_url(path))
        self.finish(json.dumps({"id": template.id, "path": path, "url": self.lab_url(path)}))


class OpenHandler(_CatalogueMixin, JupyterHandler):
    @web.authenticated
    @authorized(action="write")
    async def get(self, template_id: str):
        _, path = await self.copy(template_id)
        self.redirect(self.lab_url(path))


def handlers(base_url: str, catalogue: Catalogue | None, workspace: Workspace, unavailable: str = "") -> list:
    kwargs = {"catalogue": catalogue, "workspace": workspace, "unavailable": unavailable}
    return [
        (url_path_join(base_url, r"werkbank/templates/?"), TemplatesHandler, kwargs),
        (url_path_join(base_url, r"werkbank/templates/([^/]+)/copy"), CopyHandler, kwargs),
        (url_path_join(base_url, r"werkbank/open/([^/]+)"), OpenHandler, kwargs),
    ]
