"""The hub API endpoint a starting job calls to report the port its server listens on.

batchspawner registers ``/api/batchspawner`` whose handler ``setattr``s *every* posted key
on the spawner, so the holder of a server token can overwrite ``exec_prefix``, ``cmd`` or
``req_partition`` and have the hub run commands of their choosing. Importing this module
replaces that handler, at the same URL (so ``batchspawner-singleuser`` keeps working), with
one that accepts exactly ``{"port": <1..65535>}`` and sets nothing but the port.

The route table is process-wide and JupyterHub imports every installed spawner plugin at
start, so this handler also serves plain batchspawner spawners in a hub that uses them: for
those it sets ``spawner.port``, which is all batchspawner's own start() waits for.
"""

from __future__ import annotations

import hmac
import json

import batchspawner.api  # noqa: F401  (registers the handler we replace below)
from batchspawner import BatchSpawnerBase
from jupyterhub.apihandlers import APIHandler, default_handlers
from tornado import web

ROUTE = r"/api/batchspawner"


class PortReportHandler(APIHandler):
    """POST ``{"port": N}`` with the server's own API token."""

    @web.authenticated
    async def post(self):
        spawner = self._spawner_for_token()
        body = self.get_json_body()
        if not isinstance(body, dict) or set(body) != {"port"}:
            raise web.HTTPError(400, 'expected exactly {"port": <number>}')
        port = body["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise web.HTTPError(400, "port must be a number from 1 to 65535")
        if hasattr(spawner, "report_port"):
            try:
                spawner.report_port(port)
            except ValueError as e:
                raise web.HTTPError(400, str(e)) from None
        else:
            spawner.port = port
        self.set_status(201)
        self.finish(json.dumps({"message": "port recorded"}))

    def _spawner_for_token(self):
        token = self.get_auth_token() or ""
        user = self.current_user
        for spawner in getattr(user, "spawners", {}).values():
            theirs = getattr(spawner, "api_token", None) or ""
            if theirs and hmac.compare_digest(theirs, token) and isinstance(spawner, BatchSpawnerBase):
                return spawner
        raise web.HTTPError(403, "this token belongs to no starting batch server")


def install_handler() -> None:
    """Make ``ROUTE`` point at :class:`PortReportHandler` (idempotent)."""
    default_handlers[:] = [h for h in default_handlers if h[0] != ROUTE]
    default_handlers.append((ROUTE, PortReportHandler))


install_handler()
