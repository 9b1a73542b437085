"""What every model counts and logs about its connections, in the same words.

The lab compares models side by side, so they must report alike: the per-connection lines on
stderr and the summary at exit come from here, whatever the concurrency model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import attrs

from trio_echo.logs import LOGGER

__all__ = ["ServerStats", "log_close", "log_open"]


@attrs.define
class ServerStats:
    """Counters for the summary printed at exit (and for tests)."""

    started: float = attrs.field(factory=time.monotonic)
    connections: int = 0
    active: int = 0
    bytes_received: int = 0
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
