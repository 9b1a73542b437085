"""Playing a capture against a server: one task per captured connection, on the capture's clock.

The shape::

    replay()                              t0 = now; every time is t0 + offset / speed
    └── nursery
        └── _Player.run per connection    sleeps until its start, connects, then:
            └── nursery
                ├── _drain                reads (and discards) what the server sends back
                └── (body)                each chunk at its time; at its end, EOF or hang up

Every connection starts at its captured offset, whether or not the ones before it are done, so
connections overlap as they did.  A connection's failure (refused, reset, the server closing
early) is its own: it is reported in one line and the others go on; :func:`replay` returns every
connection's result, and the caller turns them into an exit status.

What the server sends back is read as it comes and thrown away: an echo server's answers would
otherwise fill the socket buffers and stall both sides.  When the captured client ended its
connection, the replay half-closes (``send_eof``) and waits for the server to finish what it is
doing and close, as a client like ``nc -N`` does, so a print server has printed every byte by the
time its connection is counted as replayed; when the server had ended it (an idle timeout,
``--max-bytes``, a shutdown), the replay hangs up at that moment.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import attrs
import trio

from trio_echo.replay.capture import Capture, CapturedConnection

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["ConnectionResult", "ReplayResult", "Target", "replay"]

# After its EOF, how long the server may stay silent before the replay stops waiting for it to
# close: any server that answers an EOF by closing does so at once, even while echoing a backlog
# (bytes arriving reset the wait); one that keeps half-open connections costs each connection
# this much after its end, all at once, so the whole replay runs this much longer at most.
CLOSE_WAIT = 5.0

# ... and how long in all, however much it sends: a server that never stops talking (chargen)
# must not keep a replay alive forever.
MAX_CLOSE_WAIT = 60.0

# How much to read from the server at a time: its answers are only counted.
RECEIVE_SIZE = 64 * 1024


@attrs.frozen
class Target:
    """Where to replay: ``host`` is a name or an address (IPv6 without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class ConnectionResult:
    """How one captured connection was replayed: ``error`` is None when all went well."""

    connection: CapturedConnection
    sent: int
    received: int
    error: str | None


@attrs.frozen
class ReplayResult:
    results: tuple[ConnectionResult, ...]
    # Seconds from the start of the replay to its last connection's end.
    elapsed: float

    @property
    def failed(self) -> tuple[ConnectionResult, ...]:
        return tuple(result for result in self.results if result.error is not None)

    @property
    def sent(self) -> int:
        return sum(result.sent for result in self.results)

    @property
    def received(self) -> int:
        return sum(result.received for result in self.results)


async def replay(
    capture: Capture, target: Target, speed: float, report: Callable[[ConnectionResult], None]
) -> ReplayResult:
    """Replay every connection of ``capture`` against ``target``, ``speed`` times as fast as
    captured (``math.inf``: no waiting at all).  ``report`` is called with each connection's
    result as soon as it is known (so a failure is said when it happens)."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed!r}")
    start = trio.current_time()
    results: list[ConnectionResult] = []

    def at(offset: float) -> float:
        return start if math.isinf(speed) else start + offset / speed

    def done(result: ConnectionResult) -> None:
        results.append(result)
        report(result)

    async with trio.open_nursery() as nursery:
        for conn in capture.connections:
            nursery.start_soon(_Player(conn, target, at, done).run, name=f"replay {conn.label}")
    return ReplayResult(tuple(results), trio.current_time() - start)


@attrs.define
class _Player:
    """One captured connection, played: its counts and its first error."""

    conn: CapturedConnection
    target: Target
    at: Callable[[float], float]
    done: Callable[[ConnectionResult], None]
    sent: int = 0
    received: int = 0
    error: str | None = None
    # Set when the server's side ended (EOF, a reset): nothing more will come.
    finished: trio.Event = attrs.field(factory=trio.Event)

    async def run(self) -> None:
        try:
            await trio.sleep_until(self.at(self.conn.start))
            stream = await trio.open_tcp_stream(self.target.host, self.target.port)
        except OSError as exc:
            self._fail(f"cannot connect to {self.target}: {_why(exc)}")
        else:
            try:
                async with stream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._drain, stream, nursery.cancel_scope)
                    await self._play(stream)
                    nursery.cancel_scope.cancel()
            except Exception as exc:  # a bug: still this connection's only
                self._fail(f"unexpected {exc!r}")
        finally:
            # Even when cancelled (Ctrl-C): the counts so far are still this connection's.
            self.done(ConnectionResult(self.conn, self.sent, self.received, self.error))

    async def _play(self, stream: trio.SocketStream) -> None:
        """Send each chunk at its time, then end the connection as it ended."""
        try:
            for chunk in self.conn.chunks:
                await trio.sleep_until(self.at(chunk.offset))
                await stream.send_all(chunk.data)
                self.sent += len(chunk.data)
            await trio.sleep_until(self.at(self.conn.end))
            if not self.conn.closed_by_client:
                return  # the server had ended it: hang up now
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"the server ended the connection after {self.sent} bytes: {_why(exc)}")
            return
        with trio.move_on_after(MAX_CLOSE_WAIT):
            while not self.finished.is_set():
                before = self.received
                with trio.move_on_after(CLOSE_WAIT):
                    await self.finished.wait()
                if self.received == before:
                    return  # silent for CLOSE_WAIT after our EOF: it will not close; we do

    async def _drain(self, stream: trio.SocketStream, playing: trio.CancelScope) -> None:
        """Read what the server sends until it ends its side; count it, keep nothing.

        The server ending its side before it had every byte is this connection's failure, and
        stops it at once (``playing``), rather than at its next chunk, maybe minutes later.
        """
        try:
            while data := await stream.receive_some(RECEIVE_SIZE):
                self.received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.sent < self.conn.size or self.conn.closed_by_client:
                # A reset while it still had to take our bytes (or their end): data was lost.
                self._fail(f"the server reset the connection after {self.sent} bytes: {_why(exc)}")
                playing.cancel()
        else:
            if self.sent < self.conn.size:
                self._fail(
                    f"the server closed the connection after {self.sent} of {self.conn.size} bytes"
                )
                playing.cancel()
        self.finished.set()

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error


def _why(exc: BaseException) -> str:
    """The operating system's words for what went wrong: the innermost OSError's."""
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif isinstance(exc, OSError) and exc.errno:
            return os.strerror(exc.errno)  # trio's own words add the address, said already
        elif isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            return str(exc) or type(exc).__name__
