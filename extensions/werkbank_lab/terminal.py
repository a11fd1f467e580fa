"""JupyterLab's terminals find the session's environment: ``werkbank``, ``python``, ``papermill``,
``mlflow`` of the Python that runs Jupyter, first on ``PATH``.

jupyter_server_terminals starts the user's shell as a login shell (``-l``) when the server has no
terminal of its own, as in a batch job; a login shell reads ``/etc/profile``, which on Debian and
most distributions *sets* ``PATH`` afresh and so drops the environment the job put first. Here the
login shell still reads every profile file (an HPC site's ``module`` command is set up there), then
puts the environment's ``bin`` in front and becomes the interactive shell the user types into.
"""

from __future__ import annotations

import os
import pwd
import shlex
import sys

#: Shells whose ``-l``, ``-c``, ``-i`` and ``PATH=...; export PATH`` mean what this module needs.
POSIX_SHELLS = ("bash", "sh", "dash", "zsh", "ksh", "mksh")


def login_shell() -> str:
    """The user's login shell (the password database's, else ``$SHELL``, else ``/bin/sh``)."""
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or os.environ.get("SHELL") or "/bin/sh"


def shell_command(env_bin: str, shell: str) -> list[str] | None:
    """The terminal command for ``shell`` that keeps ``env_bin`` first on ``PATH``; None for a
    shell this cannot speak for (csh, fish, nologin), which keeps Jupyter's default."""
    if os.path.basename(shell) not in POSIX_SHELLS:
        return None
    then = f'PATH={shlex.quote(env_bin)}:"$PATH"; export PATH; exec {shlex.quote(shell)} -i'
    return [shell, "-l", "-c", then]


def configure(serverapp) -> None:
    """Set ``ServerApp.terminado_settings.shell_command`` unless the site or the user set one.
    Called while extensions are linked, before jupyter_server_terminals reads it."""
    settings = dict(serverapp.terminado_settings)
    if "shell_command" in settings:
        return
    command = shell_command(os.path.dirname(sys.executable), login_shell())
    if command is not None:
        serverapp.terminado_settings = {**settings, "shell_command": command}
