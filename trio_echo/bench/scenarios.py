"""The scenarios: what each one runs and which figures it reports.

Each scenario starts a fresh server for one model, drives it, stops it, and returns a
:class:`Result`: figures, or ``skipped`` with the reason (a model that cannot do it, a server that
served only some of the clients within the time bound, a failure).  Nothing here may hang: every
wait has a deadline, because the ``sync`` model serves one client at a time and the others wait
in the kernel's listen backlog forever.

The heavy traffic (echo request/response, streaming, the connection storm, the idle
connections) comes from the C load generator (:mod:`.loadgen`); the article's experiment is four
gentle clients, in Python, because a line every so often needs no speed and Python can read the
server's stdout alongside.

The echo scenarios keep one server for a probe connection, a discarded warm-up and ``repeats``
measured runs, and report the median with the spread: a server's first load can run at a
fraction of its steady rate (asyncio's streams serve ~45k requests/s when the load starts right
after it listens, ~110k once one connection came and went), and one run on a shared machine is
one sample of noise.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_echo.bench import loadgen
from trio_echo.bench.server import CLOCK_TICKS, VARIANTS, ServerError, ServerProcess
from trio_echo.bench.stats import merge_histograms, percentile
from trio_echo.models import Model

__all__ = ["Context", "EchoSession", "Result", "Scenario", "Sizes", "scenarios_for"]

Figures = dict[str, Any]


@attrs.frozen
class Sizes:
    """How big each scenario is: ``--quick`` is tiny (the whole run well under a minute), the
    default is what docs/benchmarks.md reports."""

    duration: float = 5.0  # seconds of traffic per echo and streaming measurement
    # Measured runs per echo scenario (on one server, after its warm-up) and storms per storm
    # under load; the report gives their median and their spread.
    repeats: int = 3
    # Echo: seconds of discarded load after the probe connection, before the measured runs.
    warmup: float = 0.5
    echo_connections: tuple[int, ...] = (1, 100, 1000)
    echo_sizes: tuple[int, ...] = (64, 1024)
    article_clients: int = 4
    article_lines: int = 8  # lines per client while all are connected
    article_interval: float = 0.25  # seconds between two lines of a client
    stream_block: int = 65536  # bytes per write of the --raw stream
    text_lines: tuple[int, ...] = (64, 4096)  # bytes per line of the text streams
    idle_connections: int = 5000
    storm_clients: int = 2000
    # The storm under load: this many echo clients busy while the storm's clients arrive.
    busy_clients: int = 100
    busy_storm_clients: int = 1000
    shutdown_clients: int = 1000
    # Many connections held at once: memory per connection, then SIGTERM with this --grace.
    many_connections: int = 10000
    many_grace: float = 1.0
    # How long the many-connection scenarios wait for every client to be served once; a model
    # that serves one client at a time uses all of it, then is reported as limited.
    serve_timeout: float = 5.0
    # How long the idle-connection and shutdown scenarios wait for all their clients to be
    # connected and served once (thousands of connects can overflow the listen backlog, and the
    # kernel retries a dropped SYN after a second).
    hold_timeout: float = 15.0

    @classmethod
    def quick(cls, duration: float | None = None, repeats: int | None = None) -> Sizes:
        return cls(
            duration=0.25 if duration is None else duration,
            repeats=1 if repeats is None else repeats,
            warmup=0.05,
            echo_connections=(1, 100),
            echo_sizes=(64,),
            article_lines=4,
            article_interval=0.05,
            idle_connections=200,
            storm_clients=200,
            busy_clients=10,
            busy_storm_clients=100,
            shutdown_clients=100,
            many_connections=200,
            many_grace=0.2,
            serve_timeout=1.0,
            hold_timeout=1.0,
        )


@attrs.frozen
class Result:
    """One scenario's outcome for one model: figures, or why it was skipped (then ``figures``
    may hold what was measured before it was found wanting, under ``partial``)."""

    figures: Mapping[str, Any] = attrs.field(factory=dict)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.skipped is not None:
            out: dict[str, Any] = {"skipped": self.skipped}
            if self.figures:
                out["partial"] = dict(self.figures)
            return out
        return dict(self.figures)


@attrs.frozen
class Context:
    """What every scenario needs besides the model."""

    binary: Path
    sizes: Sizes
    # The CPUs the servers run on (see cli.pin_cpus); None: wherever the kernel likes.
    server_cpus: tuple[int, ...] | None = None
    # The CPUs of the servers with several worker processes (trio-w2): every CPU the bench may
    # use, the load generator's included (set whenever ``server_cpus`` is: the bench itself is
    # pinned to the load generator's CPU, which a server left unpinned would inherit).
    all_cpus: tuple[int, ...] | None = None

    def cpus_for(self, model: Model) -> tuple[int, ...] | None:
        """The CPUs a server of ``model`` is pinned to.  A server of several processes gets
        every CPU: pinned to the servers' CPUs (one, on a 2-core machine) its workers could only
        take turns, and the run would measure nothing but the supervisor's overhead.  So it
        shares a core with the load generator, as the kernel sees fit: on a small machine that
        is what a second worker gets in real life too (the report says so)."""
        variant = VARIANTS.get(model.name)
        if variant is not None and variant.workers > 1:
            return self.all_cpus
        return self.server_cpus

    def server(self, model: Model, flags: list[str], **kwargs: Any) -> ServerProcess:
        """A fresh server of ``model`` with ``flags``, on its CPUs (:meth:`cpus_for`)."""
        return ServerProcess(model.name, flags, cpus=self.cpus_for(model), **kwargs)


@attrs.frozen
class Scenario:
    """A named measurement: ``run(context, model) -> Result``.

    ``session``, where there is one (the echo scenarios), is the same measurement in steps, so
    that the bench can take the measured runs of all models in turns (trio, trio-bare, asyncio,
    trio, trio-bare, ...): a disturbance from other work on the machine then falls on several
    models rather than on one, and the ratios between them hold better.
    """

    key: str
    title: str
    flags: tuple[str, ...]  # server flags it needs (checked against the model's unsupported)
    run: Callable[[Context, Model], Result]
    session: Callable[[Context, Model], EchoSession] | None = None


# ---- helpers ----------------------------------------------------------------------------------


class _PipeLines:
    """Reads a server's stdout pipe to EOF in a thread, so the server never blocks on it."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := self._pipe.read1(65536):
            with self._lock:
                self._data += chunk

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def close(self) -> None:
        self._thread.join(5)
        self._pipe.close()


