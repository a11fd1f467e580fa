"""The hub's REST API as ``werkbank-workshop`` uses it: with the workshop service's token, which
the hub writes into its state folder at every start (readable by root only). With the hub's
``internal_ssl`` over TLS, the hub's certificate checked against its internal CA (never the
system's CAs) and a certificate of that CA shown, which the hub API asks for."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

from ..site.schema import DEFAULT_HUB_BIND_URL, Site
from .accounts import WorkshopError

#: The file in ``hub.data_dir`` holding the workshop service's API token.
TOKEN_FILE = "workshop-api-token"


def api_url(site: Site) -> str:
    """Where the hub API listens: ``hub.hub_bind_url`` (JupyterHub's default when empty) with
    the base URL of ``hub.bind_url`` and ``hub/api``."""
    base = urlsplit(site.hub.bind_url).path.strip("/")
    root = urlsplit((site.hub.hub_bind_url or DEFAULT_HUB_BIND_URL).rstrip("/"))
    if site.hub.internal_ssl:
        root = root._replace(scheme="https")  # as JupyterHub serves it then, whatever the URL says
    return f"{root.geturl()}/{base + '/' if base else ''}hub/api"


def hub_tls(site: Site, data_dir: Path, environ: dict[str, str] | None = None) -> ssl.SSLContext | None:
    """How to reach the hub API with ``hub.internal_ssl`` (None without): the certificate
    JupyterHub made for the trainer console as it hands it to its managed services
    (``JUPYTERHUB_SSL_*``), or, on the command line, the hub's own in ``<data_dir>/internal-ssl``
    (root's, as the idle culler's ``--internal-certs-location``). Raises :class:`WorkshopError`
    when they cannot be read."""
    if not site.hub.internal_ssl:
        return None
    from ..site.apply import INTERNAL_CERTS  # the site package imports this module

    environ = os.environ if environ is None else environ
    files = [environ.get(f"JUPYTERHUB_SSL_{name}", "") for name in ("KEYFILE", "CERTFILE", "CLIENT_CA")]
    if not all(files):
        certs = data_dir / INTERNAL_CERTS
        files = [certs / "hub-internal" / "hub-internal.key", certs / "hub-internal" / "hub-internal.crt"]
        files.append(certs / "hub-ca_trust.crt")
    keyfile, certfile, cafile = files
    try:
        context = ssl.create_default_context(cafile=cafile)
        context.load_cert_chain(certfile, keyfile)
    except OSError as e:
        raise WorkshopError(
            f"cannot read the hub's TLS certificates ({e.filename or cafile}: {e.strerror}); is the hub "
            "running, and are you root on its host?"
        ) from None
    return context


class HubAPI:
    """A few JSON calls; every failure is a :class:`WorkshopError` naming the call."""

    def __init__(self, url: str, token: str, timeout: float = 30, tls: ssl.SSLContext | None = None):
        self.url, self._token, self.timeout, self.tls = url.rstrip("/"), token, timeout, tls

    @classmethod
    def for_site(cls, site: Site, data_dir: Path) -> HubAPI:
        try:
            token = (data_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise WorkshopError(
                f"cannot read the workshop service's token ({data_dir / TOKEN_FILE}: {e.strerror}); "
                "is the hub running, and are you root on its host?"
            ) from None
        return cls(api_url(site), token, tls=hub_tls(site, data_dir))

    def call(self, method: str, path: str, body: object = None, *, missing_ok: bool = False) -> object:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.tls) as answer:
                text = answer.read()
        except urllib.error.HTTPError as e:
            if missing_ok and e.code == 404:
                return None
            raise WorkshopError(f"hub API {method} {path}: {e.code} {_message(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            raise WorkshopError(f"hub API at {self.url} did not answer: {getattr(e, 'reason', e)}") from None
        return json.loads(text) if text.strip() else None

    # -- the calls a course needs

    def user(self, name: str) -> dict | None:
        return self.call("GET", f"/users/{quote(name, safe='')}", missing_ok=True)

    def ensure_user(self, name: str) -> None:
        if self.user(name) is None:
            self.call("POST", f"/users/{quote(name, safe='')}", {})

    def delete_user(self, name: str) -> None:
        self.call("DELETE", f"/users/{quote(name, safe='')}", missing_ok=True)

    def start_server(self, name: str, options: dict) -> None:
        self.call("POST", f"/users/{quote(name, safe='')}/server", options)

    def has_server(self, name: str) -> bool:
        """Whether ``name`` has a server running, starting or stopping."""
        user = self.user(name)
        return bool(user and (user.get("servers") or user.get("pending")))

    def stop_server(self, name: str) -> bool:
        """Stop ``name``'s server if there is one; whether there was."""
        if not self.has_server(name):
            return False
        self.call("DELETE", f"/users/{quote(name, safe='')}/server", missing_ok=True)
        return True

    def group(self, name: str) -> dict | None:
        return self.call("GET", f"/groups/{quote(name, safe='')}", missing_ok=True)

    def create_group(self, name: str, users: list[str]) -> None:
        self.call("POST", f"/groups/{quote(name, safe='')}", {"users": users})

    def delete_group(self, name: str) -> None:
        self.call("DELETE", f"/groups/{quote(name, safe='')}", missing_ok=True)

    def set_trainers(self, course: str, trainers: list[str]) -> None:
        self.call("PUT", f"/werkbank/course-roles/{quote(course, safe='')}", {"trainers": trainers})

    def remove_trainers(self, course: str) -> None:
        self.call("DELETE", f"/werkbank/course-roles/{quote(course, safe='')}", missing_ok=True)

    def role_exists(self, course: str) -> bool:
        return (
            self.call("GET", f"/werkbank/course-roles/{quote(course, safe='')}", missing_ok=True) is not None
        )


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("message", error.reason)
    except (ValueError, AttributeError, OSError):
        return str(error.reason)


def write_token(data_dir: Path, token: str) -> None:
    """The hub's side: the service token where :meth:`HubAPI.for_site` reads it (owner only)."""
    fd = os.open(data_dir / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
