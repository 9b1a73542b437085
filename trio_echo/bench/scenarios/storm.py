"""Connection storms: many clients connect at once, each sends one line, waits for its echo and
leaves; the time from the first connect to the last echo.

:func:`storm` on an otherwise idle server; :func:`storm_busy` while other clients keep it busy
(a second load generator in the background), to show whether accepting new clients waits behind
the busy ones.
"""

from __future__ import annotations

from typing import Any

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import CpuWindow, drive, guard, latency_figures, median_index
from trio_echo.bench.stats import merge_histograms
from trio_echo.models import Model

__all__ = ["storm", "storm_busy"]


def storm(ctx: Context, model: Model) -> Result:
    """``storm_clients`` clients connect at once, each sends one line, waits for its echo and
    leaves; the time from the first connect to the last echo."""
    count = ctx.sizes.storm_clients

    def run() -> Result:
        timeout = ctx.sizes.serve_timeout * 6
        result, cpu, _ = drive(
            ctx,
            model,
            ["--echo", "--quiet"],
            "echo",
            timeout + 10,
            c=count,
            s=64,
            n=1,
            t=timeout,
        )
        figures: Figures = {
            "clients": count,
            "served": result["requests"],
            "total_s": round(result["elapsed"], 3),
            "clients_per_s": round(result["requests"] / result["elapsed"], 1)
            if result["elapsed"]
            else None,
            **latency_figures(result),
            "errors": result["errors"] + result["connect_failures"] + result["resets"],
            **cpu,
        }
        if result["requests"] < count:
            return Result(
                figures,
                skipped=f"limited: {result['requests']} of {count} clients served within "
                f"{timeout:g} s",
            )
        return Result(figures)

    return guard(run)


def storm_busy(ctx: Context, model: Model) -> Result:
    """``busy_clients`` echo clients in a closed loop (a second load generator) while
    ``busy_storm_clients`` new clients connect at once, each sends one 64-byte line, waits for
    its echo and leaves: the time from the first connect to the last echo.  What it shows: does
    accepting new clients wait behind the busy ones?  ``repeats`` storms, one after the other
    while the same clients stay busy: the median, and the spread (the best is the least
    disturbed by other work on the machine)."""
    sizes = ctx.sizes
    busy, count = sizes.busy_clients, sizes.busy_storm_clients

    def run() -> Result:
        timeout = sizes.serve_timeout * 6
        with ctx.server(model, ["--echo", "--quiet"]) as server:
            background_timeout = sizes.serve_timeout * 2 + timeout + 30
            with loadgen.Background(
                ctx.binary, server.port, background_timeout, c=busy, s=64, w=sizes.serve_timeout
            ) as background:
                started = background.started()
                if started.get("event") != "start" or started.get("warmed", 0) < busy:
                    finished = background.finish()
                    server.stop()
                    return Result(
                        {"busy_clients": busy, "busy_served": finished["served_connections"]},
                        skipped=f"limited: only {started.get('warmed', 0)} of {busy} busy clients "
                        f"were served within {sizes.serve_timeout:g} s",
                    )
                storms: list[tuple[dict[str, Any], Figures]] = []
                for _ in range(max(1, sizes.repeats)):
                    window = CpuWindow(server)
                    result = loadgen.run(
                        ctx.binary,
                        "echo",
                        server.port,
                        timeout=timeout + 10,
                        on_start=window.start,
                        c=count,
                        s=64,
                        n=1,
                        t=timeout,
                    )
                    storms.append((result, window.figures(result)))
                    if result["requests"] < count:
                        break  # limited: another storm would only wait out the timeout again
                busy_result = background.finish()
            server.stop()
        times = [result["elapsed"] for result, _ in storms]
        result, cpu = storms[median_index(times)]
        served = min(result["requests"] for result, _ in storms)
        histogram = merge_histograms(*(result["latency_us"] for result, _ in storms))
        busy_elapsed = busy_result["elapsed"]
        figures: Figures = {
            "clients": count,
            "busy_clients": busy,
            "served": served,
            "repeats": len(storms),
            "total_s": round(result["elapsed"], 4),
            "total_s_min": round(min(times), 4),
            "total_s_max": round(max(times), 4),
            "total_s_runs": [round(t, 4) for t in times],
            "clients_per_s": round(result["requests"] / result["elapsed"], 1)
            if result["elapsed"]
            else None,
            **latency_figures(
                {
                    "latency_us": histogram,
                    "latency_max_us": max(result["latency_max_us"] for result, _ in storms),
                }
            ),
            "busy_requests_per_s": round(busy_result["requests"] / busy_elapsed, 1)
            if busy_elapsed
            else None,
            "busy_served": busy_result["served_connections"],
            "errors": sum(r["errors"] + r["connect_failures"] + r["resets"] for r, _ in storms),
            **cpu,
        }
        if served < count:
            return Result(
                figures,
                skipped=f"limited: {served} of {count} clients served within {timeout:g} s",
            )
        return Result(figures)

    return guard(run)
