"""Streaming into the print path: one client writes lines as fast as the server takes them.

The server prints them (``--raw``, or as text with lines of a given size) to /dev/null; the
figure is MB/s (and lines/s), with the CPU each side used.
"""

from __future__ import annotations

from collections.abc import Callable

from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import drive, guard
from trio_echo.models import Model

__all__ = ["stream"]


def stream(fmt: str, line: int) -> Callable[[Context, Model], Result]:
    def scenario(ctx: Context, model: Model) -> Result:
        """One client writes lines of ``line`` bytes (64 KiB at a time) as fast as the server
        takes them; the server prints them (``--raw`` or text) to /dev/null.  The clock stops
        when the server has read everything (it closes after the client's half-close), so
        kernel buffers do not inflate the rate."""

        def run() -> Result:
            flags = ["--raw"] if fmt == "raw" else ["--format", fmt]
            result, cpu, server = drive(
                ctx,
                model,
                flags,
                "stream",
                ctx.sizes.duration + 60,
                c=1,
                s=line,
                d=ctx.sizes.duration,
                t=ctx.sizes.duration + 50,
            )
            received = server.received()
            if result["timed_out"]:
                return Result(skipped="the server did not finish reading within 50 s")
            elapsed = result["elapsed"]
            figures: Figures = {
                "line_bytes": line,
                "bytes": result["bytes"],
                "elapsed_s": round(elapsed, 3),
                "mb_per_s": round(result["bytes"] / elapsed / 1e6, 2) if elapsed else None,
                "lines_per_s": round(result["bytes"] / line / elapsed, 1) if elapsed else None,
                "server_received_bytes": received[1] if received else None,
                **cpu,
            }
            return Result(figures)

        return guard(run)

    return scenario
