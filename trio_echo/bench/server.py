"""One server under test: ``python -m trio_echo --model X --port 0 ...`` as a subprocess (or the
bare reference, ``python -m trio_echo.bench.bare --port 0 ...``, which prints the same line).

Every scenario gets a fresh server, so that one scenario's leftovers (heap growth, a backlog a
one-client-at-a-time model is still working through) never colour the next one.  The port comes
from the ``NOTICE listening on ...`` line on stderr, polled with a deadline; stdout goes to
/dev/null or to a pipe the caller reads; stop is SIGTERM and a wait, and anything still running
when the ``with`` block ends is killed.

CPU time and memory come from ``/proc/PID/stat`` and ``/proc/PID/status``, summed over the
server's whole process tree (:func:`process_tree`): every thread of the threads model counts, and
so does every worker process of ``--workers`` (``trio-w2``), without touching the server.

A variant may run another revision's source (``bench --baseline REV``, :mod:`.baseline`): its
server starts in that source tree, with the tree first on ``PYTHONPATH``, so that ``python -m
trio_echo`` imports that revision's package and not this one (:func:`server_environment`).
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
from pathlib import Path
from typing import IO

import attrs

from trio_echo.bench.bare import BARE

__all__ = [
    "NOHUB",
    "VARIANTS",
    "W2",
    "ServerError",
    "ServerProcess",
    "Variant",
    "descendants",
    "process_tree",
    "server_command",
    "server_environment",
]

# ``01:04:27.446 NOTICE listening on 127.0.0.1:46253, [::1]:46253 (print, text)``
LISTENING_RE = re.compile(r"NOTICE listening on (?P<addresses>.+) \((?P<mode>[^()]*)\)\s*$")
PORT_RE = re.compile(r"127\.0\.0\.1:(?P<port>\d+)")
# ``stopped: served 3 connections, 1234 bytes received, up 1.0 s``
SUMMARY_RE = re.compile(r"served (?P<connections>\d+) connections?, (?P<bytes>\d+) bytes received")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@attrs.frozen
class Variant:
    """A bench-only variant of a CLI model: that model, run with more flags."""

    model: str
    flags: tuple[str, ...]
    # Processes that serve (``--workers N``): a variant with more than one runs on every CPU the
    # bench may use, not only the servers' (see ``cli.pin_cpus``).
    workers: int = 1
    # Another revision's source tree to run instead of this one (``bench --baseline``), and
    # that revision's commit.
    source: Path | None = None
    revision: str | None = None


# The trio model with two worker processes behind a supervisor (``--workers 2``, the port shared
# with SO_REUSEPORT): what a second core gains.
W2 = "trio-w2"
# The trio model without its epoll readiness hub (``--no-accelerator``): what the hub is worth.
NOHUB = "trio-nohub"
# ``bench --baseline REV`` adds ``trio@REV`` here (:func:`.baseline.register`).
VARIANTS: dict[str, Variant] = {
    W2: Variant("trio", ("--workers", "2"), workers=2),
    NOHUB: Variant("trio", ("--no-accelerator",)),
}


def server_command(model: str, flags: Sequence[str]) -> list[str]:
    """The command line of a server of ``model``: ``python -m trio_echo --model X``, a variant
    (:data:`VARIANTS`: ``--model trio --workers 2`` for ``trio-w2``), or the bench's bare
    reference (:mod:`.bare`), which is no model of the CLI."""
    if model == BARE:
        return [sys.executable, "-m", "trio_echo.bench.bare", "--port", "0", *flags]
    variant = VARIANTS.get(model, Variant(model, ()))
    return [
        sys.executable,
        *("-m", "trio_echo", "--model", variant.model, *variant.flags),
        *("--port", "0", "--log-level", "notice"),
        *flags,
    ]


def server_environment(model: str) -> tuple[Path | None, dict[str, str] | None]:
    """(working directory, environment) of a server of ``model``: (None, None), inherit ours,
    except for a variant of another revision (:attr:`Variant.source`): that source tree as the
    working directory and first on ``PYTHONPATH``.  Both are needed: ``python -m`` puts the
    working directory before ``PYTHONPATH`` on ``sys.path`` (run from this checkout, it would
    import this checkout's package), and the editable install's finder comes after both."""
    variant = VARIANTS.get(model)
    if variant is None or variant.source is None:
        return None, None
    source = str(variant.source)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return variant.source, env


# ---- the process tree -------------------------------------------------------------------------

# ``/proc/PID/task/TID/children`` (Linux >= 4.2 with CONFIG_PROC_CHILDREN); without it the tree is
# found from the parent pids of every process in ``/proc/*/stat``.
HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: [0] is the state (field 3 of
    proc(5)), [1] the parent pid, [11] utime, [12] stime, [13] cutime, [14] cstime."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """The children of ``pid``: those of each of its threads, since a child is listed under the
    thread that forked it (Trio starts processes from a worker thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found  # gone
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(child) for child in f.read().split()]
        except OSError:
            continue  # the thread ended meanwhile (its children went to another thread)
    return found


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from the parent pids in ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent = int(_stat(int(name))[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children, ...), parents first."""
    table = None if HAVE_CHILDREN_FILES else _children_by_parent()
    tree = [pid]
    index = 0
    while index < len(tree):
        parent = tree[index]
        tree += _children(parent) if table is None else table.get(parent, [])
        index += 1
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    return process_tree(pid)[1:]


def _rss(pid: int) -> int:
    """``VmRSS`` of ``pid`` in bytes (0 for a zombie, which has none left)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/statm") as f:  # no VmRSS line: a zombie, or an odd kernel
        return int(f.read().split()[1]) * PAGE_SIZE


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
        cwd, env = server_environment(model)
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
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

    def processes(self) -> list[int]:
        """The server's process tree: its process, then every process below it (the workers of
        ``--workers``)."""
        return process_tree(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the whole process tree (10 ms resolution): every
        thread of every process, and the children that already exited and were waited for (a
        worker that died: its time moves into its parent's ``cutime``/``cstime``)."""
        total = 0
        for pid in self.processes():
            try:
                fields = _stat(pid)
            except OSError:
                if pid == self.proc.pid:
                    return float("nan")
                continue  # a worker that ended meanwhile
            total += sum(int(field) for field in fields[11:15])
        return total / CLOCK_TICKS

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree now: the sum of each process's ``VmRSS``
        (``/proc/PID/status``).  Pages the processes share (the interpreter's own code) count
        once per process; the difference between two moments, which the memory scenarios
        report, is what the connections cost."""
        total = 0
        for pid in self.processes():
            try:
                total += _rss(pid)
            except OSError:
                if pid == self.proc.pid:
                    raise
        return total

    def threads(self) -> int:
        """Threads of the whole process tree."""
        count = 0
        for pid in self.processes():
            with contextlib.suppress(OSError):
                count += len(os.listdir(f"/proc/{pid}/task"))
        return count

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
        """SIGKILL for the server and every process below it (workers run in sessions of their
        own: a kill of the supervisor alone would leave them serving until they notice)."""
        if self.proc.poll() is None:
            below = descendants(self.proc.pid)
            self.proc.kill()
            for pid in below:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self._waiter.join(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
