"""A snapshot of a server's counters: a plain dict of numbers, taken at once, JSON-able.

One shape for every consumer: a scrape renders it (:mod:`trio_echo.metrics.exposition`), the
status dump and the interval line print from it (:mod:`trio_echo.metrics.status`), and a
``--workers`` worker sends it over its control socket for the supervisor to add up
(:func:`merge`).  Taking one reads counters and nothing else: no lock, no copy of anything
that grows with the number of clients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trio_echo.output.queue import OutputQueue
from trio_echo.stats import ServerStats

__all__ = ["CLOSE_REASONS", "REFUSE_REASONS", "Snapshot", "merge", "take"]

Snapshot = dict[str, Any]

# Every reason is exported from the start, at 0, so that rate() has a series to work on before
# the first event of its kind (stats.close_kind names them).
REFUSE_REASONS = ("deny", "tls", "proxy", "max_bytes")
CLOSE_REASONS = ("client", "idle", "max_bytes", "lost", "grace_over", "forced", "error", "other")


def take(stats: ServerStats, queue: OutputQueue | None) -> Snapshot:
    """The counters of one server (``queue``: its output queue; ``None`` when it prints
    nothing)."""
    refused = {reason: stats.refused_by.get(reason, 0) for reason in REFUSE_REASONS}
    refused["deny"] = stats.denied
    return {
        "start_time": stats.started_wall,
        "uptime": stats.uptime(),
        "udp": stats.udp,
        "accepted": stats.connections,
        "active": stats.active,
        "refused": refused,
        "closed": {reason: stats.closed_by.get(reason, 0) for reason in CLOSE_REASONS},
        "received_bytes": stats.bytes_received,
        "echoed_bytes": stats.bytes_echoed,
        "printed_bytes": queue.written if queue is not None else 0,
        "printed_lines": stats.printed.lines,
        "queue_bytes": queue.used if queue is not None else 0,
        "queue_limit_bytes": queue.limit if queue is not None else 0,
        "blocked_handlers": queue.waiting if queue is not None else 0,
        "blocked_seconds": queue.blocked_seconds if queue is not None else 0.0,
        "accept_pauses": stats.accept_pauses,
        "datagrams": stats.datagrams,
        "datagrams_refused": stats.refused,
        "datagrams_dropped": stats.kernel_drops,
        "handshake_seconds": stats.handshakes.to_json(),
        "duration_seconds": stats.durations.to_json(),
    }


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Several servers' snapshots as one (a ``--workers`` supervisor's view): counts, gauges
    and histogram buckets add up; the start time is the earliest, the uptime the longest;
    a count that only some know (the kernel's datagram drops) is the sum of those that do."""
    total: Snapshot = {}
    for snapshot in snapshots:
        _add(total, snapshot)
    return total


def _add(total: Snapshot, other: Snapshot) -> None:
    for key, value in other.items():
        mine = total.get(key)
        if key == "start_time":
            total[key] = value if mine is None else min(mine, value)
        elif key == "uptime":
            total[key] = value if mine is None else max(mine, value)
        elif isinstance(value, bool):
            total[key] = bool(mine) or value
        elif isinstance(value, dict):
            if "counts" in value:  # a histogram: the same bounds everywhere
                if mine is None:
                    total[key] = {**value, "counts": list(value["counts"])}
                else:
                    mine["counts"] = [
                        a + b for a, b in zip(mine["counts"], value["counts"], strict=True)
                    ]
                    mine["sum"] += value["sum"]
            else:
                _add(total.setdefault(key, {}), value)
        elif value is None:
            total.setdefault(key, None)
        else:
            total[key] = value if mine is None else mine + value
