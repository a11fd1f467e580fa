"""werkbank-lab: what runs inside a werkbank JupyterLab session.

Tracking helpers (``werkbank_lab.tracking``), notebooks as batch jobs, and the server extension
(``werkbank_lab.extension``): the template catalogue, copies in the workspace, the MLflow UI and launcher
entries. This module stays import-light: jupyter_server imports it in every session.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "werkbank_lab.extension"}]
