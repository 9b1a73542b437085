"""The scenarios: what each one runs and which figures it reports, one module per kind.

Each scenario starts a fresh server for one model, drives it, stops it, and returns a
:class:`Result`: figures, or ``skipped`` with the reason (a model that cannot do it, a server that
served only some of the clients within the time bound, a failure).  Nothing here may hang: every
wait has a deadline, because the ``sync`` model serves one client at a time and the others wait
in the kernel's listen backlog forever.

The heavy traffic (echo request/response, streaming, the connection storm, the idle
connections) comes from the C load generator (:mod:`trio_echo.bench.loadgen`); the article's
experiment is four gentle clients, in Python.

This package is the list (:func:`scenarios_for`, in the order they run and appear in the
report); the rest is one module per job:

* :mod:`.base` -- :class:`Sizes`, :class:`Context`, :class:`Result`, :class:`Scenario`;
* :mod:`.common` -- what several scenarios share: the CPU window, latency figures, the median
  run, a driven server, failures as skipped results;
* :mod:`.article` -- the article's experiment: four paced clients;
* :mod:`.correctness` -- what a shutdown keeps: numbered lines, SIGTERM (once, twice, with a
  stalled stdout), the lines lost or torn (its table comes first in the report);
* :mod:`.echo` -- echo request/response (:class:`EchoSession`: its measured runs in turns);
* :mod:`.stream` -- streaming into the print path, ``--raw`` and text
  (:class:`.stream.StreamSession`: its measured runs in turns, like echo's);
* :mod:`.idle` -- memory per idle connection;
* :mod:`.storm` -- connection storms, on an idle server and on a busy one;
* :mod:`.shutdown` -- SIGTERM to exit with idle clients;
* :mod:`.many` -- many connections held at once (``c10k``): memory, then SIGTERM.
"""

from __future__ import annotations

from trio_echo.bench.scenarios import (
    article,
    correctness,
    costs,
    echo,
    idle,
    latency,
    many,
    shutdown,
    storm,
    stream,
)
from trio_echo.bench.scenarios.base import Context, Result, Scenario, Session, Sizes
from trio_echo.bench.scenarios.common import median_index
from trio_echo.bench.scenarios.echo import EchoSession

__all__ = ["Context", "EchoSession", "Result", "Scenario", "Session", "Sizes", "scenarios_for"]

# The name the tests know it by, from when the scenarios were one module.
_median_index = median_index


def _size_label(size: int) -> str:
    """64 -> "64", 4096 -> "4k", 65536 -> "64k"."""
    return f"{size // 1024}k" if size >= 1024 and size % 1024 == 0 else str(size)


def _bytes(size: int) -> str:
    """64 -> "64 B", 1024 -> "1 KiB", 102400 -> "100 KiB"."""
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def scenarios_for(sizes: Sizes) -> list[Scenario]:
    """Every scenario, in the order they run and appear in the report."""
    found: list[Scenario] = [
        Scenario("article", "article: 4 paced clients", ("--format",), article.article),
    ]
    # What a shutdown keeps: right after the article (which the tests expect first), and the
    # first table of the report (report.render_correctness).
    found += [
        Scenario(
            f"correctness_{variant.key}",
            variant.title,
            correctness.FLAGS,
            correctness.correctness(variant),
        )
        for variant in correctness.VARIANTS
    ]
    points = [(c, size) for c in sizes.echo_connections for size in sizes.echo_sizes]
    for connections, size in [*points, *sizes.echo_more]:
        found.append(
            Scenario(
                f"echo_{connections}x{size}",
                f"echo {connections} conn × {_bytes(size)}",
                ("--echo", "--quiet"),
                echo.echo(connections, size),
                echo.echo_session(connections, size),
            )
        )
    found.append(
        costs.costs_scenario(costs.CostSizes.quick() if sizes.tiny else costs.CostSizes.default())
    )
    found.append(
        latency.latency_scenario(
            latency.LatencySizes.quick() if sizes.tiny else latency.LatencySizes.default()
        )
    )
    found.append(
        Scenario(
            "stream_raw",
            f"stream --raw, {_size_label(sizes.stream_block)}B writes",
            ("--raw",),
            stream.stream("raw", sizes.stream_block),
            stream.stream_session("raw", sizes.stream_block),
        )
    )
    # Raw streaming where a consumer reads (and the trio model splices): issue 16's target.
    for into, what in (("pipe", "into a pipe"), ("file", "into a file")):
        found.append(
            Scenario(
                f"stream_into_{into}",
                f"stream --raw {what}, {_size_label(sizes.stream_block)}B writes",
                ("--raw",),
                stream.stream("raw", sizes.stream_block, into),
                stream.stream_session("raw", sizes.stream_block, into),
            )
        )
    for line in sizes.text_lines:
        found.append(
            Scenario(
                f"stream_text_{_size_label(line)}",
                f"stream text, {_size_label(line)}B lines",
                ("--format",),
                stream.stream("text", line),
                stream.stream_session("text", line),
            )
        )
    found += [
        Scenario(
            "idle_memory",
            f"memory / idle conn ({sizes.idle_connections})",
            ("--echo", "--quiet"),
            idle.idle_memory,
        ),
        Scenario("storm", f"storm of {sizes.storm_clients}", ("--echo", "--quiet"), storm.storm),
        Scenario(
            "storm_busy",
            f"storm of {sizes.busy_storm_clients}, {sizes.busy_clients} busy",
            ("--echo", "--quiet"),
            storm.storm_busy,
        ),
        Scenario(
            "shutdown",
            f"SIGTERM → exit, {sizes.shutdown_clients} clients",
            ("--echo", "--quiet"),
            shutdown.shutdown,
        ),
        Scenario(
            "c10k",
            f"{sizes.many_connections} conns, --grace {sizes.many_grace:g}",
            ("--echo", "--quiet"),
            many.many,
        ),
    ]
    return found
