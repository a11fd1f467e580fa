"""TLS for what a session (and a batch job it submits) asks of the hub, under ``hub.internal_ssl``.

With JupyterHub's internal_ssl the hub API and the hub's MLflow service speak https with
certificates of the hub's own CAs, which no system bundle holds:

- the **hub API** (``JUPYTERHUB_API_URL``) trusts the hub's CAs only and asks every client for a
  certificate of theirs: a session presents its server's (``JUPYTERHUB_SSL_CERTFILE``/``KEYFILE``,
  checked against ``JUPYTERHUB_SSL_CLIENT_CA``), as the job script's port report does
  (``werkbank_core.script.PORT_REPORT``, which runs before any werkbank package is importable and
  so keeps its own three lines);
- the **MLflow service** is checked against ``MLFLOW_TRACKING_SERVER_CERT_PATH`` where set, as
  MLflow's own client does (that bundle only, not the system's), else against the system's CAs.

Never ``verify=False``: a client that cannot check the server does not send it a token.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping


def hub_ssl_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """An SSL context for requests to the hub API: the hub's CAs (``JUPYTERHUB_SSL_CLIENT_CA``)
    and the server's certificate, when the session has one (internal_ssl); ``None`` otherwise
    (plain http, or https with the system's CAs: urllib's and tornado's default)."""
    environ = os.environ if environ is None else environ
    certfile = environ.get("JUPYTERHUB_SSL_CERTFILE", "")
    if not certfile:
        return None
    context = ssl.create_default_context(cafile=environ.get("JUPYTERHUB_SSL_CLIENT_CA") or None)
    context.load_cert_chain(certfile, environ.get("JUPYTERHUB_SSL_KEYFILE") or None)
    return context


def mlflow_verify(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """What httpx's ``verify=`` takes for requests to the MLflow tracking server: a context that
    trusts ``MLFLOW_TRACKING_SERVER_CERT_PATH`` alone where it is set (MLflow's client does the
    same with it), else ``True`` (the system's CAs)."""
    environ = os.environ if environ is None else environ
    path = environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", "")
    if not path:
        return True
    return ssl.create_default_context(cafile=path)
