"""Latency against load, without coordinated omission: each model's closed-loop peak, then the
open loop at fractions of it.

A closed loop (every client waits for its answer before it asks again) asks a stalled server
less, so its stalls fall on one request per connection and vanish from p99.  The open loop of
the load generator (``loadgen open``, wrk2's method) sends on a fixed schedule and measures each
request from when it was *due*: a stall is paid by every request that fell due during it.  The
curve -- p50, p99, p99.9 and max at 25/50/75/90 % of the model's own closed-loop peak -- shows
how a model's tail grows as it gets busy, which a single saturated closed-loop figure cannot.

One server per model for the whole curve: a discarded warm-up load, the closed-loop peak
(``connections`` clients, ``size`` bytes, as the echo scenario), one open-loop run per load,
from light to heavy, then the peak again (``peak_after_rps``: a machine whose spare capacity
changed meanwhile made the loads fractions of a peak that no longer held; the table says so).
Each run's schedule is answered in full (or ``grace`` passes) before the next starts, so one
load's backlog never colours the next.

Figures are flat, one name per figure and load, with the unit in the name (``peak_rps``,
``p99_9_ms_at_75``...), so the JSON report and the tables stay one level deep; ``loads`` lists
the percentages the ``_at_`` suffixes use.  :func:`render_latency` is the terminal table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result, Scenario
from trio_echo.bench.scenarios.common import CpuWindow, guard
from trio_echo.bench.server import ServerProcess
from trio_echo.bench.stats import latency_ms
from trio_echo.models import Model

__all__ = ["KEY", "LatencySizes", "curve", "latency_scenario", "render_latency"]

# The scenario's key in the report.
KEY = "latency"
# Seconds the load generator may take beyond a run's own length (connects, warm-up, grace)
# before it gives up by itself; the Python-side backstop adds as much again.
SLACK = 30.0


@attrs.frozen
class LatencySizes:
    """How big the latency curve is.  The default keeps a model's curve under ~15 s (warm-up,
    peak, four loads); ``quick()`` under ~2 s, enough to draw the curve, not to trust p99.9."""

    connections: int = 100
    size: int = 64  # bytes per request
    warmup: float = 0.3  # seconds of discarded closed-loop load on the fresh server
    peak_duration: float = 1.5  # seconds of the closed loop that gives the peak
    duration: float = 1.5  # seconds of schedule per load
    # Fractions of the closed-loop peak offered by the open loop, from light to heavy.
    loads: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    # Seconds the answers still due at the end of a schedule get before they count as
    # unfinished (a model near its limit drains its backlog within it).
    grace: float = 2.0
    # Seconds for every client to be served once (a model that serves one client at a time
    # never gets there, and is reported as limited).
    serve_timeout: float = 3.0

    @classmethod
    def default(cls) -> LatencySizes:
        return cls()

    @classmethod
    def quick(cls) -> LatencySizes:
        return cls(warmup=0.05, peak_duration=0.25, duration=0.2, grace=0.5, serve_timeout=1.0)


def _percent(load: float) -> int:
    """0.75 -> 75: the suffix of the figures at that load."""
    return round(load * 100)


def _closed(
    ctx: Context,
    server: ServerProcess,
    sizes: LatencySizes,
    duration: float,
    window: CpuWindow | None,
) -> dict[str, Any]:
    return loadgen.run(
        ctx.binary,
        "echo",
        server.port,
        timeout=duration + sizes.serve_timeout + 2 * SLACK,
        on_start=None if window is None else window.start,
        c=sizes.connections,
        s=sizes.size,
        d=duration,
        w=sizes.serve_timeout,
        t=duration + sizes.serve_timeout + SLACK,
    )


def _open(ctx: Context, server: ServerProcess, sizes: LatencySizes, rate: float) -> Figures:
    """One open-loop run at ``rate`` requests/s: its figures, suffixed by nothing yet."""
    window = CpuWindow(server)
    limit = sizes.duration + sizes.grace + sizes.serve_timeout + SLACK
    result = loadgen.run(
        ctx.binary,
        "open",
        server.port,
        timeout=limit + SLACK,
        on_start=window.start,
        c=sizes.connections,
        s=sizes.size,
        r=f"{rate:.3f}",
        d=sizes.duration,
        g=sizes.grace,
        w=sizes.serve_timeout,
        t=limit,
    )
    cpu = window.figures(result)
    return {
        "offered_rps": round(result["target_rate"], 1),
        "achieved_rps": round(result["achieved_rate"], 1),
        **latency_ms(result["latency_us"], result["latency_max_us"]),
        "unfinished": result["unfinished"],
        "backlogged": result["backlogged"],
        "send_lag_ms": round(result["dispatch_lag_mean_us"] / 1000.0, 3),
        "server_cpu": cpu["server_cpu"],
        "loadgen_cpu": cpu["loadgen_cpu"],
        "errors": result["errors"] + result["connect_failures"],
    }


def _limited(served: int, sizes: LatencySizes) -> str:
    return (
        f"limited: only {served} of {sizes.connections} connections were answered within "
        f"{sizes.serve_timeout:g} s"
    )


def _measure(ctx: Context, model: Model, sizes: LatencySizes) -> Result:
    with ctx.server(model, ["--echo", "--quiet"]) as server:
        warm = _closed(ctx, server, sizes, sizes.warmup, None)
        if warm["served_connections"] < sizes.connections:
            # A model that serves some clients only (sync): the peak would wait out the same
            # timeout again, and an open loop over unserved connections measures nothing.
            return Result(
                {
                    "connections": sizes.connections,
                    "served_connections": warm["served_connections"],
                },
                skipped=_limited(warm["served_connections"], sizes),
            )
        window = CpuWindow(server)
        peak = _closed(ctx, server, sizes, sizes.peak_duration, window)
        peak_cpu = window.figures(peak)
        peak_latency = latency_ms(peak["latency_us"], peak["latency_max_us"])
        figures: Figures = {
            "connections": sizes.connections,
            "message_bytes": sizes.size,
            "duration_s": sizes.duration,
            "loads": [_percent(load) for load in sizes.loads],
            "peak_rps": round(peak["requests"] / sizes.peak_duration, 1),
            "peak_p50_ms": peak_latency["p50_ms"],
            "peak_p99_ms": peak_latency["p99_ms"],
            "peak_p99_9_ms": peak_latency["p99_9_ms"],
            "peak_max_ms": peak_latency["max_ms"],
            "peak_server_cpu": peak_cpu["server_cpu"],
            "peak_loadgen_cpu": peak_cpu["loadgen_cpu"],
            "peak_loadgen_saturated": peak_cpu["loadgen_saturated"],
            "served_connections": peak["served_connections"],
        }
        if peak["served_connections"] < sizes.connections:
            return Result(figures, skipped=_limited(peak["served_connections"], sizes))
        if peak["requests"] == 0:
            return Result(figures, skipped="no request completed in the closed loop")
        for load in sizes.loads:
            level = _open(ctx, server, sizes, load * figures["peak_rps"])
            figures.update({f"{name}_at_{_percent(load)}": v for name, v in level.items()})
        # The peak again: on a machine whose spare capacity changed during the curve (other
        # work), the loads were fractions of a peak that no longer held, and the table says so.
        after = _closed(ctx, server, sizes, sizes.peak_duration, None)
        figures["peak_after_rps"] = round(after["requests"] / sizes.peak_duration, 1)
        server.stop()
    return Result(figures)


def latency_scenario(sizes: LatencySizes) -> Scenario:
    """The latency-vs-load curve as a scenario of the bench (key :data:`KEY`)."""

    def run(ctx: Context, model: Model) -> Result:
        return guard(lambda: _measure(ctx, model, sizes))

    return Scenario(
        KEY,
        f"latency vs load, {sizes.connections} conn × {sizes.size} B (open loop)",
        ("--echo", "--quiet"),
        run,
    )


def curve(figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The measured points of one model's curve, light to heavy: ``{"load": 25,
    "offered_rps": ..., "p99_ms": ...}`` (every ``*_at_25`` figure without its suffix).  Empty
    for a skipped result or one from before the curve."""
    points = []
    for load in figures.get("loads", []):
        suffix = f"_at_{load}"
        point = {k[: -len(suffix)]: v for k, v in figures.items() if k.endswith(suffix)}
        if point:
            points.append({"load": load, **point})
    return points


