"""The graceful shutdown: what ``handle.shutdown()`` starts, and how the grace period ends.

:func:`~trio_echo.server.serve.serve` runs accepting in an inner cancel scope and the handlers in
an outer nursery.  ``shutdown()`` cancels the inner scope (the listeners close at once) and puts
a deadline -- the end of the grace period -- on :meth:`Registry.close_after_grace`; the handlers
keep serving their clients until they leave or that deadline passes.  ``abort()`` cancels the
handlers' nursery too.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import attrs
import trio

from trio_echo.connection import Connection
from trio_echo.output.queue import OutputQueue
from trio_echo.server.listener import WrappingListener
from trio_echo.server.wrappers import end_receiving
from trio_echo.stats import ServerStats

__all__ = ["STRAGGLER_CHECK_INTERVAL", "AdmittingListener", "Registry", "ServerHandle"]

# At the end of the grace period, how often to look for handlers that did not end when their
# client's stream was ended (see Registry.close_after_grace).
STRAGGLER_CHECK_INTERVAL = 0.05


@attrs.define(eq=False)
class ServerHandle:
    """What ``await nursery.start(serve, config)`` returns: the bound addresses and the means to
    stop the server."""

    addresses: list[tuple[object, ...]]
    stats: ServerStats
    grace: float
    _accept_scope: trio.CancelScope
    _connections_scope: trio.CancelScope
    # The closer task's scope: shutdown() puts the end of the grace period on it as a deadline.
    _grace_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _shutdown_started: trio.Event = attrs.field(factory=trio.Event)
    # Set once every listener is closed: from then on a new client is refused by the kernel
    # (a balancer retries it elsewhere) instead of waiting in a backlog that is about to be
    # reset.  "stopped accepting" is logged after it, not before.
    accepting_stopped: trio.Event = attrs.field(factory=trio.Event)
    stopped: trio.Event = attrs.field(factory=trio.Event)
    shutting_down: bool = False
    aborted: bool = False
    # What the metrics and the status dump read (trio_echo.metrics): the output queue (None
    # when nothing is printed) and the connections being served (the Registry's).
    output: OutputQueue | None = None
    live: dict[Connection, tuple[trio.CancelScope, trio.abc.Stream]] = attrs.field(factory=dict)

    @property
    def port(self) -> int:
        """The bound port (the same on every address)."""
        port = self.addresses[0][1]
        assert isinstance(port, int)
        return port

    def shutdown(self, grace: float | None = None) -> None:
        """Start the graceful shutdown: stop accepting now, close the remaining connections once
        ``grace`` seconds (default: the configured grace period) have passed.  Idempotent; a
        later call can only shorten the grace period."""
        grace = self.grace if grace is None else grace
        self.shutting_down = True
        self._accept_scope.cancel()
        deadline = trio.current_time() + grace
        self._grace_scope.deadline = min(self._grace_scope.deadline, deadline)
        self._shutdown_started.set()

    def abort(self) -> None:
        """Close every connection now, without a grace period."""
        self.shutting_down = True
        self.aborted = True
        self._accept_scope.cancel()
        self._connections_scope.cancel()

    def cancel_reason(self) -> str:
        """Why a handler was cancelled, for its ``close`` line."""
        if self.aborted:
            return "server aborted"
        if self.shutting_down:
            return "grace period over"
        return "server stopped"


@attrs.define(eq=False)
class Registry:
    """The connections being served: each handler's cancel scope and stream, so that the end
    of the grace period can reach them."""

    stats: ServerStats
    handle: ServerHandle
    # Each handler's cancel scope and stream, from its start to its end (the handler adds and
    # removes itself: no context manager object per connection, for c10k's memory).
    live: dict[Connection, tuple[trio.CancelScope, trio.abc.Stream]] = attrs.field(factory=dict)
    # True once the grace period is over and the closer is ending the handlers.
    closing: bool = False
    # Clients accepted whose handler has not started yet (serve_listeners starts it in a later
    # scheduler turn): the closer must not take "nobody is connected" for over while these
    # are on their way.  Counted by AdmittingListener, uncounted by the handler's first step.
    admitted: int = 0
    # Unparked whenever a client leaves: the closer, waiting for everyone to leave, looks again.
    _left: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def replace_stream(self, conn: Connection, stream: trio.abc.Stream) -> None:
        """``conn`` is now served over ``stream`` (a TLS stream over the socket's)."""
        scope, _ = self.live[conn]
        self.live[conn] = (scope, stream)

    def left(self) -> None:
        """A client left: wake the closer if what it waits for may now be true.

        Only then: at the end of the grace period ten thousand handlers leave in a row, and
        waking the closer after each, only for it to find others still there, was ten
        thousand scheduler trips for nothing (docs/performance.md, round 3)."""
        if self.closing:
            if not self.live:
                self._left.unpark_all()
        elif not (self.stats.active or self.admitted):
            self._left.unpark_all()

    def cancel_reason(self) -> str:
        return self.handle.cancel_reason()

    async def close_after_grace(self) -> None:
        """Once shutdown has begun, wait until every client has left or the grace period is
        over; then close the ones still there.

        Why not simply a deadline on the handlers' nursery: cancelling a nursery with 10,000
        handlers makes every one of them raise ``Cancelled`` up into the nursery, which gathers
        10,000 exceptions into a group only to discard it: over a second (profiled in
        docs/performance.md).  Instead, a handler waiting for its client gets an end of stream
        (``shutdown(SHUT_RD)`` on its socket: no exception at all, and whatever the client sent
        before is still read and printed); only a handler busy elsewhere (stuck writing to a
        client that does not read, waiting for stdout, or on a stream that cannot be ended
        that way, like TLS) is cancelled, through its own scope, so that it too returns
        normally.
        """
        handle = self.handle
        with handle._grace_scope:
            await handle._shutdown_started.wait()
            while self.stats.active or self.admitted:
                await self._left.park()
            return
        self.closing = True
        reason = self.cancel_reason()
        with _collector_paused_for_old_objects():
            while self.live:
                for conn, (scope, stream) in list(self.live.items()):
                    conn.reason = reason
                    if not end_receiving(stream):
                        scope.cancel()
                # Handlers woken by their end of stream finish on their own; look again
                # shortly for any that went on to block elsewhere.
                with trio.move_on_after(STRAGGLER_CHECK_INTERVAL):
                    while self.live:
                        await self._left.park()


@contextlib.contextmanager
def _collector_paused_for_old_objects() -> Iterator[None]:
    """While the handlers end, keep CPython's cyclic garbage collector off the objects that
    exist already (``gc.freeze``), then hand them back (``gc.unfreeze``).

    Why: the end of the grace period wakes ten thousand handlers at once, and the objects that
    waking them allocates (an outcome per task in the run queue) survive long enough to set
    off a full collection, which walks every object of every connection still there: about a
    tenth of a second, a fifth of the whole shutdown (docs/performance.md, round 3).  Frozen
    objects are still freed by reference counting as each handler ends; a cycle among them
    that becomes garbage meanwhile is collected after ``unfreeze``, so nothing leaks.  Other
    code in the process is affected only for as long as the closing takes (well under a second
    for 10,000 clients).  A no-op where there is no ``gc.freeze`` (it is CPython's)."""
    freeze = getattr(gc, "freeze", None)
    unfreeze = getattr(gc, "unfreeze", None)
    if freeze is None or unfreeze is None:
        yield
        return
    freeze()
    try:
        yield
    finally:
        unfreeze()


class AdmittingListener(WrappingListener):
    """Counts each client as admitted the moment ``accept`` returns it, before Trio's
    ``serve_listeners`` starts its handler in a later scheduler turn, so that the end of the
    grace period never misses it (see :attr:`Registry.admitted`)."""

    def __init__(self, inner: trio.abc.Listener[trio.abc.Stream], registry: Registry) -> None:
        super().__init__(inner)
        self._registry = registry

    async def accept(self) -> trio.abc.Stream:
        stream = await self.inner.accept()
        self._registry.admitted += 1
        return stream
