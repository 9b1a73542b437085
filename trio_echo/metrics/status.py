"""The server's state on stderr: the status dump (SIGUSR1) and the ``--stats-interval`` line.

The dump is xinetd's idea (its state dump on SIGUSR1): the totals, then one line per live
connection -- how old it is, what it sent, how long since it last sent anything, and whether
it is waiting for stdout -- so a user can tell, without stopping anything, which client is
idle, which is busy and whether stdout is the bottleneck.  The interval line is for someone
watching a terminal: rates since the previous line.  Both read a
:mod:`~trio_echo.metrics.snapshot`; the dump also reads the live connections.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable

import trio

from trio_echo.connection import Connection
from trio_echo.logs import LOGGER, NOTICE
from trio_echo.metrics.snapshot import Snapshot

__all__ = ["STATUS_SIGNAL", "connection_line", "interval_line", "log_status", "totals_line"]

# xinetd's: the signal that asks for the dump.
STATUS_SIGNAL = signal.SIGUSR1


def _size(count: float) -> str:
    """``812 B``, ``1.2 MB``, ``3.4 GB``: decimal units, as rates are usually given."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def totals_line(snapshot: Snapshot) -> str:
    """``up 12.3 s; 3 connected, 10 accepted, 1 refused; 1.2 kB received, ...``"""
    s = snapshot
    if s.get("udp"):
        who = f"{s['datagrams']} datagrams, {s['datagrams_refused']} refused"
        if s.get("datagrams_dropped") is not None:
            who += f", {s['datagrams_dropped']} dropped by the kernel"
    else:
        refused = sum(s["refused"].values()) - s["refused"].get("max_bytes", 0)
        who = f"{s['active']} connected, {s['accepted']} accepted, {refused} refused"
    lines = f"{s['printed_lines']} line{'' if s['printed_lines'] == 1 else 's'}"
    return (
        f"up {s['uptime']:.1f} s; {who}; {_size(s['received_bytes'])} received, "
        f"{_size(s['echoed_bytes'])} echoed, {_size(s['printed_bytes'])} printed "
        f"({lines}); output queue {_size(s['queue_bytes'])} of "
        f"{_size(s['queue_limit_bytes'])}, {s['blocked_handlers']} waiting for stdout "
        f"({s['blocked_seconds']:.3f} s in all)"
    )


def connection_line(conn: Connection, now: float) -> str:
    """``#3 127.0.0.1:53422: open 10.2 s, 1.2 kB received, idle 3.1 s`` (and ``, blocked on
    stdout for 0.5 s`` when it waits for room in the output queue).  ``now``:
    ``time.monotonic()``; the blocked time is on Trio's clock, the queue's."""
    line = (
        f"#{conn.conn_id} {conn.peer}: open {now - conn.started:.1f} s, "
        f"{_size(conn.received)} received, idle {now - conn.last_received:.1f} s"
    )
    if conn.blocked_since is not None:
        line += f", blocked on stdout for {trio.current_time() - conn.blocked_since:.1f} s"
    return line


def log_status(snapshot: Snapshot, connections: Iterable[Connection] | None) -> None:
    """The dump: the totals, one line per live connection (oldest first), the count.
    ``None`` for a ``--workers`` supervisor, whose workers list their own connections."""
    LOGGER.log(NOTICE, "status: %s", totals_line(snapshot))
    if connections is None:
        LOGGER.log(NOTICE, "status: each worker lists its own connections next")
        return
    now = time.monotonic()
    live = sorted(connections, key=lambda conn: conn.conn_id)
    for conn in live:
        LOGGER.log(NOTICE, "status: %s", connection_line(conn, now))
    LOGGER.log(NOTICE, "status: end (%d connection%s)", len(live), "" if len(live) == 1 else "s")


def interval_line(previous: Snapshot, current: Snapshot) -> str:
    """``stats: 3 connected, +5 accepted (2.5/s), in 1.2 MB/s, out 0.9 MB/s, 800 lines/s,
    0 waiting for stdout (+0.000 s)``: what changed since ``previous``, per second."""
    elapsed = max(current["uptime"] - previous["uptime"], 1e-9)

    def delta(key: str) -> float:
        return float(current[key] - previous[key])

    if current.get("udp"):
        who = f"+{delta('datagrams'):.0f} datagrams ({delta('datagrams') / elapsed:.1f}/s)"
    else:
        who = (
            f"{current['active']} connected, +{delta('accepted'):.0f} accepted "
            f"({delta('accepted') / elapsed:.1f}/s)"
        )
    return (
        f"{who}, in {_size(delta('received_bytes') / elapsed)}/s, "
        f"out {_size(delta('printed_bytes') / elapsed)}/s, "
        f"{delta('printed_lines') / elapsed:.0f} lines/s, "
        f"{current['blocked_handlers']} waiting for stdout (+{delta('blocked_seconds'):.3f} s)"
    )
