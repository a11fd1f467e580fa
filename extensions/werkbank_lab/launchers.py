"""JupyterLab launcher entries for the templates and the MLflow UI, through jupyter-server-proxy.

jupyter-server-proxy's lab extension shows a launcher card for every entry of ``ServerProxy.servers`` whose
``launcher_entry`` is enabled, and opens ``<base_url><path_info>`` when it is clicked: in a new browser tab
(``new_browser_tab``) or in a JupyterLab tab (an iframe). An entry without ``command`` and ``port`` proxies
nothing; it is only a card. So each template gets a card opening ``werkbank/open/<id>`` (copy, then
``/lab/tree/<copy>``) in a new browser tab, and the MLflow UI a card opening ``werkbank/mlflow/``.

What such a card cannot do without a frontend of our own: show the description (cards have a title and an
icon only) and open the copy in the *same* JupyterLab window (the copy opens in a new browser tab).
"""

from __future__ import annotations

from importlib.resources import files

from werkbank_lab.catalogue import Template

NAME_PREFIX = "werkbank-"
# Template cards proxy nothing; jupyter-server-proxy warns about each at start. This is that warning.
NO_PROCESS_WARNING = r"Server proxy werkbank-\S+ does not have a command"


def icon(name: str) -> str:
    """Path of one of the package's launcher icons (``template``, ``mlflow``)."""
    return str(files("werkbank_lab") / "launcher-icons" / f"{name}.svg")


def template_title(template: Template) -> str:
    """What the card says: ``03 Training · about 10 min`` (cards are small: phase, name, runtime)."""
    name = template.phase_name.replace("-", " ").capitalize()
    runtime = f" · {template.runtime}" if template.runtime_minutes else ""
    return f"{template.phase:02d} {name}{runtime}"


def template_entries(templates: list[Template], category: str) -> dict[str, dict]:
    """``ServerProxy.servers`` entries: one launcher card per template."""
    return {
        f"{NAME_PREFIX}template-{t.id}": {
            "launcher_entry": {
                "enabled": True,
                "title": template_title(t),
                "path_info": f"werkbank/open/{t.id}",
                "category": category,
                "icon_path": icon("template"),
            },
            "new_browser_tab": True,
        }
        for t in templates
    }


def mlflow_entry(category: str, new_browser_tab: bool) -> dict[str, dict]:
    """The ``ServerProxy.servers`` entry of the MLflow UI card."""
    return {
        f"{NAME_PREFIX}mlflow": {
            "launcher_entry": {
                "enabled": True,
                "title": "MLflow UI",
                "path_info": "werkbank/mlflow/",
                "category": category,
                "icon_path": icon("mlflow"),
            },
            "new_browser_tab": new_browser_tab,
        }
    }


def merged_servers(configured, ours: dict[str, dict]) -> dict[str, dict]:
    """``ServerProxy.servers`` with our entries added; an admin's entry of the same name wins.

    ``configured`` is what the config holds: a dict, or traitlets' ``LazyConfigValue`` when a config file
    called ``c.ServerProxy.servers.update(...)``. Neither it nor ``ours`` is modified.
    """
    from traitlets.config.loader import LazyConfigValue

    if isinstance(configured, LazyConfigValue):
        configured = configured.get_value({})
    return {**ours, **dict(configured or {})}