def _latency_figures(result: Mapping[str, Any]) -> Figures:
    histogram = result["latency_us"]
    ms = {
        name: (None if value is None else value / 1000.0)
        for name, value in (
            ("p50_ms", percentile(histogram, 0.50)),
            ("p99_ms", percentile(histogram, 0.99)),
        )
    }
    return {**ms, "max_ms": result["latency_max_us"] / 1000.0}


# A load generator busier than this (CPU seconds per second, of its one core) may have been the
# bottleneck: the figure it measured is then a lower bound, and the report says so.
SATURATED = 0.9


def _loadgen_cpu(result: Mapping[str, Any]) -> Figures:
    """The load generator's CPU use over its measurement, and whether it was saturated."""
    if not result["wall"]:
        return {"loadgen_cpu": None, "loadgen_saturated": None}
    cpu = round(result["cpu"] / result["wall"], 3)
    return {"loadgen_cpu": cpu, "loadgen_saturated": cpu >= SATURATED}


def _machine_busy_seconds() -> float:
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


class _CpuWindow:
    """The server's CPU use (cores: CPU seconds per wall second) between :meth:`start` (called
    when the load generator starts measuring) and :meth:`figures`, and the rest of the
    machine's over the same window."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.marks: tuple[float, float, float] | None = None

    def start(self) -> None:
        self.marks = (time.monotonic(), self.server.cpu_seconds(), _machine_busy_seconds())

    def figures(self, result: Mapping[str, Any]) -> Figures:
        """``server_cpu``, ``loadgen_cpu``, ``loadgen_saturated`` and ``other_cpu`` (the
        machine's busy cores minus those two)."""
        loadgen_figures = _loadgen_cpu(result)
        if self.marks is None:
            return {"server_cpu": None, **loadgen_figures, "other_cpu": None}
        wall = time.monotonic() - self.marks[0]
        if wall <= 0:
            return {"server_cpu": None, **loadgen_figures, "other_cpu": None}
        server = (self.server.cpu_seconds() - self.marks[1]) / wall
        machine = (_machine_busy_seconds() - self.marks[2]) / wall
        other = machine - server - (loadgen_figures["loadgen_cpu"] or 0.0)
        return {
            "server_cpu": round(server, 3),
            **loadgen_figures,
            "other_cpu": round(max(0.0, other), 3),
        }


def _drive(
    ctx: Context, model: Model, flags: list[str], mode: str, timeout: float, **args: object
) -> tuple[dict[str, Any], Figures, ServerProcess]:
    """A fresh server of ``model`` with ``flags``, driven by the load generator in ``mode``
    (``args`` are its options) with the CPU window around its measurement, then stopped.

    Returns the load generator's result, the CPU figures and the (stopped) server.
    """
    with ctx.server(model, flags) as server:
        window = _CpuWindow(server)
        result = loadgen.run(
            ctx.binary, mode, server.port, timeout=timeout, on_start=window.start, **args
        )
        cpu = window.figures(result)
        server.stop()
    return result, cpu, server


# What a scenario that fails raises (server did not start, load generator error).
_GUARDED = (ServerError, loadgen.LoadgenError, OSError, subprocess.SubprocessError)


def _guard(run: Callable[[], Result]) -> Result:
    """A scenario that fails (server did not start, load generator error) is reported skipped
    with the one-line reason instead of ending the whole run."""
    try:
        return run()
    except _GUARDED as exc:
        return Result(skipped=f"failed: {exc}")


# ---- 1. the article's experiment --------------------------------------------------------------


def article(ctx: Context, model: Model) -> Result:
    """Four clients connected at once, each sending a line at a steady pace; count how many of
    each client's lines the server printed *while all were connected* (the blocking server of
    the article prints only the first client's; the others' lines wait in the kernel)."""
    sizes = ctx.sizes

    def run() -> Result:
        with ctx.server(model, ["--format", "text"], stdout=subprocess.PIPE) as server:
            out = _PipeLines(server.proc.stdout)
            clients: list[socket.socket] = []
            try:
                for _ in range(sizes.article_clients):
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    clients.append(sock)
                names = [f"[127.0.0.1:{c.getsockname()[1]}]" for c in clients]
                for i in range(sizes.article_lines):
                    for n, sock in enumerate(clients):
                        sock.sendall(f"client{n} line{i}\n".encode())
                    time.sleep(sizes.article_interval)
                # Let the last lines through, then count before anybody leaves.
                deadline = time.monotonic() + max(1.0, sizes.article_interval * 4)
                expected = sizes.article_clients * sizes.article_lines
                while time.monotonic() < deadline and out.data.count(b"\n") < expected:
                    time.sleep(0.01)
                snapshot = out.data.decode(errors="replace").splitlines()
            finally:
                for sock in clients:
                    sock.close()
                server.stop()
                out.close()
        served = [sum(1 for line in snapshot if line.startswith(name + " ")) for name in names]
        return Result(
            {
                "clients": sizes.article_clients,
                "lines_per_client": sizes.article_lines,
                "interval_s": sizes.article_interval,
                "lines_served": served,
                "clients_fully_served": sum(1 for n in served if n == sizes.article_lines),
            }
        )

    return _guard(run)


# ---- 2. echo request/response -----------------------------------------------------------------


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


def _median_index(values: list[float]) -> int:
    """The index of the median value (the lower of the middle two for an even count)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(values) - 1) // 2]


class EchoSession:
    """One model's server through an echo scenario, in steps, so that the measured runs of
    several models can take turns (see :class:`Scenario`'s ``session``):

    * :meth:`start` -- a fresh server, a probe connection (one request, one echo), then
      ``warmup`` seconds of the same load as measured, discarded;
    * :meth:`measure` -- one measured run of ``duration`` seconds (a no-op once the warm-up
      showed the model serves only some of the clients, or after a failure);
    * :meth:`finish` -- stop the server; the :class:`Result`: the median of the runs, with their
      spread (min, max, every run), latency over all of them, CPU of the median run.

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
        return loadgen.run(
            self.ctx.binary,
            "echo",
            self.server.port,
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
        except _GUARDED as exc:
            self.failed = f"failed: {exc}"
            return
        if warm["served_connections"] < self.connections:
            # A model that serves some clients only: measuring again would only wait out
            # the same timeout; the warm-up run is the (limited) result.
            self.limited_warmup = True
            self.runs.append((warm, _CpuWindow(self.server).figures(warm)))

    def measure(self) -> None:
        if self.failed is not None or self.limited_warmup or self.server is None:
            return
        window = _CpuWindow(self.server)
        try:
            result = self._load(self.ctx.sizes.duration, window.start)
        except _GUARDED as exc:
            self.failed = f"failed: {exc}"
            return
        self.runs.append((result, window.figures(result)))

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
        middle, cpu = runs[_median_index(rates)]
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
            **_latency_figures(
                {
                    "latency_us": histogram,
                    "latency_max_us": max(result["latency_max_us"] for result, _ in runs),
                }
            ),
            "served_connections": served,
            "errors": sum(result["errors"] + result["connect_failures"] for result, _ in runs),
            **cpu,
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


# ---- 3. streaming into the print path ---------------------------------------------------------


def stream(fmt: str, line: int) -> Callable[[Context, Model], Result]:
    def scenario(ctx: Context, model: Model) -> Result:
        """One client writes lines of ``line`` bytes (64 KiB at a time) as fast as the server
        takes them; the server prints them (``--raw`` or text) to /dev/null.  The clock stops
        when the server has read everything (it closes after the client's half-close), so
        kernel buffers do not inflate the rate."""

        def run() -> Result:
            flags = ["--raw"] if fmt == "raw" else ["--format", fmt]
            result, cpu, server = _drive(
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

        return _guard(run)

    return scenario


# ---- 4. memory per idle connection ------------------------------------------------------------


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

    return _guard(run)


# ---- 5. connection storm ----------------------------------------------------------------------


def storm(ctx: Context, model: Model) -> Result:
    """``storm_clients`` clients connect at once, each sends one line, waits for its echo and
    leaves; the time from the first connect to the last echo."""
    count = ctx.sizes.storm_clients

    def run() -> Result:
        timeout = ctx.sizes.serve_timeout * 6
        result, cpu, _ = _drive(
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
            **_latency_figures(result),
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

    return _guard(run)


# ---- 5b. connection storm while other clients are busy -------------------------------------


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
                    window = _CpuWindow(server)
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
        result, cpu = storms[_median_index(times)]
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
            **_latency_figures(
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

    return _guard(run)


# ---- 6. graceful shutdown ---------------------------------------------------------------------

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

    return _guard(run)


# ---- 7. many connections: memory, then graceful shutdown ------------------------------------


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

    return _guard(run)


def _size_label(size: int) -> str:
    """64 -> "64", 4096 -> "4k", 65536 -> "64k"."""
    return f"{size // 1024}k" if size >= 1024 and size % 1024 == 0 else str(size)


# ---- the list ---------------------------------------------------------------------------------


def scenarios_for(sizes: Sizes) -> list[Scenario]:
    """Every scenario, in the order they run and appear in the report."""
    found: list[Scenario] = [
        Scenario("article", "article: 4 paced clients", ("--format",), article),
    ]
    for connections in sizes.echo_connections:
        for size in sizes.echo_sizes:
            found.append(
                Scenario(
                    f"echo_{connections}x{size}",
                    f"echo {connections} conn × {size} B",
                    ("--echo", "--quiet"),
                    echo(connections, size),
                    echo_session(connections, size),
                )
            )
    found.append(
        Scenario(
            "stream_raw",
            f"stream --raw, {_size_label(sizes.stream_block)}B writes",
            ("--raw",),
            stream("raw", sizes.stream_block),
        )
    )
    for line in sizes.text_lines:
        found.append(
            Scenario(
                f"stream_text_{_size_label(line)}",
                f"stream text, {_size_label(line)}B lines",
                ("--format",),
                stream("text", line),
            )
        )
    found += [
        Scenario(
            "idle_memory",
            f"memory / idle conn ({sizes.idle_connections})",
            ("--echo", "--quiet"),
            idle_memory,
        ),
        Scenario("storm", f"storm of {sizes.storm_clients}", ("--echo", "--quiet"), storm),
        Scenario(
            "storm_busy",
            f"storm of {sizes.busy_storm_clients}, {sizes.busy_clients} busy",
            ("--echo", "--quiet"),
            storm_busy,
        ),
        Scenario(
            "shutdown",
            f"SIGTERM → exit, {sizes.shutdown_clients} clients",
            ("--echo", "--quiet"),
            shutdown,
        ),
        Scenario(
            "c10k",
            f"{sizes.many_connections} conns, --grace {sizes.many_grace:g}",
            ("--echo", "--quiet"),
            many,
        ),
    ]
    return found
