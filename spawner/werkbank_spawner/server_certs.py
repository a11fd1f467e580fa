"""The Slurm spawner's side of JupyterHub's ``internal_ssl`` (the site's ``hub.internal_ssl``).

With internal_ssl JupyterHub signs a certificate for every server before ``start()``
(``Spawner.create_certs``) and hands its paths to ``move_certs``, which must make them readable
by the server. Two things differ for a server that is a Slurm job:

- **Names.** The hub checks that the server's certificate names the address it connects to,
  the node's NodeAddr, which nobody knows before Slurm starts the job. The certificate
  therefore names every node of the job's partition (NodeAddr, NodeName and NodeHostname, from
  one ``sinfo`` call) and nothing else: not ``localhost``/``127.0.0.1`` and not the hub's
  ``trusted_alt_names`` (JupyterHub's defaults), names of the hub's host, where a job never
  runs unless a node's NodeAddr says so. Issuing the certificate after the job starts (the job
  would send a signing request with its port report) would name one node only; it needs a new
  route and is not done.
- **Where.** The files go to ``~/.werkbank/certs/<server>`` in the user's home, which the
  nodes share with the hub host. They are written *as the user* (``sudo -u``, the same way as
  ``sbatch``), by a small Python program that reads them from stdin: root never follows a path
  in a home the user controls (JupyterHub's LocalProcessSpawner does, as root: ``rmtree``,
  ``makedirs``, ``chown`` in ``~/.jupyterhub``, which a symbolic link redirects). The folder is
  0700 and the files 0600. The hub's own copies of the server's key and certificate are
  deleted once the user's exist; the folder is removed when the server stops.

The job then finds them through JupyterHub's ``JUPYTERHUB_SSL_KEYFILE``/``CERTFILE``/
``CLIENT_CA`` (set by ``Spawner.get_env`` from ``cert_paths``): jupyterhub-singleuser serves
https and asks every client for a certificate of the hub's CAs, and the job script's port and
end reports (:data:`werkbank_core.script.PORT_REPORT`, ``END_REPORT``) present the server's
certificate to the https hub API and check the hub's against the internal CA.

JupyterHub also signs a certificate for every managed service (``create_certs`` of its service
spawner, readable by the hub's account only, no ``move_certs``) and names it in the service's
``JUPYTERHUB_SSL_*``, which ``HubAuth`` reads. A service that runs as an account of its own
(the MLflow gateway, as ``werkbank-mlflow``) could not read it, and it names only localhost.
:class:`ServiceCerts` is that service's ``move_certs``: values of the service's ``environment``
(JupyterHub calls them with the service's spawner as it starts the process, after it made the
service's certificate) that put a key and certificate for the names the service is reached at,
and JupyterHub's CA bundle for services, into a folder of the service's account, and point
``JUPYTERHUB_SSL_*`` there.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import pwd
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from tornado import web
from traitlets import default
from traitlets.config import LoggingConfigurable

from werkbank_core.slurm import SlurmCommandError

from .private_files import write_private_folder

#: The user's certificate folders, below their home directory; one per server.
CERTS_DIR = ".werkbank/certs"
#: File names in a server's folder: its key, its certificate, the CAs it trusts (the hub's and
#: the proxy's client CA: JupyterHub's ``notebooks-ca`` trust bundle).
KEY, CERT, CA = "server.key", "server.crt", "ca.crt"
_SERVER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")

#: Runs as the user (``sudo -u``): ``write FOLDER`` reads ``{file name: PEM text}`` as JSON
#: from stdin and writes each file new (never through an existing file or link), 0600 in a
#: 0700 folder; ``remove FOLDER`` deletes the three files and the folder if it is then empty.
CERT_WRITER = f"""\
import json, os, sys
action, folder = sys.argv[1], sys.argv[2]
names = {(KEY, CERT, CA)!r}
for name in names:
    try:
        os.unlink(os.path.join(folder, name))
    except FileNotFoundError:
        pass
if action == "remove":
    try:
        os.rmdir(folder)
    except OSError:
        pass
    raise SystemExit(0)
