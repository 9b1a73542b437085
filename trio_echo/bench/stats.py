"""Percentiles from the load generator's latency histogram.

``loadgen.c`` does not print every latency (a million requests would be a million numbers); it
prints a sparse histogram ``[[value_us, count], ...]`` with at most 0.2 % rounding, and this
module turns it into the figures of the report.  Pure functions, so they are unit-tested, and
histograms of several load-generator processes could simply be added up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["PERCENTILES", "latency_ms", "merge_histograms", "percentile"]

# The percentiles the report gives, by the suffix of their figure (``p99_9_ms`` is p99.9): the
# median, the tail a user meets once in ten, a hundred and a thousand requests.  p99.9 is what
# a server's rare stalls show up in, once the open loop measures without coordinated omission.
PERCENTILES: dict[str, float] = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99_9": 0.999}


def percentile(histogram: Iterable[Sequence[int]], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` in [0, 1]) of a ``[[value, count], ...]``
    histogram: the smallest value such that at least ``fraction`` of the samples are at or below
    it.  ``None`` for an empty histogram.

    Nearest-rank, not interpolation: the result is always a latency some request really had
    (to the histogram's precision), and p100 is the maximum.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
    buckets = sorted((int(value), int(count)) for value, count in histogram if count > 0)
    total = sum(count for _, count in buckets)
    if total == 0:
        return None
    # round(): 0.07 * 100 is 7.000000000000001 in floats, and its rank is 7, not 8.
    rank = max(1, math.ceil(round(fraction * total, 9)))
    seen = 0
    for value, count in buckets:
        seen += count
        if seen >= rank:
            return float(value)
    return float(buckets[-1][0])  # pragma: no cover - rank <= total


def merge_histograms(*histograms: Iterable[Sequence[int]]) -> list[list[int]]:
    """The sum of several histograms, sorted by value."""
    merged: dict[int, int] = {}
    for histogram in histograms:
        for value, count in histogram:
            merged[int(value)] = merged.get(int(value), 0) + int(count)
    return [[value, merged[value]] for value in sorted(merged)]


def latency_ms(histogram: Iterable[Sequence[int]], max_us: float) -> dict[str, float | None]:
    """The latency figures of a histogram of microseconds, in milliseconds: ``p50_ms``,
    ``p90_ms``, ``p99_ms``, ``p99_9_ms`` (:data:`PERCENTILES`) and ``max_ms`` (the exact
    maximum the load generator kept beside its histogram).  ``None`` for a percentile of an
    empty histogram."""
    buckets = [(int(value), int(count)) for value, count in histogram]
    figures: dict[str, float | None] = {}
    for name, fraction in PERCENTILES.items():
        value = percentile(buckets, fraction)
        figures[f"{name}_ms"] = None if value is None else value / 1000.0
    figures["max_ms"] = max_us / 1000.0
    return figures
