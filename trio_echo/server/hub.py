"""One epoll instance that tells many connection handlers when their sockets are readable.

Why: Trio's I/O manager registers a file descriptor with ``EPOLLONESHOT`` and re-arms it with
an ``epoll_ctl`` system call on *every* ``wait_readable``.  In the echo benchmark that is one
extra syscall (plus its bookkeeping in Python) per request, about a tenth of the server's time
(docs/performance.md).  asyncio keeps its registrations and pays nothing per request.

:class:`ReadinessHub` does what asyncio does, inside Trio's rules: every connection socket is
registered once, edge-triggered, in the hub's own epoll; one hub task waits (through Trio) for
that epoll to have events, collects them in one ``epoll_wait`` and reschedules the handler tasks
that wait for those sockets.  A handler parks with ``wait_task_rescheduled`` like any Trio
primitive, so cancellation works as usual (the abort function just forgets the waiter).

Edge-triggered means an event is reported when new data (or an end of stream, or an error)
arrives, not while data is waiting.  The contract that makes this correct: a handler waits only
after a ``recv`` came back short or failed with ``EAGAIN`` (the buffer was emptied), and an event
that arrives while its handler is busy elsewhere is remembered in ``_ready``, so the next wait
returns at once.  A remembered event may be stale (its data already read); that costs one
``EAGAIN``, never a lost wakeup.  The end of the stream and errors are different: they are
states, not arrivals, and may come with the very data that a short ``recv`` returned (a client
that sends a line and shuts down at once).  So once a socket reports ``EPOLLRDHUP``,
``EPOLLHUP`` or ``EPOLLERR``, it stays in ``_ended``: readable for good, as with level-triggered
polling.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import outcome
import trio

__all__ = ["ReadinessHub"]

# The hub is an accelerator: where the platform has no epoll (macOS, the BSDs, Windows), the
# streams wait through Trio's own wait_readable, and nothing here may fail to import.
AVAILABLE = hasattr(select, "epoll")

if AVAILABLE:
    _EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
    # Final states: the socket stays readable (recv returns b"" or the error) from then on.
    _ENDED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# Events collected per epoll_wait; more stay queued and are taken on the next round.
_MAX_EVENTS = 1024


class ReadinessHub:
    """Readability of many sockets, through one edge-triggered epoll and one task
    (:meth:`run`, which the server's nursery owns)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self._ready: set[int] = set()
        self._ended: set[int] = set()
        # One abort function per registered socket, made once at registration: a wait on the
        # hot path (one per echo request) then builds no closure (issue 16).
        self._aborts: dict[int, Callable[[object], trio.lowlevel.Abort]] = {}

    def register(self, fd: int) -> None:
        """Watch ``fd`` from now until :meth:`forget`; an already readable ``fd`` is reported
        at once (epoll checks on registration).

        Whatever was remembered about an earlier socket with the same descriptor number is
        dropped first: a stale "ended" would make every wait of the new connection return at
        once, and its handler spin on ``EAGAIN``.  :meth:`forget` normally did that already;
        this makes it true even for a socket closed without it."""
        self._ready.discard(fd)
        self._ended.discard(fd)
        self._epoll.register(fd, _EVENTS)
        waiting = self._waiting

        def abort(_: object) -> trio.lowlevel.Abort:
            # Cancelled: forget the waiter (an event for it is then remembered in _ready).
            waiting.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        self._aborts[fd] = abort

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed (closing it removes it from the epoll): drop what we
        know about it, and wake a task still waiting on it with ``ClosedResourceError``."""
        self._ready.discard(fd)
        self._ended.discard(fd)
        self._aborts.pop(fd, None)
        task = self._waiting.pop(fd, None)
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("socket closed")))

    def end(self, fd: int) -> None:
        """Receiving on ``fd`` was ended (``shutdown(SHUT_RD)``, see
        :meth:`~trio_echo.server.stream.LeanSocketStream.end_receiving`): it is readable for
        good from now on, and a task waiting on it is woken at once.

        The kernel would report the same through the epoll, but only after a round trip
        through :meth:`run` (an ``epoll_wait`` that returns up to ten thousand events at the
        end of the grace period); waking the task here saves that trip, and is exactly what
        the event would have done."""
        self._ended.add(fd)
        self._ready.add(fd)
        task = self._waiting.pop(fd, None)
        if task is not None:
            trio.lowlevel.reschedule(task)

    def arm(self, fd: int) -> Callable[[object], trio.lowlevel.Abort] | None:
        """The synchronous half of :meth:`wait_readable`, for the stream's hot path (one call
        per echo request, one coroutine frame fewer than awaiting :meth:`wait_readable`).

        ``None`` if ``fd`` has had an event since its last wait: the caller then takes a
        plain checkpoint and reads.  Otherwise the current task is now ``fd``'s waiter, and
        the caller must park at once with ``wait_task_rescheduled(the returned abort)``."""
        ready = self._ready
        if fd in ready:
            if fd not in self._ended:
                ready.discard(fd)
            return None
        waiting = self._waiting
        if fd in waiting:
            raise trio.BusyResourceError("another task is already waiting on this socket")
        abort = self._aborts.get(fd)
        if abort is None:
            raise trio.ClosedResourceError("this socket is not registered (closed?)")
        waiting[fd] = trio.lowlevel.current_task()
        return abort

    async def wait_readable(self, fd: int) -> None:
        """Wait until ``fd`` has had new data, an end of stream or an error since its last
        ``recv``; always a checkpoint.  ``fd`` must be registered."""
        try:
            abort = self.arm(fd)
        except trio.ClosedResourceError:
            await trio.lowlevel.checkpoint()
            raise
        if abort is None:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        """Hand out events until cancelled (the server cancels it once every handler is
        gone); then close the epoll."""
        epoll, waiting, ready, ended = self._epoll, self._waiting, self._ready, self._ended
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, events in epoll.poll(0, _MAX_EVENTS):
                    if events & _ENDED:
                        ended.add(fd)
                        ready.add(fd)
                    task = waiting.pop(fd, None)
                    if task is None:
                        ready.add(fd)
                    else:
                        reschedule(task)
        finally:
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()
