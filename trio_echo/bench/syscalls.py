"""System calls by name, per request: a server under ``strace -f -c``, its summary parsed.

Why strace and not the CPU time alone: two models can spend the same microseconds per request for
different reasons, and the system calls say which.  Trio without our accelerator re-arms each
socket with ``epoll_ctl`` before every wait (EPOLLONESHOT); the accelerator keeps one
registration per socket, so its ``epoll_ctl`` per request falls to almost nothing, and a reader
can see it.

How: a server is started as ``strace -f -c -o FILE -- python -m trio_echo ...``
(:meth:`.server.ServerProcess`'s ``wrapper``), so that strace is its parent: tracing one's own
child works where ptrace is restricted to ancestors (Yama's ``ptrace_scope`` 1, the default of
many distributions), which attaching to a running server would not.  ``-f`` follows every thread
and child process (the threads model's threads, trio-w2's workers), ``-c`` counts calls by name
and writes the table at exit, ``-o`` keeps it out of the server's stderr.  The server is stopped
with SIGTERM to the server itself (strace delivers it; the server's clean exit ends strace, which
then writes its table).

strace counts everything from the exec on, the interpreter's start-up and the shutdown included
(about 4,000 calls for Python: ``newfstatat``, ``openat``, ``read``, ``mmap`` ...), so the counts of
a server that served nothing (:func:`count_syscalls` with no load) are subtracted from those of
one that served the load (:func:`per_request`).  The requests are those the server itself
reports at exit (bytes received over the message size), every one it served.

strace stops the server at every system call: it serves 2-4 times slower, so the figures are
*counts*, never times.  The counts of data calls (``recvfrom``, ``sendto``) do not depend on the
speed; those of the waits (``epoll_wait``) do, since a slower server finds more sockets ready per
wait: under strace they are a lower bound of the real ones.  The threads model is slowed fifty
times (its threads wait for the GIL while strace holds the thread that has it), and its
``futex`` calls per request are those of that state, not of its untraced one: the costs
scenario reports the traced rate beside the counts, so that the reader can tell.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from trio_echo.bench.server import ServerProcess

__all__ = [
    "STRACE_FLAGS",
    "Calls",
    "StraceError",
    "count_syscalls",
    "parse_summary",
    "per_request",
    "strace_command",
    "strace_unavailable",
    "strace_version",
]

# Follow every thread and child process; count calls by name, the table written at exit.
STRACE_FLAGS = ("-f", "-c")
# A system call made less often than this per request is left out of the figures: what remains of
# the start-up after the subtraction, and the per-connection calls (accept4, close, ...) spread
# over thousands of requests.
FLOOR = 0.005

# One row of strace's ``-c`` table: ``% time, seconds, usecs/call, calls, [errors], syscall``
# (the errors column is blank where there were none), e.g.
# `` 23.51    0.039004           4      8207        30 recvfrom``.
_ROW = re.compile(
    r"^\s*(?P<percent>[\d.]+)\s+(?P<seconds>[\d.]+)\s+(?P<usecs>\d+)\s+(?P<calls>\d+)\s+"
    r"(?:(?P<errors>\d+)\s+)?(?P<name>[A-Za-z_]\w*)\s*$"
)


class StraceError(Exception):
    """strace could not count a server's system calls; the message is one line."""


@attrs.frozen
class Calls:
    """One row of the summary: how many calls of one name, and how many of them failed (for
    a non-blocking socket, mostly EAGAIN: a read that found nothing)."""

    calls: int
    errors: int = 0


def strace_command(output: Path) -> list[str]:
    """The wrapper a server is started under: the summary goes to ``output``."""
    return ["strace", *STRACE_FLAGS, "-o", str(output), "--"]


@functools.cache
def strace_unavailable() -> str | None:
    """Why system calls cannot be counted here, in one line, or None: strace missing, or not
    allowed to trace (ptrace forbidden in a container, for instance).  Checked once, by tracing
    a Python that does nothing."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed (e.g. apt-get install strace): no system call counts"
    try:
        result = subprocess.run(
            [strace, *STRACE_FLAGS, "-o", os.devnull, "--", sys.executable, "-c", ""],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"strace cannot run: {exc}"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit status {result.returncode}"
        return f"strace cannot trace here (is ptrace allowed?): {why}"
    return None


@functools.cache
def strace_version() -> str:
    """``strace 6.1``: what counted, for the report (``strace`` alone if it does not say)."""
    try:
        result = subprocess.run(
            ["strace", "-V"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "strace"
    version = re.search(r"version\s+(\S+)", result.stdout)
    return f"strace {version[1]}" if version else "strace"


def parse_summary(text: str) -> dict[str, Calls]:
    """The calls by name in strace's ``-c`` table (the ``total`` row left out).  A table per
    personality (a 32-bit child of a 64-bit process) adds up under the same names."""
    found: dict[str, Calls] = {}
    for line in text.splitlines():
        row = _ROW.match(line)
        if row is None or row["name"] == "total":
            continue
        before = found.get(row["name"], Calls(0))
        found[row["name"]] = Calls(
            before.calls + int(row["calls"]), before.errors + int(row["errors"] or 0)
        )
    return found


def per_request(
    loaded: Mapping[str, Calls],
    idle: Mapping[str, Calls],
    requests: int,
    floor: float = FLOOR,
) -> tuple[dict[str, float], dict[str, float]]:
    """(calls, failed calls) per request and by name, most frequent first: ``loaded`` minus
    ``idle`` (the start-up and shutdown), over ``requests``; names under ``floor`` left out."""
    if requests <= 0:
        raise StraceError("the traced server served no request")

    def rates(count: Callable[[Calls], int]) -> dict[str, float]:
        found = {
            name: round(max(0, count(calls) - count(idle.get(name, Calls(0)))) / requests, 3)
            for name, calls in loaded.items()
        }
        kept = [(name, rate) for name, rate in found.items() if rate >= floor]
        return dict(sorted(kept, key=lambda item: (-item[1], item[0])))

    return rates(lambda calls: calls.calls), rates(lambda calls: calls.errors)


def count_syscalls(
    start: Callable[[list[str]], ServerProcess],
    load: Callable[[ServerProcess], object],
    timeout: float = 15.0,
) -> tuple[dict[str, Calls], ServerProcess]:
    """A server started by ``start(wrapper)`` under strace, ``load`` run against it, then
    SIGTERM: its system calls by name, and the stopped server (for what it reported at exit).

    :class:`StraceError` if the server does not exit within ``timeout`` (then strace is killed
    and writes nothing) or the summary is empty.
    """
    with tempfile.TemporaryDirectory(prefix="trio-echo-strace-") as tmp:
        output = Path(tmp) / "summary.txt"
        with start(strace_command(output)) as server:
            load(server)
            status, _ = server.stop(timeout)
        if status is None:
            raise StraceError(
                f"the traced server did not exit within {timeout:g} s of SIGTERM: no summary"
            )
        try:
            text = output.read_text(errors="replace")
        except OSError as exc:
            raise StraceError(f"strace wrote no summary: {exc}") from None
    counts = parse_summary(text)
    if not counts:
        first = text.strip().splitlines()[:1] or ["nothing"]
        raise StraceError(f"strace's summary counts no system call: {first[0]!r}")
    return counts, server
