"""The load generator: ``loadgen.c``, compiled on first use, run as a child process.

Why a compiled tool: the benchmark must measure the servers, not the client.  A single-process
pure-Python client tops out well below what uvloop serves; the C event loop in ``loadgen.c``
(epoll on Linux, poll() elsewhere) drives thousands of connections with a fraction of a core
and reports its own CPU time, so the report can state its headroom instead of asserting it.

The source ships as package data; it is compiled with ``cc -O2`` into a cache directory keyed by
the hash of the source and the flags (``$XDG_CACHE_HOME/trio_echo`` or ``~/.cache/trio_echo``),
so a changed source is recompiled and an unchanged one only once.  ``build(backend="poll")``
builds the poll() variant, which macOS and the BSDs get anyway, so that Linux tests it too.
Without a C compiler the bench stops with one line (:class:`LoadgenError`): there is no silent
fallback to a slower, unfair client.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "Background", "Hold", "LoadgenError", "build", "compile_cached", "run"]

SOURCE_NAME = "loadgen.c"
CFLAGS = ("-O2", "-std=gnu11", "-Wall")
# The event loops loadgen.c has: "native" is what the platform gets (epoll on Linux, poll()
# elsewhere); "poll" forces poll() on Linux too (-DLOADGEN_POLL), so the portable backend is
# tested where the suite runs.
BACKENDS: dict[str, tuple[str, ...]] = {"native": (), "poll": ("-DLOADGEN_POLL",)}


class LoadgenError(Exception):
    """The load generator cannot be built or failed; the message is one line."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trio_echo"


def source() -> bytes:
    return resources.files(__package__).joinpath(SOURCE_NAME).read_bytes()


def _resolve(backend: str) -> str:
    """``native`` where this Python sees no ``select.epoll`` is ``poll``: on Linux that is the
    test suite's hidden-epoll run (``nox -s portable``), which then drives the bench with the
    load generator macOS and the BSDs get; elsewhere the two are the same program anyway."""
    if backend == "native" and not hasattr(select, "epoll"):
        return "poll"
    return backend


def flags(backend: str = "native") -> tuple[str, ...]:
    """The compiler flags of ``backend`` (a key of :data:`BACKENDS`)."""
    try:
        return CFLAGS + BACKENDS[_resolve(backend)]
    except KeyError:
        raise LoadgenError(
            f"unknown load generator backend {backend!r} (one of {', '.join(BACKENDS)})"
        ) from None


def build(backend: str = "native") -> Path:
    """The path of the compiled load generator, compiling it if this source is new.

    ``backend``: ``"native"`` (epoll on Linux, poll() elsewhere or where Python has no
    ``select.epoll``) or ``"poll"``.  Compiles into a
    temporary file and renames it into place, so two bench runs at once never execute a
    half-written binary.
    """
    cflags = flags(backend)
    code = source()
    digest = hashlib.sha256(code + " ".join(cflags).encode()).hexdigest()[:16]
    suffix = "" if _resolve(backend) == "native" else f"-{_resolve(backend)}"
    return compile_cached(
        code, SOURCE_NAME, cflags, f"loadgen-{digest}{suffix}", "the bench's load generator"
    )


