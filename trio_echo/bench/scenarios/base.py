"""What a scenario is, what it is given and what it gives back: the types every scenario module
and the bench's run share.

:class:`Sizes` (how big each scenario is, ``--quick`` or not), :class:`Context` (what every
scenario needs besides the model: the load generator, the sizes, the CPUs), :class:`Result` (the
figures, or why the scenario was skipped) and :class:`Scenario` (a named measurement, with its
:class:`Session` where it can be taken in steps).  They are here, apart from the scenarios, so
that every scenario module can use them without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from trio_echo.bench.scrape import ScrapedServer
from trio_echo.bench.server import VARIANTS, ServerProcess
from trio_echo.models import Model

__all__ = ["Context", "Figures", "Result", "Scenario", "Session", "Sizes"]

Figures = dict[str, Any]


@attrs.frozen
class Sizes:
    """How big each scenario is: ``--quick`` is tiny (the whole run well under a minute), the
    default is what docs/benchmarks.md reports."""

    # Seconds of traffic per echo and streaming measurement: with 3 repeats, the full run of
    # fifteen models stays under twenty minutes (docs/benchmarks.json has each scenario's time).
    duration: float = 1.5
    # Measured runs per echo and streaming scenario (on one server, after its warm-up) and
    # storms per storm under load; the report gives their median and their spread.
    repeats: int = 3
    # Echo and streaming: seconds of discarded load (after echo's probe connection) before the
    # measured runs.
    warmup: float = 0.3
    # Echo: every size at every concurrency here, then the points of ``echo_more``.
    echo_connections: tuple[int, ...] = (1, 100)
    echo_sizes: tuple[int, ...] = (64,)
    # More echo points, (connections, bytes): 1 KiB at 100 and 1,000 connections, and
    # vmbench's 10 and 100 KiB at 100.  Not the whole grid: every size at every concurrency
    # would take the full run of fifteen models past twenty minutes.
    echo_more: tuple[tuple[int, int], ...] = (
        (100, 1024),
        (1000, 1024),
        (100, 10240),
        (100, 102400),
    )
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
    serve_timeout: float = 3.0
    # How long the idle-connection and shutdown scenarios wait for all their clients to be
    # connected and served once (thousands of connects can overflow the listen backlog, and the
    # kernel retries a dropped SYN after a second; the slowest model, threads, had all of 10,000
    # connected in 3.3 s when this was set).
    hold_timeout: float = 8.0
    # Whether these are the --quick sizes: the scenarios that keep sizes of their own (latency,
    # costs) then take their quick ones.
    tiny: bool = False
    # What a shutdown keeps (the correctness scenarios): clients streaming numbered lines of 64 B
    # at this rate each, for ``correctness_lead`` seconds before the SIGTERM, with this --grace.
    correctness_clients: int = 20
    correctness_rate: float = 100.0  # lines a second per client
    correctness_lead: float = 1.5
    correctness_grace: float = 1.0
    # The stalled-stdout variant: seconds after the SIGTERM until the reader comes back; beyond
    # the grace period and the drain timeout after it (max(grace, 1) s), so that a server which
    # waits for its reader shows it.
    correctness_stall: float = 2.5

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
            correctness_clients=8,
            # Enough lines from one client to fill the stalled pipe before the signal (the
            # sync model serves one client).
            correctness_rate=200.0,
            correctness_lead=0.3,
            correctness_grace=0.3,
            correctness_stall=1.5,
            echo_more=(),
            tiny=True,
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
    # The load generators' CPUs: one load generator each in the echo scenarios (bench.fleet);
    # None or one CPU: a single load generator.
    loadgen_cpus: tuple[int, ...] | None = None

    def cpus_for(self, model: Model) -> tuple[int, ...] | None:
        """The CPUs a server of ``model`` is pinned to.  A server of several processes where the
        servers have one CPU (a 2-core machine) gets every CPU: pinned to that one its workers
        could only take turns, and the run would measure nothing but the supervisor's overhead.
        So it shares a core with the load generator, as the kernel sees fit: on a small machine
        that is what a second worker gets in real life too (the report says so).  Where the
        servers have several CPUs, it gets those (``--workers auto`` counts them)."""
        variant = VARIANTS.get(model.name)
        several = variant is not None and variant.workers != 1
        if several and (self.server_cpus is None or len(self.server_cpus) < 2):
            return self.all_cpus
        return self.server_cpus

    def server(self, model: Model, flags: list[str], **kwargs: Any) -> ServerProcess:
        """A fresh server of ``model`` with ``flags``, on its CPUs (:meth:`cpus_for`); a
        variant the bench watches (``trio-metrics``) scraped during its measured runs."""
        variant = VARIANTS.get(model.name)
        kind = ScrapedServer if variant is not None and variant.scraped else ServerProcess
        return kind(model.name, flags, cpus=self.cpus_for(model), **kwargs)


class Session(Protocol):
    """A scenario's measurement in steps (the echo scenarios' :class:`.echo.EchoSession`):
    :meth:`start` the server, :meth:`measure` once per measured run, :meth:`finish` with the
    :class:`Result`; a context manager that stops the server on the way out, whatever
    happened."""

    model: Model

    def start(self) -> None: ...

    def measure(self) -> None: ...

    def finish(self) -> Result: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...


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
    session: Callable[[Context, Model], Session] | None = None
