"""One server under test: ``python -m trio_echo --model X --port 0 ...`` as a subprocess (or the
bare reference, ``python -m trio_echo.bench.bare --port 0 ...``, which prints the same line).

Every scenario gets a fresh server, so that one scenario's leftovers (heap growth, a backlog a
one-client-at-a-time model is still working through) never colour the next one.  The port comes
from the ``NOTICE listening on ...`` line on stderr, polled with a deadline; stdout goes to
/dev/null or to a pipe the caller reads; stop is SIGTERM and a wait, and anything still running
when the ``with`` block ends is killed.

CPU time, memory, threads and context switches come from psutil (the ``bench`` extra; without it
a server does not start and the reason is one line, :data:`.machine.PSUTIL_MISSING`), summed over
the server's whole process tree (:func:`process_tree`): every thread of the threads model counts,
and so does every worker process of ``--workers`` (``trio-w2``), without touching the server.

A server may run under a ``wrapper`` that watches it (``strace -f -c``, :mod:`.syscalls`): the
wrapper is the child the bench started and the server the wrapper's child; the figures and the
SIGTERM of :meth:`ServerProcess.stop` are the server's, and the wrapper ends when the server does.

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from trio_echo.bench import csink
from trio_echo.bench.bare import BARE
from trio_echo.bench.machine import (
    Counters,
    descendants,
    missing_process_figures,
    process_tree,
    tree_counters,
    tree_sum,
)

__all__ = [
    "METRICS",
    "NOHUB",
    "VARIANTS",
    "W2",
    "WAUTO",
    "Counters",
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

# Clock ticks per second, for the machine's busy time from /proc/stat (scenarios.common).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Variant:
    """A bench-only variant of a CLI model: that model, run with more flags."""

    model: str
    flags: tuple[str, ...]
    # Processes that serve (``--workers N``; 0: ``--workers auto``, one per CPU it may use): a
    # variant with several is placed apart (``scenarios.Context.cpus_for``).
    workers: int = 1
    # Another revision's source tree to run instead of this one (``bench --baseline``), and
    # that revision's commit.
    source: Path | None = None
    revision: str | None = None
    # Whether the bench scrapes the server's ``--metrics`` endpoint during its measured runs
    # (:class:`.scrape.ScrapedServer`).
    scraped: bool = False


# The trio model with two worker processes behind a supervisor (``--workers 2``, the port shared
# with SO_REUSEPORT): what a second core gains.
W2 = "trio-w2"
# The trio model with ``--workers auto``, one worker per CPU it runs on: not in the default
# lineup (on 2 cores it is trio-w2), for a machine of many cores (docs/performance.md).
WAUTO = "trio-wauto"
# The trio model without its epoll readiness hub (``--no-accelerator``): what the hub is worth.
NOHUB = "trio-nohub"
# The trio model with its ``--metrics`` endpoint on a free loopback port, scraped by the bench
# during its measured runs (:mod:`.scrape`): what seeing inside a running server costs.
METRICS = "trio-metrics"
# ``bench --baseline REV`` adds ``trio@REV`` here (:func:`.baseline.register`).
VARIANTS: dict[str, Variant] = {
    W2: Variant("trio", ("--workers", "2"), workers=2),
    WAUTO: Variant("trio", ("--workers", "auto"), workers=0),
    NOHUB: Variant("trio", ("--no-accelerator",)),
    METRICS: Variant("trio", ("--metrics", "127.0.0.1:0"), scraped=True),
}


def server_command(model: str, flags: Sequence[str]) -> list[str]:
    """The command line of a server of ``model``: ``python -m trio_echo --model X``, a variant
    (:data:`VARIANTS`: ``--model trio --workers 2`` for ``trio-w2``), or the bench's bare
    reference (:mod:`.bare`), which is no model of the CLI."""
    if model == BARE:
        return [sys.executable, "-m", "trio_echo.bench.bare", "--port", "0", *flags]
    if model == csink.C_SINK:
        return csink.command()
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


class ServerError(Exception):
    """The server did not start or misbehaved; the message is one line."""


def _require_psutil() -> None:
    """:class:`ServerError` with the one line that names the extra to install, without psutil
    (the process figures, and the process tree a kill needs, come from it)."""
    if (missing := missing_process_figures()) is not None:
        raise ServerError(missing)


@contextlib.contextmanager
def _pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """This thread on ``cpus`` for the time of a fork, so that the child starts there: set on
    the child after the fork, a wrapper such as strace could fork the server first.  Every
    thread the server makes later inherits the set.  Not where the OS has no CPU affinity."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):  # CPUs we may not use: the child runs where we do
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


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
        wrapper: Sequence[str] = (),
    ) -> None:
        _require_psutil()  # before anything starts
        self.command = [*wrapper, *server_command(model, flags)]
        cwd, env = server_environment(model)
        with _pinned(cpus):
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
            )
        # The server's pid: the process started, or the wrapper's child (found once listening).
        self.pid = self.proc.pid
        self._stderr = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._exited_at: float | None = None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._waiter = threading.Thread(target=self._wait_exit, daemon=True)
        self._waiter.start()
        self.port = self._wait_port(startup_timeout)
        if wrapper:
            self.pid = self._wrapped_pid()

    # ---- start --------------------------------------------------------------------------------

    def _wrapped_pid(self) -> int:
        """The server under the wrapper: the wrapper's one child (there: it said it listens)."""
        below = descendants(self.proc.pid)
        if not below:
            self.__exit__()
            raise ServerError(f"{self.command[0]} started no server")
        return below[0]

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
        ``--workers``); not the wrapper's (``strace``), which only watches."""
        return process_tree(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the whole process tree: every thread of every
        process, and the children that already exited and were waited for.  NaN once the
        server is gone."""
        return self.counters().cpu_seconds

    def counters(self) -> Counters:
        """CPU time and context switches so far of the whole process tree
        (:func:`.machine.tree_counters`)."""
        return tree_counters(self.pid)

    def _sum(self, figure: Callable[[Any], int]) -> int:
        total = tree_sum(self.pid, figure)
        if total is None:
            raise ServerError(f"the server (pid {self.pid}) is gone")
        return total

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree now: the sum of each process's RSS.  Pages
        they share (the interpreter's code) count once per process; the difference between two
        moments, which the memory scenarios report, is what the connections cost."""
        return self._sum(lambda process: int(process.memory_info().rss))

    def threads(self) -> int:
        """Threads of the whole process tree."""
        return self._sum(lambda process: int(process.num_threads()))

    # ---- what a scenario tells the server -----------------------------------------------------

    def measuring(self) -> contextlib.AbstractContextManager[None]:
        """Around each measured run of a scenario: nothing here; a server the bench watches
        (:class:`.scrape.ScrapedServer`) scrapes its metrics meanwhile."""
        return contextlib.nullcontext()

    def figures(self) -> dict[str, Any]:
        """Figures of the server's own to add to the scenario's, once stopped: none here."""
        return {}

    # ---- stop ---------------------------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM, then wait up to ``timeout``: (exit status or None if killed, seconds from
        the signal to the exit)."""
        sent = time.monotonic()
        if self.proc.poll() is None:
            # The server's pid, not a wrapper's: strace passes the signal to the server, whose
            # clean exit ends strace (which writes its summary then).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
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
        own: a kill of the supervisor alone would leave them serving until they notice), and
        the wrapper's, if any."""
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
