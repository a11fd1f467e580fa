"""Start the hub's MLflow server with the secrets MLflow and libpq read only from the environment.

JupyterHub keeps the environment it is given for a managed service in its database (and so in
its dumps and backups), so the hub gives the server none of its secrets there. It writes them at
every start into a file private to the server's account (``werkbank_spawner.site.apply``) and
starts the server through this launcher::

    python -I -m werkbank_spawner.tracking.server_launcher <secrets file> -- mlflow server ...

which reads the file (:func:`.auth.read_secrets`: the account's own, mode 0600, no link), adds
its ``environment`` to its own (MLflow's basic-auth ``MLFLOW_FLASK_SERVER_SECRET_KEY`` and
``MLFLOW_AUTH_ADMIN_PASSWORD``, libpq's ``PGPASSWORD``) and replaces itself with the command
(same process: JupyterHub's stop signal reaches MLflow). The command line names the file only,
so ``ps`` shows no secret. The signing key stays in the file: the auth module inside the server
reads it there (``WERKBANK_MLFLOW_SECRETS``).
"""

from __future__ import annotations

import os
import sys

from .auth import read_secrets

USAGE = "usage: python -m werkbank_spawner.tracking.server_launcher SECRETS_FILE -- COMMAND [ARG ...]"


def main(argv: list[str] | None = None) -> int:
    """Exec ``COMMAND`` with the secrets file's ``environment`` added; returns only on error."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    path, command = args[0], args[2:]
    try:
        secrets = read_secrets(path)
    except (OSError, ValueError) as e:
        print(f"server_launcher: cannot read the secrets file: {e}", file=sys.stderr)
        return 1
    environment = {**os.environ, **secrets.get("environment", {})}
    try:
        os.execve(command[0], command, environment)
    except OSError as e:
        print(f"server_launcher: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
