"""Memory per idle connection: the server's RSS before and after thousands of idle clients.

Each client is served one echo first, so that the server really holds a handler for it.
"""

from __future__ import annotations

import time

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import guard
from trio_echo.models import Model

__all__ = ["idle_memory"]


def idle_memory(ctx: Context, model: Model) -> Result:
    """Server RSS (summed over its processes) before and after ``idle_connections`` clients
    connected, each served one echo (so the server really holds a handler for it) and then idle:
    the delta per connection."""
    count = ctx.sizes.idle_connections

    def run() -> Result:
        with ctx.server(model, ["--echo", "--quiet"]) as server:
            time.sleep(0.2)
            before = server.rss_bytes()
            with loadgen.Hold(ctx.binary, server.port, count, ctx.sizes.hold_timeout) as hold:
                ready = hold.ready()
                time.sleep(0.3)
                after = server.rss_bytes()
                threads = server.threads()
                processes = len(server.processes())
                hold.finish()
            server.stop()
        figures: Figures = {
            "connections": count,
            "served_connections": ready["echoed"],
            "connect_s": round(ready["elapsed"], 3),
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "kb_per_connection": round((after - before) / count / 1024, 2),
            "server_threads": threads,
            "server_processes": processes,
        }
        if ready["echoed"] < count:
            return Result(
                figures,
                skipped=f"limited: only {ready['echoed']} of {count} connections were served "
                f"within {ctx.sizes.hold_timeout:g} s",
            )
        return Result(figures)

    return guard(run)
