"""Many connections held at once (the ``c10k`` scenario): memory per connection, then SIGTERM
with a grace period while they are all still connected, and the time to the exit.
"""

from __future__ import annotations

import time

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import guard
from trio_echo.models import Model

__all__ = ["many"]


def many(ctx: Context, model: Model) -> Result:
    """``many_connections`` clients connected at once, each served one echo, then idle: the
    server's RSS (``VmRSS``, summed over its processes) above its baseline per connection; then
    SIGTERM with ``--grace many_grace`` while they are all still connected: seconds from the
    signal to the exit, and the exit status (the clients never leave by themselves, so the grace
    period runs out and the server must close them all)."""
    sizes = ctx.sizes
    count = sizes.many_connections

    def run() -> Result:
        flags = ["--echo", "--quiet"]
        graceful = "--grace" not in model.unsupported
        if graceful:
            flags += ["--grace", f"{sizes.many_grace:g}"]
        with ctx.server(model, flags) as server:
            time.sleep(0.2)
            before = server.rss_bytes()
            with loadgen.Hold(ctx.binary, server.port, count, sizes.hold_timeout) as hold:
                ready = hold.ready()
                time.sleep(0.3)
                after = server.rss_bytes()
                threads = server.threads()
                processes = len(server.processes())
                status, seconds = server.stop(timeout=30 + sizes.many_grace)
                closed = hold.finish()
        grace = sizes.many_grace if graceful else 0.0
        killed = status is None
        figures: Figures = {
            "connections": count,
            "served_connections": ready["echoed"],
            "served_fraction": round(ready["echoed"] / count, 4),
            "connect_s": round(ready["elapsed"], 3),
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "bytes_per_connection": round((after - before) / count),
            "kb_per_connection": round((after - before) / count / 1024, 2),
            "server_threads": threads,
            "server_processes": processes,
            "grace_s": sizes.many_grace if graceful else None,
            "exit_s": round(seconds, 4),
            "exit_after_grace_s": round(seconds - grace, 4),
            "exit_status": server.proc.returncode if killed else status,
            "killed": killed,
            "clients_closed_eof": closed["eofs"],
            "clients_reset": closed["resets"],
        }
        if killed:
            return Result(figures, skipped="did not exit within 30 s of SIGTERM (killed)")
        if ready["echoed"] < count:
            return Result(
                figures,
                skipped=f"limited: only {ready['echoed']} of {count} connections were served "
                f"within {sizes.hold_timeout:g} s",
            )
        return Result(figures)

    return guard(run)