def _ms(value: Any) -> str:
    if value is None:
        return "?"
    value = float(value)
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _rate(value: Any) -> str:
    if value is None:
        return "?"
    value = float(value)
    return f"{value / 1000:.1f}k" if value >= 10000 else f"{value:.0f}"


# The peak measured after the curve may differ from the one before by this fraction before
# the table says the loads are not what they say (two closed-loop runs of one server differ
# by ~10 % on a quiet machine).
PEAK_DRIFT = 0.2
# "lag": how late the load generator itself sent, on average (its own timing error, which is
# in every latency of the row: large on a busy machine, where the figures are to be distrusted).
COLUMNS = ("load", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "lag ms")


def render_latency(report: Mapping[str, Any]) -> str:
    """The latency curves of a report as a terminal table: per model its closed-loop peak (the
    "closed" row: what the loads are fractions of, and the latency a closed loop reports), then
    a row per load of the open loop.  Latencies in ms from when each request was due; ``!``
    marks a load whose schedule was not answered in full within the grace (a note says how
    many requests were left: the latencies then flatter the model)."""
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    title = ""
    for name, entry in report.get("models", {}).items():
        figures = entry.get("scenarios", {}).get(KEY)
        if figures is None:
            continue
        title = title or report.get("scenario_titles", {}).get(KEY, "")
        if "skipped" in figures:
            notes.append(f"{name}: {figures['skipped']}")
            continue
        star = "*" if figures.get("peak_loadgen_saturated") else ""
        before, after = figures.get("peak_rps"), figures.get("peak_after_rps")
        if before and after is not None and abs(after / before - 1) > PEAK_DRIFT:
            notes.append(
                f"~: {name}'s closed-loop peak was {_rate(before)}/s before the curve and "
                f"{_rate(after)}/s after it: the machine changed, the loads are not the "
                "fractions they say"
            )
            star += "~"
        rows.append(
            (
                name,
                "closed",
                "-",
                _rate(figures.get("peak_rps")) + star,
                *(_ms(figures.get(f"peak_{k}_ms")) for k in ("p50", "p99", "p99_9", "max")),
                "",
            )
        )
        for point in curve(figures):
            unfinished = point.get("unfinished") or 0
            if unfinished:
                notes.append(
                    f"!: {name} at {point['load']}%: {unfinished} requests due were never "
                    "answered (not in its latencies: the server fell behind for good)"
                )
            rows.append(
                (
                    "",
                    f"{point['load']}%",
                    _rate(point.get("offered_rps")),
                    _rate(point.get("achieved_rps")) + ("!" if unfinished else ""),
                    _ms(point.get("p50_ms")),
                    _ms(point.get("p99_ms")),
                    _ms(point.get("p99_9_ms")),
                    _ms(point.get("max_ms")),
                    _ms(point.get("send_lag_ms")),
                )
            )
    if not rows and not notes:
        return ""
    header = ("model", *COLUMNS)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        title or "latency vs load (open loop)",
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(header, widths, strict=True))
        ),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines.append(
        "(ms from when each request was due, not when it was sent; lag: how late the load "
        "generator sent, on average; *: the load generator was saturated, the peak is a lower "
        "bound; ~: the peak changed during the curve)"
    )
    lines += notes
    return "\n".join(lines)
