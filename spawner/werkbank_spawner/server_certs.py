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
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys

from tornado import web
from traitlets import default
from traitlets.config import LoggingConfigurable

from werkbank_core.slurm import SlurmCommandError

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
