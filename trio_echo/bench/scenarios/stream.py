"""Streaming into the print path: one client writes lines as fast as the server takes them.

The server prints them (``--raw``, or as text with lines of a given size) to /dev/null; the
figure is MB/s (and lines/s), with the CPU each side used.  The raw stream is measured into a
pipe and into a regular file too (``stream_into_pipe``, ``stream_into_file``): where the trio
model splices (:mod:`trio_echo.output.splice`), and where a real consumer reads.  The pipe's
reader is ``cat`` into /dev/null (the same for every model); the file is a fresh temporary file
per server, emptied before each measured run so that the disk never fills.

Like echo, one server for the whole scenario: a discarded warm-up stream, then ``repeats``
measured streams (a connection each), and the report gives the median with the spread.
:class:`StreamSession` is that in steps, so that the bench takes the measured runs of all
models in turns (:func:`trio_echo.bench.runner.run_in_turns`): a ratio between two models of
the same run (``trio-metrics ÷ trio``, :mod:`trio_echo.bench.overhead`, whose target is 3 %)
then compares runs taken side by side in time, not one each, a model apart.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import GUARDED, CpuWindow, median_index
from trio_echo.bench.server import ServerProcess
from trio_echo.models import Model

__all__ = ["StreamSession", "stream", "stream_session"]


class StreamSession:
    """One model's server through a streaming scenario, in steps (see
    :class:`.base.Scenario`'s ``session``):

    * :meth:`start` -- a fresh server, then a stream of ``warmup`` seconds, discarded;
    * :meth:`measure` -- one measured stream of ``duration`` seconds (a no-op after a failure);
    * :meth:`finish` -- stop the server; the :class:`Result`: the median run's figures, with
      the spread of MB/s (min, max, every run).

    A context manager: the server is killed on the way out, whatever happened.
    """

    def __init__(self, ctx: Context, model: Model, fmt: str, line: int, into: str = "null") -> None:
        self.ctx = ctx
        self.model = model
        self.fmt = fmt
        self.line = line
        self.into = into  # "null", "pipe" or "file": the server's stdout
        self._reader: subprocess.Popen[bytes] | None = None  # the pipe's cat
        self._file: int | None = None  # the file's descriptor (ours; the server has a copy)
        self.server: ServerProcess | None = None
        self.runs: list[tuple[dict[str, Any], Figures]] = []
        self.sent = 0  # bytes of every stream, the warm-up's too: what the server must count
        self.failed: str | None = None

    def _stream(self, duration: float, on_start: Callable[[], None] | None) -> dict[str, Any]:
        """One client streaming ``line``-byte lines for ``duration`` s; the clock stops when
        the server has read everything (it closes after the client's half-close), so kernel
        buffers do not inflate the rate."""
        assert self.server is not None
        result = loadgen.run(
            self.ctx.binary,
            "stream",
            self.server.port,
            timeout=duration + 60,
            on_start=on_start,
            c=1,
            s=self.line,
            d=duration,
            t=duration + 50,
        )
        self.sent += result["bytes"]
        if result["timed_out"]:
            raise loadgen.LoadgenError("the server did not finish reading within 50 s")
        return result

    def _stdout(self) -> int:
        """The server's stdout (see the module docstring)."""
        if self.into == "pipe":
            cat = shutil.which("cat")
            if cat is None:
                raise loadgen.LoadgenError("no cat to read the pipe")
            read_end, write_end = os.pipe()
            try:
                self._reader = subprocess.Popen(
                    [cat], stdin=read_end, stdout=subprocess.DEVNULL, close_fds=True
                )
            finally:
                os.close(read_end)
            return write_end
        if self.into == "file":
            fd, path = tempfile.mkstemp(prefix="trio-echo-stream-")
            os.unlink(path)
            self._file = fd
            return os.dup(fd)
        return subprocess.DEVNULL

    def start(self) -> None:
        flags = ["--raw"] if self.fmt == "raw" else ["--format", self.fmt]
        try:
            stdout = self._stdout()
            try:
                self.server = self.ctx.server(self.model, flags, stdout=stdout)
            finally:
                if stdout != subprocess.DEVNULL:
                    os.close(stdout)  # the server has it now
            self._stream(self.ctx.sizes.warmup, None)
        except GUARDED as exc:
            self.failed = f"failed: {exc}"

    def measure(self) -> None:
        if self.failed is not None or self.server is None:
            return
        if self._file is not None:
            os.ftruncate(self._file, 0)  # the disk never holds more than one run
        window = CpuWindow(self.server)
        try:
            with self.server.measuring():  # a watched server is scraped meanwhile
                result = self._stream(self.ctx.sizes.duration, window.start)
            cpu = window.figures(result)
        except GUARDED as exc:
            self.failed = f"failed: {exc}"
            return
        self.runs.append((result, cpu))

    def _close_stdout(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None
        if self._reader is not None:
            try:
                self._reader.wait(10)  # EOF once the server is gone
            except subprocess.TimeoutExpired:
                self._reader.kill()
                self._reader.wait()
            self._reader = None

    def finish(self) -> Result:
        if self.server is not None:
            self.server.stop()
        self._close_stdout()
        if self.failed is not None:
            return Result(skipped=self.failed)
        if not self.runs or self.server is None:
            return Result(skipped="failed: no measured run")
        rates = [
            result["bytes"] / result["elapsed"] / 1e6 if result["elapsed"] else 0.0
            for result, _ in self.runs
        ]
        middle, cpu = self.runs[median_index(rates)]
        elapsed = middle["elapsed"]
        received = self.server.received()
        figures: Figures = {
            "line_bytes": self.line,
            "stdout": self.into,
            "warmup_s": self.ctx.sizes.warmup,
            "repeats": len(self.runs),
            "bytes": middle["bytes"],
            "elapsed_s": round(elapsed, 3),
            "mb_per_s": round(statistics.median(rates), 2),
            "mb_per_s_min": round(min(rates), 2),
            "mb_per_s_max": round(max(rates), 2),
            "mb_per_s_runs": [round(rate, 2) for rate in rates],
            "lines_per_s": round(middle["bytes"] / self.line / elapsed, 1) if elapsed else None,
            # Every stream's bytes, the warm-up's too: the client's count and the server's.
            "sent_bytes": self.sent,
            "server_received_bytes": received[1] if received else None,
            **cpu,
            **self.server.figures(),
        }
        return Result(figures)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.__exit__()
        self._close_stdout()


def stream_session(
    fmt: str, line: int, into: str = "null"
) -> Callable[[Context, Model], StreamSession]:
    def session(ctx: Context, model: Model) -> StreamSession:
        return StreamSession(ctx, model, fmt, line, into)

    return session


def stream(fmt: str, line: int, into: str = "null") -> Callable[[Context, Model], Result]:
    def scenario(ctx: Context, model: Model) -> Result:
        """One client writes lines of ``line`` bytes (64 KiB at a time) as fast as the server
        takes them; the server prints them (``--raw`` or text) to /dev/null.  One server: a
        warm-up stream, then ``repeats`` measured ones; the figure is their median.  (The
        bench runs several models' sessions with their runs taking turns instead.)"""
        with StreamSession(ctx, model, fmt, line, into) as session:
            session.start()
            for _ in range(max(1, ctx.sizes.repeats)):
                session.measure()
            return session.finish()

    return scenario
