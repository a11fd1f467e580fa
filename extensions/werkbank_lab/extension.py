"""The werkbank server extension: template catalogue, copies in the workspace, MLflow UI, launcher entries.

Enabled in every single-user server by ``etc/jupyter/jupyter_server_config.d/werkbank_lab.json``, which
``pip install`` (editable too) puts into the environment. Configured as ``c.WerkbankLab.<trait>``.

Start-up order (jupyter_server links every extension before it loads any):

1. ``_link_jupyter_server_extension``: adds the launcher entries to ``ServerProxy.servers`` in the server's
   config, before jupyter-server-proxy reads it when it loads; and the terminals' shell command
   (``werkbank_lab.terminal``), before jupyter_server_terminals reads it.
2. ``_load_jupyter_server_extension``: adds the handlers (``werkbank_lab.handlers``,
   ``werkbank_lab.mlflow_ui``).

Neither step stops the server for a broken catalogue: the endpoints report the error instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from traitlets import Bool, Unicode, default
from traitlets.config import Configurable

from werkbank_lab import catalogue, handlers, launchers, mlflow_ui, terminal
from werkbank_lab.catalogue import Catalogue, CatalogueError
from werkbank_lab.workspace import Workspace, workspace_api_path


class WerkbankLab(Configurable):
    """Settings of the werkbank server extension (``c.WerkbankLab.*``)."""

    templates_dir = Unicode(
        help="""Folder with the shared template originals (NN-phase/*.ipynb and catalogue.yaml); read only.
        Default: $WERKBANK_TEMPLATES_DIR, else the notebooks/ folder of the werkbank checkout werkbank-lab
        is installed (editable) from, else none. A site installing werkbank-lab from a wheel copies notebooks/
        to a read-only place (e.g. /opt/werkbank/templates) and sets this or WERKBANK_TEMPLATES_DIR."""
    ).tag(config=True)

    @default("templates_dir")
    def _default_templates_dir(self):
        return catalogue.default_templates_dir()

    workspace_dir = Unicode(
        "",
        help="""Folder the copies of templates go to: absolute, or relative to the server's root_dir, and
        inside root_dir (so JupyterLab can open them). Default "": ~/werkbank-templates when the home folder
        is inside root_dir, else werkbank-templates in root_dir. Created when the first copy is made.""",
    ).tag(config=True)

    launcher_category = Unicode(
        "Werkbank", help="JupyterLab launcher section of the template and MLflow cards."
    ).tag(config=True)

    template_launchers = Bool(
        True, help="Add a launcher card per template (through jupyter-server-proxy's launcher entries)."
    ).tag(config=True)

    mlflow_tracking_uri = Unicode(
        help="The MLflow tracking server the session uses. Default: $MLFLOW_TRACKING_URI."
    ).tag(config=True)

    @default("mlflow_tracking_uri")
    def _default_mlflow_tracking_uri(self):
        return os.environ.get("MLFLOW_TRACKING_URI", "")

    mlflow_ui_url = Unicode(
        help="""Where browsers open the MLflow UI, when they can reach it directly, e.g. the hub service
        "/services/mlflow/": /werkbank/mlflow/ then redirects there. Default: $WERKBANK_MLFLOW_UI_URL, else ""
        (an http:// tracking server is proxied through the session at /werkbank/mlflow/)."""
    ).tag(config=True)

    @default("mlflow_ui_url")
    def _default_mlflow_ui_url(self):
        return os.environ.get("WERKBANK_MLFLOW_UI_URL", "")

    mlflow_launcher = Bool(True, help="Add a launcher card for the MLflow UI.").tag(config=True)

    terminal_path = Bool(
        True,
        help="""Terminals put this environment's bin folder first on PATH after the login shell has read the
        profile files (which reset PATH), so that werkbank, python, papermill and mlflow are the session's.
        Ignored where ServerApp.terminado_settings names a shell_command.""",
    ).tag(config=True)

    mlflow_new_browser_tab = Bool(
        help="""Open the MLflow UI card in a new browser tab instead of a JupyterLab tab. Default: a
        JupyterLab tab when the UI is served from the session's own origin (proxied, or a path like
        /services/mlflow/), a browser tab when mlflow_ui_url is on another host (MLflow forbids framing by
        other origins)."""
    ).tag(config=True)

    @default("mlflow_new_browser_tab")
    def _default_mlflow_new_browser_tab(self):
        return self.mlflow_route().kind == "redirect" and "://" in self.mlflow_route().url

    def catalogue(self) -> Catalogue | None:
        return Catalogue(Path(self.templates_dir).expanduser()) if self.templates_dir else None

    def mlflow_route(self) -> mlflow_ui.Route:
        return mlflow_ui.mlflow_route(self.mlflow_tracking_uri, self.mlflow_ui_url, os.environ)

    def launcher_entries(self, log) -> dict[str, dict]:
        """The ``ServerProxy.servers`` entries this configuration asks for."""
        entries = {}
        found = self.catalogue()
        if self.template_launchers and found is not None:
            try:
                entries.update(launchers.template_entries(found.templates(), self.launcher_category))
            except (CatalogueError, OSError) as e:
                log.error("werkbank: no template launchers, the catalogue cannot be read: %s", e)
        if self.mlflow_launcher and self.mlflow_route().kind != "none":
            entries.update(launchers.mlflow_entry(self.launcher_category, self.mlflow_new_browser_tab))
        return entries


def _link_jupyter_server_extension(serverapp) -> None:
    """Add our launcher entries to the server's ``ServerProxy.servers`` before jupyter-server-proxy loads,
    and the terminals' shell command before jupyter_server_terminals loads."""
    lab = WerkbankLab(parent=serverapp)
    if lab.terminal_path:
        terminal.configure(serverapp)
    try:
        workspace_api_path(serverapp.root_dir, lab.workspace_dir, Path.home())
    except ValueError:
        return  # no cards that could not work; loading fails with the reason
    entries = lab.launcher_entries(serverapp.log)
    if not entries:
        return
    # Cards without a process make jupyter-server-proxy warn once per card at every start.
    warnings.filterwarnings("ignore", message=launchers.NO_PROCESS_WARNING)
    section = serverapp.config.ServerProxy
    section.servers = launchers.merged_servers(section.get("servers"), entries)


def _load_jupyter_server_extension(serverapp) -> None:
    lab = WerkbankLab(parent=serverapp)
    base_url = serverapp.web_app.settings["base_url"]
    found, unavailable = lab.catalogue(), ""
    if found is None:
        unavailable = "no templates folder configured (WerkbankLab.templates_dir or WERKBANK_TEMPLATES_DIR)"
        serverapp.log.warning("werkbank: %s", unavailable)
    folder = workspace_api_path(serverapp.root_dir, lab.workspace_dir, Path.home())
    workspace = Workspace(serverapp.contents_manager, folder)
    route = lab.mlflow_route()
    serverapp.web_app.add_handlers(
        ".*$",
        handlers.handlers(base_url, found, workspace, unavailable) + mlflow_ui.handlers(base_url, route),
    )
    serverapp.log.info(
        "werkbank: templates from %s, copies to %s/, MLflow UI: %s",
        lab.templates_dir or "(none)",
        folder or ".",
        route.kind if route.kind != "none" else f"none ({route.reason})",
    )
