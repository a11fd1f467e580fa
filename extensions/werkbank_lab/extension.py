"""The werkbank server extension: template catalogue, copies in the workspace, MLflow UI, the session's times.

Enabled in every single-user server by ``etc/jupyter/jupyter_server_config.d/werkbank_lab.json``, which
``pip install`` (editable too) puts into the environment. Configured as ``c.WerkbankLab.<trait>``.

Start-up order (jupyter_server links every extension before it loads any):

1. ``_link_jupyter_server_extension``: the terminals' shell command (``werkbank_lab.terminal``), before
   jupyter_server_terminals reads it.
2. ``_load_jupyter_server_extension``: adds the handlers (``werkbank_lab.handlers``,
   ``werkbank_lab.mlflow_ui``, ``werkbank_lab.session``).

What JupyterLab shows of them (launcher cards, the time left, warnings) is the lab extension
``@werkbank/lab`` (``extensions/labextension``), which deploy/install.sh builds and installs.

Neither step stops the server for a broken catalogue: the endpoints report the error instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Bool, Unicode, default
from traitlets.config import Configurable

from werkbank_lab import catalogue, dashboards, handlers, mlflow_ui, session, terminal
from werkbank_lab.catalogue import Catalogue
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
        True, help="A launcher card per template, which copies it into the workspace and opens the copy."
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
        route = self.mlflow_route()
        return route.kind == "redirect" and "://" in route.url

    def catalogue(self) -> Catalogue | None:
        return Catalogue(Path(self.templates_dir).expanduser()) if self.templates_dir else None

    def mlflow_route(self) -> mlflow_ui.Route:
        return mlflow_ui.mlflow_route(self.mlflow_tracking_uri, self.mlflow_ui_url, os.environ)

    def session_settings(self, route: mlflow_ui.Route, found: Catalogue | None) -> dict:
        """What the lab extension learns from ``GET werkbank/session`` besides the times, from the
        MLflow route and the catalogue the server extension loaded with."""
        return {
            "mlflow_ui": f"{mlflow_ui.PROXY_BASE}/" if route.kind != "none" else "",
            "mlflow_new_tab": self.mlflow_new_browser_tab,
            "launcher_category": self.launcher_category,
            "template_cards": self.template_launchers and found is not None,
            "mlflow_card": self.mlflow_launcher,
        }


def _link_jupyter_server_extension(serverapp) -> None:
    """The terminals' shell command, before jupyter_server_terminals loads."""
    lab = WerkbankLab(parent=serverapp)
    if lab.terminal_path:
        terminal.configure(serverapp)


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
    clock = session.JobClock(os.environ.get("SLURM_JOB_ID", ""))
    serverapp.web_app.add_handlers(
        ".*$",
        handlers.handlers(base_url, found, workspace, unavailable)
        + mlflow_ui.handlers(base_url, route)
        + session.handlers(base_url, clock, **lab.session_settings(route, found))
        + dashboards.handlers(base_url),
    )
    gated = getattr(serverapp.identity_provider, "is_dashboard_gate", False)
    if os.environ.get("JUPYTERHUB_API_TOKEN") and not gated:
        # Started by something other than werkbank's spawner: nothing to share through, and
        # nothing shared (the hub's shares would open the whole server).
        serverapp.log.warning(
            "werkbank: no dashboard gate in this server; dashboards cannot be shared from it"
        )
    serverapp.log.info(
        "werkbank: templates from %s, copies to %s/, MLflow UI: %s",
        lab.templates_dir or "(none)",
        folder or ".",
        route.kind if route.kind != "none" else f"none ({route.reason})",
    )
