"""Graceful shutdown: idle clients, SIGTERM, and the time until the server process has exited."""

from __future__ import annotations

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import guard
from trio_echo.models import Model

__all__ = ["SHUTDOWN_GRACE", "shutdown"]

SHUTDOWN_GRACE = 0.0


def shutdown(ctx: Context, model: Model) -> Result:
    """``shutdown_clients`` idle clients (each served once); SIGTERM; the time until the process
    has exited.  ``--grace 0``: the grace period would only add its own length (the clients never
    leave by themselves), so this measures the work of closing every connection and exiting."""
    count = ctx.sizes.shutdown_clients

    def run() -> Result:
        flags = ["--echo", "--quiet"]
        if "--grace" not in model.unsupported:
            flags += ["--grace", f"{SHUTDOWN_GRACE:g}"]
        with (
            ctx.server(model, flags) as server,
            loadgen.Hold(ctx.binary, server.port, count, ctx.sizes.hold_timeout) as hold,
        ):
            ready = hold.ready()
            status, seconds = server.stop(timeout=30)
            closed = hold.finish()
        figures: Figures = {
            "clients": count,
            "served_clients": ready["echoed"],
            "grace_s": SHUTDOWN_GRACE if "--grace" not in model.unsupported else None,
            "exit_s": round(seconds, 4),
            "exit_status": status,
            "clients_closed_eof": closed["eofs"],
            "clients_reset": closed["resets"],
        }
        if status is None:
            return Result(figures, skipped="did not exit within 30 s of SIGTERM (killed)")
        if ready["echoed"] < count:
            return Result(
                figures,
                skipped=f"limited: only {ready['echoed']} of {count} clients were connected and "
                "served when SIGTERM came",
            )
        return Result(figures)

    return guard(run)
