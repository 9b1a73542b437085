"""Echo request/response: ``connections`` clients in a closed loop, ``size`` bytes a request.

One server for the whole scenario: a probe connection, a discarded warm-up and ``repeats``
measured runs, and the report gives the median with the spread.  A server's first load can run at
a fraction of its steady rate (asyncio's streams serve ~45k requests/s when the load starts right
after it listens, ~110k once one connection came and went), and one run on a shared machine is one
sample of noise.  :class:`EchoSession` is the same measurement in steps, so that the bench can
take the measured runs of all models in turns (:func:`trio_echo.bench.runner.run_in_turns`).

Beside the rate, what a request costs the server (:class:`RequestCosts`): CPU microseconds and
context switches per request, so that a reader sees where a model's time goes, not only how much
it serves.
"""

from __future__ import annotations

import math
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from trio_echo.bench import fleet
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import GUARDED, CpuWindow, latency_figures, median_index
from trio_echo.bench.server import Counters, ServerError, ServerProcess
from trio_echo.bench.stats import merge_histograms
from trio_echo.models import Model

__all__ = ["COST_KEYS", "EchoSession", "RequestCosts", "echo", "echo_session"]

# The figures of :class:`RequestCosts`.
COST_KEYS = (
    "server_cpu_us_per_request",
    "voluntary_ctx_switches_per_request",
    "involuntary_ctx_switches_per_request",
)
# How long before the load generator's deadline :class:`RequestCosts` takes its closing sample
# (and a tenth of the run more): time for a busy machine to run the timer and for the sample.
COSTS_MARGIN = 0.1