files = json.load(sys.stdin)
os.makedirs(folder, mode=0o700, exist_ok=True)
os.chmod(folder, 0o700)
for name in names:
    fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(files[name])
"""


def alt_name(host: str) -> str:
    """``IP:<address>`` for an IP address, else ``DNS:<name>``."""
    try:
        return f"IP:{ipaddress.ip_address(host)}"
    except ValueError:
        return f"DNS:{host}"


def node_alt_names(sinfo_output: str) -> list[str]:
    """The subject alternative names of every node in ``sinfo --Node --format=%N|%o|%n``
    output (NodeName, NodeAddr, NodeHostname), each once, in order of appearance."""
    names: dict[str, None] = {}
    for line in sinfo_output.splitlines():
        for host in line.strip().split("|"):
            host = host.strip()
            # sinfo prints "(null)" or "N/A" for what a node does not have.
            if host and host not in ("(null)", "N/A") and not any(c.isspace() for c in host):
                names[alt_name(host)] = None
    return list(names)


async def partition_alt_names(spawner) -> list[str]:
    """``ssl_alt_names`` of a werkbank Slurm server: every node of the partition its validated
    request asks for. Not the hub's ``trusted_alt_names`` (JupyterHub's default): those are the
    hub's names, which a user's server has no business being trusted for. Raises (the spawn fails with the
    reason) when sinfo does not answer or names no node: a certificate without the node's
    address would only fail later, as a TLS error."""
    request = spawner.job_request
    if request is None:
        raise web.HTTPError(500, "no validated job request: cannot name the server's nodes")
    argv = [
        *spawner.sinfo_cmd,
        "--noheader",
        "--Node",
        f"--partition={request.partition}",
        "--format=%N|%o|%n",
    ]
    try:
        out = await spawner._run(argv, timeout=30)
    except SlurmCommandError as e:
        raise web.HTTPError(
            500, f"sinfo failed, the server's certificate cannot name its nodes: {e}"
        ) from None
    nodes = node_alt_names(out)
    if not nodes:
        raise web.HTTPError(500, f"sinfo names no node in partition {request.partition}")
    return nodes


def certs_folder(home: str, server_name: str) -> str:
    """``<home>/.werkbank/certs/<server>`` (``default`` for the unnamed server)."""
    name = server_name or "default"
    if not _SERVER_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"unsafe server name {server_name!r}")
    return os.path.join(home, CERTS_DIR, name)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


class ServerCerts(LoggingConfigurable):
    """Mixed into :class:`~werkbank_spawner.spawner.WerkbankSlurmSpawner` *before* batchspawner's
    class (so that its ``move_certs`` wins). Uses the spawner's ``_run``, ``_as_user``,
    ``_job_context`` and ``sinfo_cmd``, and JupyterHub's Spawner traits (a mixin: JupyterHub
    refuses Spawner subclasses without start/stop/poll). Does nothing unless the hub runs with
    internal_ssl."""

    @default("ssl_alt_names")
    def _ssl_alt_names_default(self):
        return partition_alt_names

    @default("ssl_alt_names_include_local")
    def _ssl_alt_names_include_local_default(self):
        # A job never serves at the hub's localhost (a node whose NodeAddr is one still gets it).
        return False

    def certs_folder(self) -> str:
        return certs_folder(self._job_context().homedir, self.name)

    async def move_certs(self, paths: dict) -> dict:
        """Write the server's key and certificate and the CAs into :meth:`certs_folder`, as the
        user; delete the hub's copies of key and certificate. Returns the new paths (JupyterHub
        sets ``cert_paths`` and, from them, the ``JUPYTERHUB_SSL_*`` variables)."""
        folder = self.certs_folder()
        # A few kB from the hub's own disk.
        files = {
            name: _read(paths[key]) for name, key in ((KEY, "keyfile"), (CERT, "certfile"), (CA, "cafile"))
        }
        try:
            await self._run(self._writer("write", folder), stdin=json.dumps(files), timeout=30)
        except SlurmCommandError as e:
            raise web.HTTPError(
                500, f"could not write the server's TLS certificate to {folder}: {e}"
            ) from None
        for key in ("keyfile", "certfile"):
            try:
                os.unlink(paths[key])
            except FileNotFoundError:
                pass
        self.log.info("werkbank: TLS certificate of %s's server in %s", self.user.name, folder)
        return {
            "keyfile": os.path.join(folder, KEY),
            "certfile": os.path.join(folder, CERT),
            "cafile": os.path.join(folder, CA),
        }

    async def remove_certs(self) -> None:
        """Delete the server's key, certificate and CAs from the user's home, as the user; a
        failure is logged (the server is stopped whatever happens here)."""
        try:
            folder = self.certs_folder()
            await self._run(self._writer("remove", folder), timeout=30)
        except (SlurmCommandError, ValueError, web.HTTPError) as e:
            self.log.warning("werkbank: TLS certificate of %s's server not removed: %s", self.user.name, e)

    def _writer(self, action: str, folder: str) -> list[str]:
        return self._as_user([sys.executable, "-I", "-S", "-c", CERT_WRITER, action, folder])

    async def run_post_stop_hook(self):
        """After every stop (also of a server that failed to start or died): remove the
        certificate files, then run the configured ``post_stop_hook``."""
        if self.internal_ssl:
            await self.remove_certs()
        return super().run_post_stop_hook()


# --- managed services ----------------------------------------------------------------------

#: The CA that signs a service's certificate: the hub's own. Jobs check the hub API's certificate
#: against it already (their ``ca.crt``), so they can check the service's too without trusting
#: ``notebooks-ca``, whose certificates every user's server holds (one user's server could pose
#: as the service to another user's job). The hub's proxy accepts it for routes (its
#: ``proxy-client-ca`` trust bundle holds hub-ca and notebooks-ca), and the hub for API clients.
SERVICE_CA = "hub-ca"
#: What a service's certificate names besides where it is reached: JupyterHub's names of this
#: machine (``Spawner.create_certs`` and the hub's own certificate).
LOCAL_ALT_NAMES = ("DNS:localhost", "IP:127.0.0.1", "IP:0:0:0:0:0:0:0:1")
#: The file names of ``cert_paths`` keys in a service's folder (those of a server's).
FILE_NAMES = {"keyfile": KEY, "certfile": CERT, "cafile": CA}
#: ``cert_paths`` keys and the environment variables JupyterHub sets from them (Spawner.get_env).
SSL_ENVIRONMENT = {
    "JUPYTERHUB_SSL_KEYFILE": "keyfile",
    "JUPYTERHUB_SSL_CERTFILE": "certfile",
    "JUPYTERHUB_SSL_CLIENT_CA": "cafile",
}


@dataclass(frozen=True)
class ServiceCerts:
    """The TLS files of the managed service ``service`` under internal_ssl, in ``folder``
    (``<parent>/<service>``; the parent is the hub's, 0755), for ``account`` ("" for the hub's
    own). Frozen: applying a site twice gives equal services."""

    service: str
    folder: str
    account: str
    alt_names: tuple[str, ...]

    def environment(self) -> dict[str, ServiceCertPath]:
        """The service's ``JUPYTERHUB_SSL_*`` as values JupyterHub calls with its spawner."""
        return {variable: ServiceCertPath(self, key) for variable, key in SSL_ENVIRONMENT.items()}

    def install(self, spawner) -> dict[str, str]:
        """Once per start of the service (``spawner``: JupyterHub's service spawner, which holds
        the certificate JupyterHub just made in ``cert_paths``): sign a key pair for
        :attr:`alt_names` with :data:`SERVICE_CA`, write it and JupyterHub's CA bundle for
        services into :attr:`folder` (0700, files 0600, all the account's), delete the hub's copy
        of the key. Returns (and sets) the spawner's new ``cert_paths``. Runs in the hub, as root
        when the hub is: it writes only below the hub's own ``folder`` parent, never through a
        link, new files only."""
        if spawner.cert_paths.get("keyfile", "").startswith(self.folder + os.sep):
            return spawner.cert_paths  # done for this start: JupyterHub asks once per variable
        from certipy import Certipy

        pair = Certipy(store_dir=spawner.internal_certs_location).create_signed_pair(
            f"service-{self.service}", SERVICE_CA, alt_names=list(self.alt_names), overwrite=True
        )
        files = {
            KEY: _read(pair["files"]["key"]),
            CERT: _read(pair["files"]["cert"]),
            # JupyterHub's trust bundle for services (hub-ca and proxy-client-ca): what the
            # service checks the hub API's certificate against.
            CA: _read(spawner.cert_paths["cafile"]),
        }
        os.unlink(pair["files"]["key"])
        owner = pwd.getpwnam(self.account) if self.account else None
        write_private_folder(self.folder, files, owner)
        spawner.cert_paths = {key: self.path(key) for key in FILE_NAMES}
        return spawner.cert_paths

    def path(self, key: str) -> str:
        """Where the file for ``cert_paths`` key ``key`` is."""
        return os.path.join(self.folder, FILE_NAMES[key])


