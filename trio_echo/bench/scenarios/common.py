"""What several scenarios share: how they measure and how they fail.

The CPU window around a measurement (the server's CPU, the load generator's and the rest of
the machine's, :class:`CpuWindow`), the latency figures from the load generator's histogram, a
fresh server driven by the load generator (:func:`drive`), the median of repeated runs
(:func:`median_index`), and :func:`guard`, which turns a failure (a server that did not start, a
load generator error) into a skipped result instead of the end of the whole run.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from trio_echo.bench import loadgen
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.server import CLOCK_TICKS, ServerError, ServerProcess
from trio_echo.bench.stats import latency_ms
from trio_echo.models import Model

__all__ = [
    "GUARDED",
    "SATURATED",
    "CpuWindow",
    "drive",
    "guard",
    "latency_figures",
    "loadgen_cpu",
    "machine_busy_seconds",
    "median_index",
]


def latency_figures(result: Mapping[str, Any]) -> Figures:
    """p50, p90, p99, p99.9 and max in milliseconds, from the load generator's histogram."""
    return dict(latency_ms(result["latency_us"], result["latency_max_us"]))


# A load generator busier than this (CPU seconds per second, of its one core) may have been the
# bottleneck: the figure it measured is then a lower bound, and the report says so.
SATURATED = 0.9


def loadgen_cpu(result: Mapping[str, Any]) -> Figures:
    """The load generator's CPU use over its measurement, and whether it was saturated."""
    if not result["wall"]:
        return {"loadgen_cpu": None, "loadgen_saturated": None}
    cpu = round(result["cpu"] / result["wall"], 3)
    # Several load generators (bench.fleet): their CPU summed, saturated when one of them is.
    busiest = result.get("busiest_cpu", cpu)
    return {"loadgen_cpu": cpu, "loadgen_saturated": busiest >= SATURATED}


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy (``/proc/stat``), so that a
    scenario can tell how much of the machine went to something else than the server and the
    load generator: other work on a shared machine, and the kernel's network work that the
    scheduler charges to no process."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class CpuWindow:
    """The server's CPU use (cores: CPU seconds per wall second) between :meth:`start` (called
    when the load generator starts measuring) and :meth:`figures`, and the rest of the
    machine's over the same window."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.marks: tuple[float, float, float] | None = None

    def start(self) -> None:
        self.marks = (time.monotonic(), self.server.cpu_seconds(), machine_busy_seconds())

    def figures(self, result: Mapping[str, Any]) -> Figures:
        """``server_cpu``, ``loadgen_cpu``, ``loadgen_saturated`` and ``other_cpu`` (the
        machine's busy cores minus those two)."""
        loadgen_figures = loadgen_cpu(result)
        if self.marks is None:
            return {"server_cpu": None, **loadgen_figures, "other_cpu": None}
        wall = time.monotonic() - self.marks[0]
        if wall <= 0:
            return {"server_cpu": None, **loadgen_figures, "other_cpu": None}
        server = (self.server.cpu_seconds() - self.marks[1]) / wall
        machine = (machine_busy_seconds() - self.marks[2]) / wall
        other = machine - server - (loadgen_figures["loadgen_cpu"] or 0.0)
        return {
            "server_cpu": round(server, 3),
            **loadgen_figures,
            "other_cpu": round(max(0.0, other), 3),
        }


def drive(
    ctx: Context, model: Model, flags: list[str], mode: str, timeout: float, **args: object
) -> tuple[dict[str, Any], Figures, ServerProcess]:
    """A fresh server of ``model`` with ``flags``, driven by the load generator in ``mode``
    (``args`` are its options) with the CPU window around its measurement, then stopped.

    Returns the load generator's result, the CPU figures and the (stopped) server.
    """
    with ctx.server(model, flags) as server:
        window = CpuWindow(server)
        result = loadgen.run(
            ctx.binary, mode, server.port, timeout=timeout, on_start=window.start, **args
        )
        cpu = window.figures(result)
        server.stop()
    return result, cpu, server


# What a scenario that fails raises (server did not start, load generator error).
GUARDED = (ServerError, loadgen.LoadgenError, OSError, subprocess.SubprocessError)


def guard(run: Callable[[], Result]) -> Result:
    """A scenario that fails (server did not start, load generator error) is reported skipped
    with the one-line reason instead of ending the whole run."""
    try:
        return run()
    except GUARDED as exc:
        return Result(skipped=f"failed: {exc}")


def median_index(values: list[float]) -> int:
    """The index of the median value (the lower of the middle two for an even count)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(values) - 1) // 2]