def _probe(port: int, size: int, timeout: float) -> None:
    """One client, one request of ``size`` bytes and its echo, then gone: the first connection
    a fresh server sees (asyncio's streams serve a load that starts right after it listens at
    half the rate of one that starts after such a probe)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"p" * (size - 1) + b"\n")
        got = 0
        while got < size:
            chunk = sock.recv(size - got)
            if not chunk:
                raise ServerError("the probe connection was closed before its echo")
            got += len(chunk)


class RequestCosts:
    """What the server's process tree spent per request over a measured run: CPU microseconds
    (user + system), voluntary context switches (it waited: for the network, a lock, the other
    threads) and involuntary ones (the kernel took its CPU away).

    :meth:`start` when the load generator starts measuring; the closing sample is taken by a
    timer a little *before* the load generator's deadline, while every connection is still
    open: the threads model ends a thread per connection when the load generator closes them,
    and a thread that ended takes its context switches with it (Linux counts them per thread).
    The figures are then rates over that window divided by the load generator's request rate.
    If the timer came too late (a machine so busy that it waits for a CPU), the closing sample
    is taken after the run: the CPU time is right (the kernel keeps an ended thread's), the
    switches only if no thread ended meanwhile.
    """

    def __init__(self, server: ServerProcess, duration: float) -> None:
        self.server = server
        self.duration = duration
        self.samples: list[tuple[float, Counters]] = []
        self._timer: threading.Timer | None = None

    def _sample(self) -> float:
        """Take a sample, stamped with the middle of the time it took; that time."""
        before = time.monotonic()
        counters = self.server.counters()
        after = time.monotonic()
        self.samples.append(((before + after) / 2, counters))
        return after - before

    def start(self) -> None:
        took = self._sample()
        # A sample of a thousand threads can take a tenth of a second on a busy machine: the
        # closing one, with the same time again to spare, ends before the deadline.
        margin = COSTS_MARGIN + self.duration / 10 + 3 * took
        self._timer = threading.Timer(max(0.0, self.duration - margin), self._sample)
        self._timer.daemon = True
        self._timer.start()

    def figures(self, requests: int) -> Figures:
        """The figures, given the requests the load generator counted in ``duration``."""
        if self._timer is None or requests <= 0:
            return dict.fromkeys(COST_KEYS)
        self._timer.cancel()  # too late now: the connections are closing
        self._timer.join(5)
        start, before = self.samples[0]
        if len(self.samples) == 2:
            end, after = self.samples[1]
            # The requests the server served while the counters moved.
            served = requests / self.duration * (end - start)
            switches = True
        else:
            after = self.server.counters()
            served = requests
            switches = after.threads >= before.threads
        if served <= 0:
            return dict.fromkeys(COST_KEYS)
        cpu = after.cpu_seconds - before.cpu_seconds
        voluntary = after.voluntary_switches - before.voluntary_switches
        involuntary = after.involuntary_switches - before.involuntary_switches
        return {
            "server_cpu_us_per_request": round(cpu * 1e6 / served, 2)
            if math.isfinite(cpu)
            else None,
            "voluntary_ctx_switches_per_request": round(voluntary / served, 4)
            if switches
            else None,
            "involuntary_ctx_switches_per_request": round(involuntary / served, 4)
            if switches
            else None,
        }


class EchoSession:
    """One model's server through an echo scenario, in steps, so that the measured runs of
    several models can take turns (see :class:`.base.Scenario`'s ``session``):

    * :meth:`start` -- a fresh server, a probe connection (one request, one echo), then
      ``warmup`` seconds of the same load as measured, discarded;
    * :meth:`measure` -- one measured run of ``duration`` seconds (a no-op once the warm-up
      showed the model serves only some of the clients, or after a failure);
    * :meth:`finish` -- stop the server; the :class:`Result`: the median of the runs, with their
      spread (min, max, every run), latency over all of them, CPU and costs per request
      (:class:`RequestCosts`) of the median run.

    A context manager: the server is killed on the way out, whatever happened.
    """

    def __init__(self, ctx: Context, model: Model, connections: int, size: int) -> None:
        self.ctx = ctx
        self.model = model
        self.connections = connections
        self.size = size
        self.server: ServerProcess | None = None
        self.runs: list[tuple[dict[str, Any], Figures]] = []
        self.limited_warmup = False
        self.failed: str | None = None

    def _load(self, duration: float, on_start: Callable[[], None] | None) -> dict[str, Any]:
        assert self.server is not None
        sizes = self.ctx.sizes
        timeout = duration + sizes.serve_timeout + 30
        return fleet.run(
            self.ctx.binary,
            "echo",
            self.server.port,
            cpus=self.ctx.loadgen_cpus,
            timeout=timeout + 10,
            on_start=on_start,
            c=self.connections,
            s=self.size,
            d=duration,
            w=sizes.serve_timeout,
            t=timeout,
        )

    def start(self) -> None:
        try:
            self.server = self.ctx.server(self.model, ["--echo", "--quiet"])
            _probe(self.server.port, self.size, self.ctx.sizes.serve_timeout)
            warm = self._load(self.ctx.sizes.warmup, None)
        except GUARDED as exc:
            self.failed = f"failed: {exc}"
            return
        if warm["served_connections"] < self.connections:
            # A model that serves some clients only: measuring again would only wait out
            # the same timeout; the warm-up run is the (limited) result.
            self.limited_warmup = True
            unmeasured = {**CpuWindow(self.server).figures(warm), **dict.fromkeys(COST_KEYS)}
            self.runs.append((warm, unmeasured))

    def measure(self) -> None:
        if self.failed is not None or self.limited_warmup or self.server is None:
            return
        window = CpuWindow(self.server)
        costs = RequestCosts(self.server, self.ctx.sizes.duration)

        def started() -> None:
            window.start()
            costs.start()

        try:
            with self.server.measuring():  # a watched server is scraped meanwhile
                result = self._load(self.ctx.sizes.duration, started)
            figures = {**window.figures(result), **costs.figures(result["requests"])}
        except GUARDED as exc:
            self.failed = f"failed: {exc}"
            return
        self.runs.append((result, figures))

    def finish(self) -> Result:
        if self.server is not None:
            self.server.stop()
        if self.failed is not None:
            return Result(skipped=self.failed)
        if not self.runs:
            return Result(skipped="failed: no measured run")
        sizes = self.ctx.sizes
        runs = self.runs
        duration = sizes.warmup if self.limited_warmup else sizes.duration
        rates = [result["requests"] / duration for result, _ in runs]
        middle, cpu = runs[median_index(rates)]
        histogram = merge_histograms(*(result["latency_us"] for result, _ in runs))
        served = min(result["served_connections"] for result, _ in runs)
        figures: Figures = {
            "connections": self.connections,
            "message_bytes": self.size,
            "duration_s": duration,
            "warmup_s": sizes.warmup,
            "repeats": len(runs),
            "requests": middle["requests"],
            "requests_per_s": round(statistics.median(rates), 1),
            "requests_per_s_min": round(min(rates), 1),
            "requests_per_s_max": round(max(rates), 1),
            "requests_per_s_runs": [round(rate, 1) for rate in rates],
            **latency_figures(
                {
                    "latency_us": histogram,
                    "latency_max_us": max(result["latency_max_us"] for result, _ in runs),
                }
            ),
            "served_connections": served,
            "errors": sum(result["errors"] + result["connect_failures"] for result, _ in runs),
            **cpu,
            **(self.server.figures() if self.server is not None else {}),
        }
        if served < self.connections:
            return Result(
                figures,
                skipped=f"limited: only {served} of {self.connections} "
                f"connections were ever answered within {sizes.serve_timeout:g} s + "
                f"{duration:g} s (the rest waited in the listen backlog)",
            )
        if middle["requests"] == 0:
            return Result(figures, skipped="no request completed")
        return Result(figures)

    def __enter__(self) -> EchoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.__exit__()


def echo_session(connections: int, size: int) -> Callable[[Context, Model], EchoSession]:
    def session(ctx: Context, model: Model) -> EchoSession:
        return EchoSession(ctx, model, connections, size)

    return session


def echo(connections: int, size: int) -> Callable[[Context, Model], Result]:
    def scenario(ctx: Context, model: Model) -> Result:
        """``connections`` clients in a closed loop (send ``size`` bytes, wait for them back),
        after one unmeasured round trip each so that every client has been accepted.

        One server for the whole scenario: first a probe connection (one request, one echo),
        then ``warmup`` seconds of the same load, discarded, then ``repeats`` measured runs.
        The figure is their median; the spread (min, max, every run) is reported with it.
        (The bench runs several models' sessions with their runs taking turns instead.)"""
        with EchoSession(ctx, model, connections, size) as session:
            session.start()
            for _ in range(max(1, ctx.sizes.repeats)):
                session.measure()
            return session.finish()

    return scenario
