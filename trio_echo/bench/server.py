"""One server under test: ``python -m trio_echo --model X --port 0 ...`` as a subprocess (or the
bare reference, ``python -m trio_echo.bench.bare --port 0 ...``, which prints the same line).

Every scenario gets a fresh server, so that one scenario's leftovers (heap growth, a backlog a
one-client-at-a-time model is still working through) never colour the next one.  The port comes
from the ``NOTICE listening on ...`` line on stderr, polled with a deadline; stdout goes to
/dev/null or to a pipe the caller reads; stop is SIGTERM and a wait, and anything still running
when the ``with`` block ends is killed.

CPU time and memory come from ``/proc/PID/stat`` and ``/proc/PID/status``: process-wide (every
thread of the threads model counts), without touching the server.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from .bare import BARE

__all__ = ["ServerError", "ServerProcess", "server_command"]

# ``01:04:27.446 NOTICE listening on 127.0.0.1:46253, [::1]:46253 (print, text)``
LISTENING_RE = re.compile(r"NOTICE listening on (?P<addresses>.+) \((?P<mode>[^()]*)\)\s*$")
PORT_RE = re.compile(r"127\.0\.0\.1:(?P<port>\d+)")
# ``stopped: served 3 connections, 1234 bytes received, up 1.0 s``
SUMMARY_RE = re.compile(r"served (?P<connections>\d+) connections?, (?P<bytes>\d+) bytes received")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def server_command(model: str, flags: Sequence[str]) -> list[str]:
    """The command line of a server of ``model``: ``python -m trio_echo --model X``, or the
    bench's bare reference (:mod:`.bare`), which is no model of the CLI."""
    if model == BARE:
        return [sys.executable, "-m", "trio_echo.bench.bare", "--port", "0", *flags]
    return [
        sys.executable,
        *("-m", "trio_echo", "--model", model, "--port", "0", "--log-level", "notice"),
        *flags,
    ]


class ServerError(Exception):
    """The server did not start or misbehaved; the message is one line."""


class ServerProcess:
    """A running server under test; use as a context manager (kills it on the way out)."""

    def __init__(
        self,
        model: str,
        flags: Sequence[str],
        *,
        stdout: int | IO[bytes] = subprocess.DEVNULL,
        startup_timeout: float = 20.0,
        cpus: tuple[int, ...] | None = None,
    ) -> None:
        self.command = server_command(model, flags)
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE
        )
        if cpus:
            # Right after the exec, before the interpreter has started any thread: every thread
            # the server makes later inherits this set.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, cpus)
        self._stderr = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._exited_at: float | None = None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._waiter = threading.Thread(target=self._wait_exit, daemon=True)
        self._waiter.start()
        self.port = self._wait_port(startup_timeout)

    # ---- start --------------------------------------------------------------------------------

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            with self._cond:
                self._stderr += chunk
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _wait_exit(self) -> None:
        # A thread blocked in waitpid() notes the exit the instant it happens; Popen.wait with a
        # timeout polls and would add up to 50 ms to the shutdown figure.
        self.proc.wait()
        with self._cond:
            self._exited_at = time.monotonic()
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return self._stderr.decode(errors="replace")

    def _wait_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._stderr.decode(errors="replace").splitlines():
                    if (match := LISTENING_RE.search(line)) and (
                        port := PORT_RE.search(match["addresses"])
                    ):
                        return int(port["port"])
                remaining = deadline - time.monotonic()
                if self._eof or self._exited_at is not None or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        self.__exit__()
        lines = self.stderr.strip().splitlines()
        why = lines[-1] if lines else f"no 'listening on' line within {timeout:g} s"
        raise ServerError(f"server did not start: {why}")

    # ---- watching -----------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process so far (10 ms resolution)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        # After the ")" that ends the command name: state is field 3, utime 14, stime 15.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        """Resident memory of the process now (``VmRSS`` of ``/proc/PID/status``)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        with open(f"/proc/{self.proc.pid}/statm") as f:  # pragma: no cover - no VmRSS line
            return int(f.read().split()[1]) * PAGE_SIZE

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    # ---- stop ---------------------------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM, then wait up to ``timeout``: (exit status or None if killed, seconds from
        the signal to the exit)."""
        sent = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with self._cond:
            self._cond.wait_for(lambda: self._exited_at is not None, timeout)
            exited = self._exited_at
        if exited is None:
            self.kill()
            return None, time.monotonic() - sent
        return self.proc.returncode, max(0.0, exited - sent)

    def received(self) -> tuple[int, int] | None:
        """(connections, bytes) from the summary the server logs when it stops."""
        self._reader.join(5)
        match = SUMMARY_RE.search(self.stderr)
        return (int(match["connections"]), int(match["bytes"])) if match else None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._waiter.join(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
