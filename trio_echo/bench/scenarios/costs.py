"""Why a model is fast or slow: what one echo request costs its server.

Per request of ``connections`` clients × ``message_bytes`` in a closed loop: the server's CPU
microseconds and context switches (an echo run of its own, :class:`.echo.EchoSession`), and its
system calls by name (two more servers under ``strace -f -c``, one loaded and one idle, whose
difference is the load's, :mod:`trio_echo.bench.syscalls`).  Where strace is missing or may not
trace, the figures say why in one line (``syscalls_skipped``) and keep the rest.

:func:`costs_scenario` is the scenario, :class:`CostSizes` its sizes (``--quick`` or not) and
:func:`render_costs` the table for the terminal, from the JSON-shaped report.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result, Scenario
from trio_echo.bench.scenarios.common import GUARDED
from trio_echo.bench.scenarios.echo import COST_KEYS, EchoSession
from trio_echo.bench.server import ServerProcess
from trio_echo.bench.syscalls import (
    STRACE_FLAGS,
    StraceError,
    count_syscalls,
    per_request,
    strace_unavailable,
    strace_version,
)
from trio_echo.models import Model

__all__ = ["COSTS", "CostSizes", "costs_scenario", "measure_costs", "render_costs"]

# The scenario's key in the report.
COSTS = "costs"
FLAGS = ("--echo", "--quiet")
# The figures of the untraced echo run that the costs keep (beside COST_KEYS).
ECHO_KEYS = ("requests_per_s", "server_cpu", "loadgen_saturated", "other_cpu", "errors")
# System calls per model in the terminal table, most frequent first (the JSON has them all),
# and the least per request it shows (per-connection calls, accept4 or close, are below).
TOP_SYSCALLS = 5
TABLE_FLOOR = 0.02


@attrs.frozen
class CostSizes:
    """How big the costs scenario is: about 4 s per model by default, 1.5 s with ``--quick``
    (most of it starting two servers under strace: 0.3-0.6 s each for a Python)."""

    connections: int = 100
    message_bytes: int = 64
    warmup: float = 0.3  # seconds of discarded load before the untraced run
    duration: float = 1.5  # seconds of the untraced run: CPU and context switches
    traced_duration: float = 1.0  # seconds of load under strace: system calls
    # How long the load generator waits for every client to be served once.
    serve_timeout: float = 3.0

    @classmethod
    def default(cls) -> CostSizes:
        return cls()

    @classmethod
    def quick(cls) -> CostSizes:
        return cls(warmup=0.05, duration=0.2, traced_duration=0.15, serve_timeout=1.0)


def costs_scenario(sizes: CostSizes | None = None) -> Scenario:
    """The costs scenario (key :data:`COSTS`), of ``sizes`` (default: :meth:`CostSizes.default`)."""
    sizes = CostSizes.default() if sizes is None else sizes
    return Scenario(
        COSTS,
        f"costs per request, {sizes.connections} conn × {sizes.message_bytes} B",
        FLAGS,
        functools.partial(measure_costs, sizes),
    )


def _untraced(sizes: CostSizes, ctx: Context, model: Model) -> Result:
    """One echo run (after a probe and a warm-up) with the server's CPU and context switches
    per request: :class:`.echo.EchoSession` with these sizes."""
    echo_sizes = attrs.evolve(
        ctx.sizes,
        duration=sizes.duration,
        warmup=sizes.warmup,
        repeats=1,
        serve_timeout=sizes.serve_timeout,
    )
    echo_ctx = attrs.evolve(ctx, sizes=echo_sizes)
    with EchoSession(echo_ctx, model, sizes.connections, sizes.message_bytes) as session:
        session.start()
        session.measure()
        return session.finish()


def _served_requests(server: ServerProcess, size: int, fallback: int) -> int:
    """The requests a stopped server served, from its summary at exit (bytes received over the
    message size: every request, the load generator's unmeasured first round trips included);
    ``fallback`` if it printed none."""
    received = server.received()
    return received[1] // size if received is not None and received[1] else fallback


def _syscalls(sizes: CostSizes, ctx: Context, model: Model) -> Figures:
    """System calls per request by name, from a loaded server and an idle one under strace."""
    why = strace_unavailable()
    if why is not None:
        return {"syscalls_skipped": why}
    timeout = sizes.traced_duration + sizes.serve_timeout + 10
    counted: list[dict[str, Any]] = []

    def start(wrapper: list[str]) -> ServerProcess:
        return ctx.server(model, list(FLAGS), wrapper=wrapper)

    def load(server: ServerProcess) -> None:
        result = loadgen.run(
            ctx.binary,
            "echo",
            server.port,
            timeout=timeout + 10,
            c=sizes.connections,
            s=sizes.message_bytes,
            d=sizes.traced_duration,
            w=sizes.serve_timeout,
            t=timeout,
        )
        counted.append(result)

    try:
        idle, _ = count_syscalls(start, lambda server: None)
        loaded, server = count_syscalls(start, load)
        (result,) = counted
        fallback = result["requests"] + result["served_connections"]  # and the first ones
        requests = _served_requests(server, sizes.message_bytes, fallback)
        calls, errors = per_request(loaded, idle, requests)
    except (StraceError, *GUARDED) as exc:
        return {"syscalls_skipped": f"failed: {exc}"}
    return {
        "syscalls_counted_by": " ".join([strace_version(), *STRACE_FLAGS]),
        "syscalls_traced_s": sizes.traced_duration,
        # What strace left of the rate: a model it slows far more than the others (the threads
        # model: its threads wait for the GIL while strace holds its owner) counts its waits in
        # a state it never reaches untraced.
        "syscalls_traced_requests_per_s": round(result["requests"] / sizes.traced_duration, 1),
        "syscalls_requests": requests,
        "syscalls_per_request": calls,
        "syscall_errors_per_request": errors,
    }


def measure_costs(sizes: CostSizes, ctx: Context, model: Model) -> Result:
    """What a request costs ``model``'s server: CPU µs, context switches, system calls by name.

    The echo run comes first; a model that fails it or serves only some of the clients is
    reported as the echo scenarios report it (skipped, with what was measured) and not traced.
    """
    echo = _untraced(sizes, ctx, model)
    if echo.skipped is not None:
        return echo
    figures: Figures = {
        "connections": sizes.connections,
        "message_bytes": sizes.message_bytes,
        "duration_s": sizes.duration,
        **{key: echo.figures.get(key) for key in (*ECHO_KEYS, *COST_KEYS)},
        **_syscalls(sizes, ctx, model),
    }
    return Result(figures)


# ---- the table --------------------------------------------------------------------------------


def _number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.{digits}f}"


def _top(calls: Mapping[str, float], count: int = TOP_SYSCALLS) -> str:
    """``sendto 1.00 · recvfrom 1.00 · epoll_wait 0.05``: the most frequent calls."""
    shown = [(name, rate) for name, rate in calls.items() if rate >= TABLE_FLOOR][:count]
    return " · ".join(f"{name} {rate:.2f}" for name, rate in shown)


def render_costs(report: Mapping[str, Any]) -> str:
    """The costs table of a JSON-shaped report (``report["models"][name]["scenarios"]["costs"]``):
    a row per model that has it: req/s of the untraced run, server CPU µs per request,
    voluntary and involuntary context switches per request, the most frequent system calls per
    request.  Empty if no model ran the scenario."""
    rows: list[tuple[str, ...]] = []
    notes: dict[str, list[str]] = {}
    shape = ""
    for name, entry in report.get("models", {}).items():
        result = entry.get("scenarios", {}).get(COSTS)
        if not isinstance(result, Mapping):
            continue
        if "skipped" in result:
            rows.append((name, "-", "-", "-", "-", "-", f"skipped: {result['skipped']}"))
            continue
        shape = shape or f"{result.get('connections')} conn × {result.get('message_bytes')} B"
        calls = result.get("syscalls_per_request")
        if isinstance(calls, Mapping):
            syscalls = _top(calls)
        else:
            syscalls = "-"
            notes.setdefault(str(result.get("syscalls_skipped", "not measured")), []).append(name)
        rows.append(
            (
                name,
                _number(result.get("requests_per_s"), 0),
                _number(result.get("server_cpu_us_per_request"), 1),
                _number(result.get("voluntary_ctx_switches_per_request"), 3),
                _number(result.get("involuntary_ctx_switches_per_request"), 3),
                _number(result.get("syscalls_traced_requests_per_s"), 0),
                syscalls,
            )
        )
    if not rows:
        return ""
    header = (
        "model",
        "req/s",
        "CPU µs/req",
        "vol. cs/req",
        "invol. cs/req",
        "traced req/s",
        "syscalls/req",
    )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:], strict=True)]
        return "  ".join([*cells, row[-1]]).rstrip()

    out = [
        f"Costs per echo request ({shape or '?'}): server CPU and context switches (cs) in an "
        "echo run; system calls in another, under strace -f -c (counts: strace slows the "
        "server to 'traced req/s')",
        line(header),
        *(line(row) for row in rows),
    ]
    out += [f"  no system calls for {', '.join(names)}: {why}" for why, names in notes.items()]
    return "\n".join(out)
