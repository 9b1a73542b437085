"""What every model counts and logs about its connections, in the same words.

The lab compares models side by side, so they must report alike: the per-connection lines on
stderr and the summary at exit come from here, whatever the concurrency model.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping, Sequence

import attrs

from trio_echo.logs import LOGGER
from trio_echo.output.format import Tally

__all__ = [
    "DURATION_BUCKETS",
    "HANDSHAKE_BUCKETS",
    "Histogram",
    "ServerStats",
    "close_kind",
    "log_close",
    "log_open",
]

# Upper bounds (seconds) of the connection duration histogram: from a health check's
# millisecond to an hour-long session.
DURATION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0)

# Upper bounds (seconds) of the TLS handshake histogram: loopback takes about a millisecond;
# the last bucket is the default --tls-handshake-timeout.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)


class Histogram:
    """Observations counted into fixed buckets (Prometheus's cumulative ``le`` buckets are
    made from these at exposition): one ``bisect`` and two additions per observation, made
    once per connection, never per request."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # counts[i]: observations in (bounds[i-1], bounds[i]]; the last, above every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_json(self) -> dict[str, object]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


def close_kind(reason: str) -> str:
    """The metrics' label for a ``close`` line's reason (which may carry details)."""
    for prefix, kind in _CLOSE_KINDS:
        if reason.startswith(prefix):
            return kind
    return "other"


_CLOSE_KINDS = (
    ("closed by client", "client"),
    ("idle for", "idle"),
    ("not reading its echo", "idle"),
    ("sent more than --max-bytes", "max_bytes"),
    ("connection lost", "lost"),
    ("grace period over", "grace_over"),
    ("server aborted", "forced"),
    ("server stopped", "forced"),
    ("error", "error"),
)


@attrs.define
class ServerStats:
    """Counters for the summary printed at exit, the metrics and the status dump.

    Plain integers, bumped where things happen: what a client costs on the hot path is an
    addition, and only a scrape or a dump reads them (trio_echo.metrics)."""

    started: float = attrs.field(factory=time.monotonic)
    # The wall clock at start, for process_start_time_seconds.
    started_wall: float = attrs.field(factory=time.time)
    connections: int = 0
    active: int = 0
    bytes_received: int = 0
    # --echo: the bytes sent back.
    bytes_echoed: int = 0
    # TCP/Unix clients closed at accept by --allow/--deny.
    denied: int = 0
    # Clients turned away after accept, by why: "tls", "proxy", "max_bytes".
    refused_by: dict[str, int] = attrs.field(factory=dict)
    # Connections closed, by close_kind of their reason.
    closed_by: dict[str, int] = attrs.field(factory=dict)
    # Accepts paused for lack of file descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    accept_pauses: int = 0
    # The lines formatted for output (every connection's formatter counts into it).
    printed: Tally = attrs.field(factory=Tally)
    durations: Histogram = attrs.field(factory=lambda: Histogram(DURATION_BUCKETS))
    handshakes: Histogram = attrs.field(factory=lambda: Histogram(HANDSHAKE_BUCKETS))
    # --udp (trio_echo.server.datagram): the summary counts datagrams, not connections.
    udp: bool = False
    datagrams: int = 0
    # Datagrams dropped for --allow/--deny.
    refused: int = 0
    # Datagrams the kernel dropped before we read them (its receive buffer was full), where it
    # says (trio_echo.net.datagram); None where it does not.
    kernel_drops: int | None = None

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def count(self, counts: dict[str, int], kind: str) -> None:
        """One more in ``counts`` (``refused_by``, ``closed_by``) under ``kind``."""
        counts[kind] = counts.get(kind, 0) + 1

    def summary(self) -> str:
        if self.udp:
            return self._datagram_summary()
        return (
            f"served {self.connections} connection{'s' if self.connections != 1 else ''}, "
            f"{self.bytes_received} bytes received, up {self.uptime():.1f} s"
        )

    def add_datagrams(self, counts: Mapping[str, object], *, shared: bool) -> None:
        """Add a ``--udp`` worker's counts (its last report).  The kernel's drops are counted
        per socket: summed over workers with sockets of their own, but the same count for
        every worker of ``shared`` ones."""
        self.datagrams += int(str(counts.get("datagrams", 0)))
        self.refused += int(str(counts.get("refused", 0)))
        if (drops := counts.get("kernel_drops")) is not None:
            known = self.kernel_drops or 0
            self.kernel_drops = max(known, int(str(drops))) if shared else known + int(str(drops))

    def _datagram_summary(self) -> str:
        parts = [
            f"received {self.datagrams} datagram{'s' if self.datagrams != 1 else ''}",
            f"{self.bytes_received} bytes",
        ]
        if self.refused:
            parts.append(f"{self.refused} refused (--allow/--deny)")
        if self.kernel_drops is not None:
            parts.append(f"{self.kernel_drops} dropped by the kernel (receive buffer full)")
        return f"{', '.join(parts)}, up {self.uptime():.1f} s"


def log_open(conn_id: int, peer: str) -> None:
    """``open #3 127.0.0.1:53422``"""
    LOGGER.info("open #%d %s", conn_id, peer)


def log_close(conn_id: int, peer: str, received: int, duration: float, reason: str) -> None:
    """``close #3 127.0.0.1:53422: 28 bytes in 0.301 s (closed by client)``"""
    LOGGER.info("close #%d %s: %d bytes in %.3f s (%s)", conn_id, peer, received, duration, reason)