class ServiceCertPath(str):
    """One value of a service's ``environment``: the path of one of the files
    :meth:`ServiceCerts.install` puts in place (``key``: keyfile, certfile or cafile). JupyterHub
    calls it with the service's spawner (an environment's callable values are called) and
    stores the service's environment in its database as JSON, where it is the path it names."""

    certs: ServiceCerts
    key: str

    def __new__(cls, certs: ServiceCerts, key: str):
        path = super().__new__(cls, certs.path(key))
        path.certs, path.key = certs, key
        return path

    def __reduce__(self):
        return (ServiceCertPath, (self.certs, self.key))

    def __call__(self, spawner) -> str:
        return self.certs.install(spawner)[self.key]


def serving_tls(scheme: str, environ: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """What a managed service serves with at a service URL of ``scheme``: for https, TLS with the
    certificate the hub made for it (``JUPYTERHUB_SSL_KEYFILE``/``CERTFILE``), asking clients for
    none (they authenticate with hub tokens); None for http. Raises ``SystemExit`` for an https
    service without a certificate: it would answer plain HTTP where the hub expects TLS."""
    environ = os.environ if environ is None else environ
    if scheme != "https":
        return None
    keyfile, certfile = environ.get("JUPYTERHUB_SSL_KEYFILE", ""), environ.get("JUPYTERHUB_SSL_CERTFILE", "")
    if not keyfile or not certfile:
        raise SystemExit("an https service URL needs JUPYTERHUB_SSL_KEYFILE and JUPYTERHUB_SSL_CERTFILE")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def fix_service_wait(app_class: type | None = None) -> None:
    """Let JupyterHub wait for managed services with an https ``url`` at its start.

    JupyterHub 6.1 (and its main branch of 2026-08) hands ``start_service`` the TLS context of
    its own *server* (``app.py``: ``make_ssl_context(..., purpose=ssl.Purpose.CLIENT_AUTH)``, the
    hub API's), with which no client connection can be made ("Cannot create a client socket with
    a PROTOCOL_TLS_SERVER context"): a service serving TLS never comes up and the hub exits.
    Wraps ``JupyterHub.start_service`` so that such a context is replaced by None, for which it
    makes the client context it means (the hub's certificate and CAs, the service's name
    checked). Nothing else changes; calling this again does nothing. To go once JupyterHub
    passes a client context. ``app_class``: JupyterHub's application class (tests pass another)."""
    if app_class is None:
        from jupyterhub.app import JupyterHub as app_class

    original = app_class.start_service
    if getattr(original, "werkbank_fixed", False):
        return

    @functools.wraps(original)
    async def start_service(self, service_name, service, ssl_context=None):
        if ssl_context is not None and ssl_context.protocol == ssl.PROTOCOL_TLS_SERVER:
            ssl_context = None
        return await original(self, service_name, service, ssl_context)

    start_service.werkbank_fixed = True
    app_class.start_service = start_service
