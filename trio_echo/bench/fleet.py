"""Several load generators driving one server as one: for machines where one is not enough.

``loadgen.c`` is one single-threaded process: at about 6 µs of CPU per echo request it tops out
near 165k requests/s, which one trio worker nearly reaches (docs/performance.md, "--workers auto
on 16 cores").  On a machine with many cores the bench gives the load generators several CPUs
(:func:`loadgen_share`); :func:`run` then starts one load generator per CPU (they inherit the
bench's affinity, those CPUs, and the kernel gives each busy one a CPU of its own), splits the
connections between them, and sums what they report into one result of the
same shape, so that every scenario reads it as it reads a single load generator's.  On a
2-core machine there is one CPU for them, and :func:`run` is :func:`.loadgen.run`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trio_echo.bench import loadgen
from trio_echo.bench.stats import merge_histograms

__all__ = ["loadgen_share", "merge", "run"]

# Of a machine's CPUs, the share the load generators get: about 6 µs of theirs per echo request
# against 8-15 µs of a trio worker's, so a bit over a third keeps the servers' CPUs the ones
# that run out.  At least one; on 2 or 3 CPUs exactly one, as before.
LOADGEN_SHARE = 3 / 8

# Counts that add up across load generators; the rest is taken from the slowest (``elapsed``,
# ``wall``, ``latency_max_us``) or merged (``latency_us``, ``timed_out``).
_SUMMED = (
    "connections",
    "connected",
    "served_connections",
    "requests",
    "bytes",
    "cpu",
    "errors",
    "connect_failures",
    "eofs",
    "resets",
    "still_open",
    "warmed",
)


def loadgen_share(cpus: int) -> int:
    """How many of ``cpus`` CPUs the load generators get (the last ones, :func:`.cli.pin_cpus`)."""
    return max(1, int(cpus * LOADGEN_SHARE))


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from those of several load generators run side by side: counts summed,
    times the longest, latency histograms added.  ``cpu`` is their CPU time summed, and
    ``busiest_cpu`` the largest share of one core any of them used, which is what tells whether
    they were the bottleneck (each is one thread)."""
    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    for key in _SUMMED:
        if key in merged:
            merged[key] = sum(result[key] for result in results)
    for key in ("elapsed", "wall", "latency_max_us"):
        merged[key] = max(result[key] for result in results)
    merged["latency_us"] = merge_histograms(*(result["latency_us"] for result in results))
    merged["timed_out"] = any(result["timed_out"] for result in results)
    merged["busiest_cpu"] = max(
        result["cpu"] / result["wall"] if result["wall"] else 0.0 for result in results
    )
    merged["processes"] = len(results)
    return merged


def run(
    binary: Path,
    mode: str,
    port: int,
    *,
    cpus: Sequence[int] | None,
    timeout: float,
    on_start: Callable[[], None] | None = None,
    c: int,
    **options: object,
) -> dict[str, Any]:
    """:func:`.loadgen.run` with ``c`` connections split over one load generator per CPU of
    ``cpus`` (no more load generators than connections); ``on_start`` is called once, when the
    last of them starts measuring.  One CPU, or None: a single load generator, unpinned."""
    count = min(len(cpus), c) if cpus else 1
    if count <= 1:
        return loadgen.run(binary, mode, port, timeout=timeout, on_start=on_start, c=c, **options)
    assert cpus is not None
    shares = [c // count + (1 if i < c % count else 0) for i in range(count)]
    results: list[dict[str, Any] | None] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()
    waiting = [count]

    def started() -> None:
        with lock:
            waiting[0] -= 1
            last = waiting[0] == 0
        if last and on_start is not None:
            on_start()

    def one(index: int) -> None:
        try:
            results[index] = loadgen.run(
                binary,
                mode,
                port,
                timeout=timeout,
                on_start=started,
                c=shares[index],
                **options,
            )
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return merge([result for result in results if result is not None])