def compile_cached(
    code: bytes, source_name: str, cflags: Sequence[str], name: str, what: str
) -> Path:
    """``code`` compiled with ``cflags`` as ``name`` in the cache (name it by a digest of the
    code and the flags: an existing file is taken as it is).  Compiles into a temporary file and
    renames it into place, so two bench runs at once never execute a half-written binary.
    ``what`` names the program in the one-line errors (:class:`LoadgenError`)."""
    target = cache_dir() / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise LoadgenError(
            f"no C compiler found (install gcc, e.g. apt-get install gcc, or set CC): {what} "
            "is compiled on first use"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / source_name
        src.write_bytes(code)
        out = Path(tmp) / "program"
        result = subprocess.run(
            [compiler, *cflags, "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            raise LoadgenError(f"cannot compile {what} with {compiler}: {first}")
        os.replace(out, target)
    return target


def _parse(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LoadgenError(f"load generator printed something that is not JSON: {line!r}") from exc
    if not isinstance(value, dict):
        raise LoadgenError(f"load generator printed {line!r}")
    return value


def _command(binary: Path, mode: str, port: int, options: dict[str, object]) -> list[str]:
    argv = [str(binary), mode, "-p", str(port)]
    for flag, value in options.items():
        if value is True:
            argv.append(f"-{flag}")  # a switch
        elif value is not False and value is not None:
            argv += [f"-{flag}", str(value)]
    return argv


def run(
    binary: Path,
    mode: str,
    port: int,
    *,
    timeout: float,
    on_start: Callable[[], None] | None = None,
    **options: object,
) -> dict[str, Any]:
    """Run ``loadgen MODE -p PORT -X value ...`` to its end; its result object.

    ``on_start`` is called when the load generator says the measurement begins, so that the
    caller can sample the server's CPU time over the same window.  ``timeout`` bounds the whole
    run (the load generator bounds itself with ``-t``; this is the backstop).
    """
    proc = subprocess.Popen(
        _command(binary, mode, port, options),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        result: dict[str, Any] | None = None
        for line in proc.stdout:
            event = _parse(line)
            if event.get("event") == "start" and on_start is not None:
                on_start()
            elif event.get("event") == "result":
                result = event
        err = proc.stderr.read()
        status = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if result is None:
        why = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
        if status == -9:
            why = f"killed after {timeout:g} s"
        raise LoadgenError(f"load generator gave no result: {why}")
    return result


class _Interactive:
    """A load generator that runs alongside other work: started, then told to end by closing
    its stdin, each step answered by a JSON line.  Used as a context manager (kills it on the
    way out)."""

    what = "interactive"  # its mode, for messages

    def __init__(self, argv: list[str], timeout: float) -> None:
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.timeout = timeout

    def _next(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; a timer kills the child if it never answers."""
        assert self._proc.stdout is not None
        killer = threading.Timer(timeout, self._proc.kill)
        killer.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            killer.cancel()
        if not line:
            raise LoadgenError(f"load generator ({self.what}) ended without an answer")
        return _parse(line)

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        """Close its stdin (the signal to end) and return its last report."""
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it already ended
            self._proc.stdin.close()
        return self._next(timeout)

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


class Hold(_Interactive):
    """``loadgen hold``: many connections that each did one echo and then stay open.

    Used as a context manager: ``ready()`` waits for the load generator's report that every
    client was served once (or that its timeout passed); ``finish()`` closes its stdin, so it
    closes whatever is still open and reports how the server closed the others.
    """

    what = "hold"

    def __init__(self, binary: Path, port: int, connections: int, timeout: float) -> None:
        super().__init__(_command(binary, "hold", port, {"c": connections, "t": timeout}), timeout)

    def ready(self) -> dict[str, Any]:
        return self._next(self.timeout + 30)

    def __enter__(self) -> Hold:
        return self


class Background(_Interactive):
    """``loadgen echo -i``: clients busy in a closed echo loop until :meth:`finish` (or
    ``timeout``), while something else is measured.

    ``started()`` waits until every client is connected and had its unmeasured round trip (or
    the warm-up timeout ``w`` passed); ``finish()`` ends the load and returns its result
    (``elapsed`` is then the time it was busy).
    """

    what = "background echo"

    def __init__(self, binary: Path, port: int, timeout: float, **options: object) -> None:
        argv = _command(binary, "echo", port, {**options, "d": timeout, "t": timeout, "i": True})
        super().__init__(argv, timeout)

    def started(self) -> dict[str, Any]:
        return self._next(self.timeout + 30)

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        event = super().finish(timeout)
        while event.get("event") != "result":
            event = self._next(timeout)
        return event

    def __enter__(self) -> Background:
        return self


def version_line(binary: Path, backend: str = "native") -> str:
    """What the report says the load generator is."""
    poll = _resolve(backend) == "poll" or not sys.platform.startswith("linux")
    loop = "poll" if poll else "epoll"
    return f"loadgen.c (C, {loop}, one process), built with {' '.join(flags(backend))} at {binary}"
