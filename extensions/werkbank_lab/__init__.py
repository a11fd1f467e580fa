"""werkbank-lab: helpers for a werkbank JupyterLab session (tracking so far)."""

__version__ = "0.1.0"
