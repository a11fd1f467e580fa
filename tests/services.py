"""Real services started by the tests and the benchmarks: one way to start a process with its
log, wait for it with backoff, fail with the tail of its log, and stop it.

Used by ``tests/mlflow_server.py``, ``tests/cluster.py`` (JupyterHub),
``tests/unit/test_mlflow_proxy.py`` (the proxy process) and ``benchmarks/`` (which put the
repository on ``sys.path`` to import it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")


class ServiceError(AssertionError):
    """A service did not come up, or a wait timed out; the message ends with the log's tail.

    An ``AssertionError``: in a test it is a failure (never a skip)."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    max_interval: float = 1.0,
    failed: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Waits ``interval`` seconds after the first call, doubling up to ``max_interval``: quick for
    what is ready at once, gentle on what takes a minute. HTTP and socket errors raised by
    ``predicate`` count as "not yet". ``failed``, if given, is asked between calls and ends the
    wait at once with its message when it returns one (the service exited). Raises
    :class:`ServiceError` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if failed is not None and (message := failed()):
            raise ServiceError(message)
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, max(max_interval, interval))


def answers(url: str, timeout: float = 2) -> bool:
    """Whether ``GET url`` answers 200 (errors count as no)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class Process:
    """A service process: started in a session of its own (so that what it starts can be
    stopped with it), its output appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self) -> Process:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        return self

    def exited(self) -> str:
        """Why the process is gone, with its log's tail; "" while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        return f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"

    def wait_until(self, predicate: Callable[[], T], timeout: float, what: str, **kw) -> T:
        """:func:`wait_for` that fails at once if the process exits, and adds its log's tail."""
        try:
            return wait_for(predicate, timeout, what, failed=self.exited, **kw)
        except ServiceError as e:
            if self.proc is not None and self.proc.poll() is not None:
                raise
            raise ServiceError(f"{self.name}: {e}:\n{self.log_tail()}") from None

    def stop(self, timeout: float = 20, *, group: bool = False) -> None:
        """SIGTERM (to the process, or with ``group`` to its whole session), then SIGKILL to
        whatever of its session is left after ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
