"""The terminals' shell command (werkbank_lab.terminal); a real terminal is asked in
tests/lab/test_catalogue.py::test_terminals_find_the_sessions_commands."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

from werkbank_lab import terminal


def test_a_posix_login_shell_then_the_environment_first():
    command = terminal.shell_command("/opt/env with space/bin", "/bin/bash")
    assert command[:3] == ["/bin/bash", "-l", "-c"]
    assert command[3] == "PATH='/opt/env with space/bin':\"$PATH\"; export PATH; exec /bin/bash -i"
    # What the login shell runs: PATH starts with the environment, whatever the profile set.
    inner = command[3].replace("exec /bin/bash -i", 'echo "$PATH"')
    out = subprocess.run(["/bin/bash", "-l", "-c", inner], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("/opt/env with space/bin:")


def test_shells_it_cannot_speak_for_keep_jupyters_default():
    for shell in ("/usr/bin/fish", "/bin/tcsh", "/usr/sbin/nologin"):
        assert terminal.shell_command("/opt/env/bin", shell) is None


def test_a_configured_shell_command_is_left_alone(monkeypatch):
    monkeypatch.setattr(terminal, "login_shell", lambda: "/bin/bash")
    configured = SimpleNamespace(terminado_settings={"shell_command": ["/bin/zsh"]})
    terminal.configure(configured)
    assert configured.terminado_settings == {"shell_command": ["/bin/zsh"]}
    bare = SimpleNamespace(terminado_settings={})
    terminal.configure(bare)
    assert bare.terminado_settings["shell_command"][:3] == ["/bin/bash", "-l", "-c"]
