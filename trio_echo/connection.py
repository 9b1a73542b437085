"""One client's life, from ``open`` to ``close``, the same in every model.

Counting (``ServerStats``), the ``open``/``close`` lines on stderr, and turning its bytes into
output (the shared assembler and formatters, the bytes as they are with ``--raw``, nothing with
``--quiet``).  How the bytes get to stdout, and when, is the model's business.
"""

from __future__ import annotations

import time

import attrs

from trio_echo.config import Config
from trio_echo.logs import LOGGER
from trio_echo.output.clean import SAFE_SCAN
from trio_echo.output.format import (
    JsonlFormatter,
    LineAssembler,
    OutputFormat,
    TextFormatter,
    format_peer,
)
from trio_echo.output.hexdump import HexDumper
from trio_echo.output.stamps import ReceiveClock, StampedLineAssembler, StampedTextFormatter
from trio_echo.stats import ServerStats, close_kind, log_close, log_open

__all__ = ["Connection"]

_monotonic = time.monotonic


@attrs.define(eq=False)
class Connection:
    """One client, from ``open`` to ``close``: what every model does with its bytes.

    ``feed``/``opened``/``finish`` return the bytes for stdout (nothing with ``--quiet``, the
    bytes as they are with ``--raw``, formatted whole lines otherwise); the model decides how
    they get there.  Not thread-safe: one connection belongs to one thread or task.
    """

    config: Config
    stats: ServerStats
    peer: str
    conn_id: int
    # False when the output goes nowhere (--quiet, or a server embedded without an output).
    printing: bool = True
    started: float = attrs.field(factory=time.monotonic)
    received: int = 0
    # When the last bytes came (time.monotonic), for the status dump's idle time.  A clock
    # read per receive: about 60 ns here against the ~15 us a request costs the trio model.
    last_received: float = attrs.field(factory=time.monotonic)
    # Since when the connection waits for room in the output queue (None: it does not), set
    # by the queue (trio_echo.output.queue): the status dump's "blocked on stdout".
    blocked_since: float | None = None
    reason: str = "closed by client"
    assembler: LineAssembler | HexDumper | None = None

    @classmethod
    def open(
        cls,
        config: Config,
        stats: ServerStats,
        address: object,
        *,
        printing: bool = True,
        announce: bool = True,
    ) -> Connection:
        """Count the client in (call it where clients are accepted: one thread, in order).

        ``announce=False`` leaves the ``open`` line to :meth:`announce`, for a client that must
        first be set up (a TLS handshake): it holds a slot from now on, but is logged as open
        only once it can be served.
        """
        stats.connections += 1
        stats.active += 1
        printing = printing and not config.quiet
        conn = cls(config, stats, format_peer(address), stats.connections, printing)
        conn._assemble()
        if announce:
            log_open(conn.conn_id, conn.peer)
        return conn

    @classmethod
    def datagram(
        cls, config: Config, stats: ServerStats, address: object, number: int, *, printing: bool
    ) -> Connection:
        """One UDP datagram (``--udp``, :mod:`trio_echo.server.datagram`) as a connection that
        lives for one ``feed`` and :meth:`flush`: formatted by the same path as a stream's
        bytes (every format alike), counted in bytes but neither as a connection nor logged."""
        conn = cls(config, stats, format_peer(address), number, printing and not config.quiet)
        conn._assemble()
        return conn

    def flush(self) -> bytes:
        """The output for the last line without a newline, as at the end of a connection (a
        datagram's last line is whole), without counting anything out."""
        return self.assembler.finish() if self.assembler else b""

    def _assemble(self) -> None:
        """The line assembler for this peer (none with ``--raw`` or nothing printed)."""
        config = self.config
        tally = self.stats.printed
        scan = SAFE_SCAN if config.accelerate else None  # text mode's C safety test
        hex_dump = config.output_format is OutputFormat.HEX
        if self.printing and (hex_dump or config.timestamps is not None):
            # --format hex, and --timestamps on text or hex (raw and jsonl have no use for it).
            clock = None
            if config.timestamps is not None:
                clock = ReceiveClock(config.timestamps, config.clock_origin)
            if hex_dump:
                self.assembler = HexDumper(self.peer, clock, tally)
                return
            if clock is not None and config.output_format is OutputFormat.TEXT:
                stamped = StampedTextFormatter(self.peer, clock, tally, scan)
                self.assembler = StampedLineAssembler(stamped, clock, config.max_line)
                return
        if config.output_format is not OutputFormat.RAW and self.printing:
            formatter = (
                JsonlFormatter(self.conn_id, self.peer, worker=config.worker_id, tally=tally)
                if config.output_format is OutputFormat.JSONL
                else TextFormatter(self.peer, tally, scan)
            )
            self.assembler = LineAssembler(formatter, config.max_line)

    def rename(self, address: object) -> None:
        """Name the client by ``address`` from now on: the source a PROXY protocol header
        gave, in place of the balancer's.  Only before anything was printed or logged as
        open (the assembler, which holds the name, is built again)."""
        assert self.received == 0
        self.peer = format_peer(address)
        self._assemble()

    def announce(self, detail: str) -> None:
        """The ``open`` line of a client that has been set up: ``open #3 127.0.0.1:53422
        (TLSv1.3)``."""
        LOGGER.info("open #%d %s (%s)", self.conn_id, self.peer, detail)

    def abandon(self, kind: str, what: str, detail: str) -> None:
        """Count out a client that never got to be served (its TLS handshake failed or timed
        out): one line, ``refused #3 127.0.0.1:53422: TLS handshake failed after 0.002 s
        (...)``, and nothing on stdout; ``kind`` is the metrics' reason (``tls``, ``proxy``)."""
        duration = time.monotonic() - self.started
        self.stats.active -= 1
        self.stats.count(self.stats.refused_by, kind)
        LOGGER.info(
            "refused #%d %s: %s after %.3f s (%s)", self.conn_id, self.peer, what, duration, detail
        )

    def opened(self) -> bytes:
        return self.assembler.formatter.opened() if self.assembler else b""

    def feed(self, data: bytes) -> bytes:
        self.last_received = _monotonic()
        self.received += len(data)
        self.stats.bytes_received += len(data)
        if not self.printing:
            return b""
        return self.assembler.feed(data) if self.assembler else data

    def spliced(self, size: int) -> None:
        """Count ``size`` bytes that went from the client's socket straight to stdout
        (:mod:`trio_echo.output.splice`, ``--raw``): received like :meth:`feed`'s, never
        seen by Python."""
        self.last_received = _monotonic()
        self.received += size
        self.stats.bytes_received += size

    def finish(self) -> bytes:
        """Count the client out and log it; return the last output (partial line, close event)."""
        duration = time.monotonic() - self.started
        stats = self.stats
        stats.active -= 1
        kind = close_kind(self.reason)
        stats.count(stats.closed_by, kind)
        if kind == "max_bytes":  # served, then turned away: a refusal too, for the metrics
            stats.count(stats.refused_by, kind)
        stats.durations.observe(duration)
        log_close(self.conn_id, self.peer, self.received, duration, self.reason)
        if self.assembler is None:
            return b""
        closed = self.assembler.formatter.closed(self.received, duration, self.reason)
        return self.assembler.finish() + closed
