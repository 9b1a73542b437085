"""``--timestamps``: the receive time at the start of every text and hex output line.

What time a line carries: the time of the read that *completed* it -- the receive that brought
its newline (or, for a piece cut at ``--max-line``, the bytes that took it over the limit; for a
last line without a newline, the end of the connection).  That is what the ``time`` of a jsonl
record already is (it is taken when the read is formatted, right after the receive), so the
three formats agree on what a time means.  It is never the time the line was *printed*: with a
slow stdout a line may wait in the output queue for seconds, and its stamp must not move.

Two forms (:class:`Timestamps`):

* ``utc``: ISO 8601 in UTC with microseconds, ``2026-12-02T01:02:03.456789Z``, from the system
  clock (``time.time_ns``), so that it lines up with other logs and with a packet capture.  The
  system clock can be stepped (NTP, a VM resumed): then so can these stamps.
* ``relative``: seconds since the server started, ``+12.345678``, from the monotonic clock: it
  never goes back, whatever the system clock does.  The origin is taken once, when the
  configuration is made (:attr:`trio_echo.config.Config.clock_origin`), and handed to
  ``--workers`` workers with the rest of it, so that every worker counts from the same start.

Formatting a stamp costs a couple of microseconds, so it is done once per read, and only when a
line is actually printed from it (:meth:`ReceiveClock.stamp` caches it).  Without
``--timestamps`` none of this runs: the plain formatters stay as they are.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from trio_echo.output.clean import SAFE_SCAN
from trio_echo.output.format import LineAssembler, Tally, TextFormatter

__all__ = ["ReceiveClock", "StampedLineAssembler", "StampedTextFormatter", "Timestamps"]

_NS = 1_000_000_000


class Timestamps(enum.Enum):
    """The form of ``--timestamps``."""

    UTC = "utc"
    RELATIVE = "relative"


class ReceiveClock:
    """One connection's receive time: :meth:`mark` it at every read, :meth:`stamp` a line.

    ``wall_ns`` and ``monotonic_ns`` are the clocks (injectable, so that the tests control
    time); ``origin_ns`` is the monotonic start that ``relative`` counts from.
    """

    def __init__(
        self,
        form: Timestamps,
        origin_ns: int,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.form = form
        self._origin = origin_ns
        self._now = wall_ns if form is Timestamps.UTC else monotonic_ns
        self._at = self._now()
        self._text: bytes | None = None

    def mark(self) -> None:
        """Bytes have just been received: they (and the lines they complete) carry this time."""
        self._at = self._now()
        self._text = None

    def stamp(self) -> bytes:
        """The time of the last :meth:`mark`, formatted, with the space that follows it."""
        if self._text is None:
            self._text = self._format(self._at).encode("ascii")
        return self._text

    def _format(self, at: int) -> str:
        if self.form is Timestamps.UTC:
            seconds, ns = divmod(at, _NS)
            day_time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            return f"{day_time}.{ns // 1000:06d}Z "
        seconds, ns = divmod(max(at - self._origin, 0), _NS)
        return f"+{seconds}.{ns // 1000:06d} "


class StampedTextFormatter(TextFormatter):
    """Text lines with the receive time first: ``2026-12-02T01:02:03.456789Z [peer] line``.

    The plain :class:`TextFormatter` bakes its prefix in once per connection, which is what
    makes it fast; here the prefix changes with every read, so it is rebuilt when the clock
    has moved (once per read at most) and the plain formatter does the rest."""

    def __init__(
        self,
        peer: str,
        clock: ReceiveClock,
        tally: Tally | None = None,
        scan: Callable[[bytes], bool] | None = SAFE_SCAN,
    ) -> None:
        super().__init__(peer, tally, scan)
        self._clock = clock
        self._peer_prefix = self._prefix
        self._peer_continued = self._continued_prefix
        self._stamped: bytes | None = None

    def _restamp(self) -> None:
        stamp = self._clock.stamp()
        if stamp is not self._stamped:
            self._stamped = stamp
            self._prefix = stamp + self._peer_prefix
            self._continued_prefix = stamp + self._peer_continued
            self._newline_prefix = b"\n" + self._prefix

    def block(self, block: bytes) -> bytes:
        self._restamp()
        return super().block(block)

    def piece(self, content: bytes, eol: bytes, continued: bool) -> bytes:
        self._restamp()
        return super().piece(content, eol, continued)


class StampedLineAssembler(LineAssembler):
    """A :class:`LineAssembler` that marks the connection's receive clock at every read (and at
    the end of the connection, which completes a last line without a newline)."""

    def __init__(self, formatter: TextFormatter, clock: ReceiveClock, max_line: int) -> None:
        super().__init__(formatter, max_line)
        self.clock = clock

    def feed(self, data: bytes) -> bytes:
        self.clock.mark()
        return super().feed(data)

    def finish(self) -> bytes:
        self.clock.mark()
        return super().finish()
