"""The bounded queue between the connection handlers and the stdout writer.

Backpressure: the queue is bounded in *bytes*, not items.  A handler whose ``put`` does not fit
waits, so it stops reading its socket, the kernel's receive buffer fills and TCP pushes back on
the client.  Bounding items alone would not do: every handler blocked in ``put`` holds one item,
so memory would grow with the number of clients; bounding the bytes bounds the total.
"""

from __future__ import annotations

import collections
import math
import time
from typing import TYPE_CHECKING, Protocol

import trio

from trio_echo.config import DEFAULT_QUEUE_BYTES
from trio_echo.logs import LOGGER
from trio_echo.output.stdout import StdoutClosed, StdoutError, write_batch

if TYPE_CHECKING:
    from trio_echo.output.splice import Splicer

__all__ = ["ITEM_OVERHEAD", "OutputQueue", "OutputReader", "Waiter", "open_output_queue"]

# Bookkeeping cost charged per item on top of its length, so that a flood of tiny items
# (thousands of clients sending one short line each) is bounded too.
ITEM_OVERHEAD = 64


class Waiter(Protocol):
    """Who is putting an item (a connection): told since when it waits for room, for the
    status dump's "blocked on stdout"."""

    blocked_since: float | None


class OutputQueue:
    """The handlers' end of the output path: a FIFO of finished output with a byte budget.

    ``put`` waits while the budget is spent; the writer gives the budget back once the bytes are
    written.  If a handler is cancelled while waiting (grace period over, forced shutdown), the
    bytes it already read from its client are queued anyway, over budget: they were accepted
    from the client and must still be printed.  That overshoot is bounded by one receive plus one
    line piece per connection, and only happens at shutdown.

    Why not a ``trio`` memory channel (as before): streaming at GB/s, the channel's per-item
    costs showed up in the profile -- an extra scheduler trip in ``receive`` when an item is
    already there, and a ``WouldBlock`` exception to find the end of every batch.  A deque and
    one parked reader do the same job (docs/performance.md).
    """

    def __init__(self, limit: int = DEFAULT_QUEUE_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._items: collections.deque[bytes] = collections.deque()
        self._room = trio.lowlevel.ParkingLot()  # handlers waiting for budget
        self._reader: trio.lowlevel.Task | None = None  # the writer, waiting for items
        self._closed = False  # no more output will come (aclose)
        self._broken = False  # the writer is gone: nobody will print anything any more
        # Set by the writer when stdout is /dev/null or a file on a local disk: see
        # put_nowait and write_through.
        self._write_through: int | None = None
        self._slow_write = math.inf  # see write_through()
        # A failure of stdout met while writing through, for the writer task to raise.
        self.failure: StdoutClosed | StdoutError | None = None
        # Set by the writer when stdout is a pipe and splicing applies: raw handlers
        # may move their bytes straight into it while this queue is idle (output/splice.py).
        self.splicer: Splicer | None = None
        # For the metrics (trio_echo.metrics): the bytes written out (by the writer, or
        # here when writing through), the handlers waiting for room now, and the seconds
        # they have spent waiting in all -- backpressure made visible.  Counted per batch
        # and per wait, never per item that fits.
        self.written = 0
        self.waiting = 0
        self.blocked_seconds = 0.0

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written (the writer releases a batch's budget
        only once it is out), and somebody still writes: output may go straight to stdout
        now without overtaking or splitting anybody's (:mod:`trio_echo.output.splice`)."""
        return not self.used and not self._broken

    @staticmethod
    def cost(item: bytes) -> int:
        """What ``item`` counts against the budget."""
        return len(item) + ITEM_OVERHEAD

    async def put(self, item: bytes, waiter: Waiter | None = None) -> None:
        """Queue ``item`` for stdout, waiting for room: this wait is the backpressure.
        ``waiter`` (a connection) is told while it waits."""
        if not item:
            return
        cost = self.cost(item)
        # An item larger than the whole budget may go when the queue is empty, or it would
        # never go at all.
        if self.used and self.used + cost > self.limit:
            await self._wait_for_room(item, cost, waiter)
        self.put_nowait(item)

    async def _wait_for_room(self, item: bytes, cost: int, waiter: Waiter | None) -> None:
        """The slow path of :meth:`put`: wait, timed, until ``cost`` fits."""
        began = trio.current_time()
        self.waiting += 1
        if waiter is not None:
            waiter.blocked_since = began
        try:
            while self.used and self.used + cost > self.limit:
                await self._room.park()
        except trio.Cancelled:
            self.put_nowait(item)
            raise
        finally:
            self.waiting -= 1
            self.blocked_seconds += trio.current_time() - began
            if waiter is not None:
                waiter.blocked_since = None

    def put_nowait(self, item: bytes) -> None:
        """Queue ``item`` now, even over budget (see the class docstring for when)."""
        if not item or self._broken:
            # Nothing, or the writer is gone (stdout closed): nobody would print it.
            return
        if self._write_through is not None and not self._items:
            # stdout is /dev/null or a file on a local disk, and nothing is queued before
            # this item: writing it here, in one piece, keeps the order and the lines whole,
            # and saves the writer task a trip through the scheduler per item and a worker
            # thread per batch (measured in docs/performance.md).
            self._write_now(self._write_through, item)
            return
        self.used += self.cost(item)
        self._items.append(item)
        self._wake_reader()

    def write_through(self, fd: int, slow: float = math.inf) -> None:
        """From now on, write items to ``fd`` as they are put, while nothing is queued.

        For descriptors whose writes do not wait for anybody (``/dev/null``, a file on a
        local disk).  A write that takes longer than ``slow`` seconds (a disk the kernel
        holds writers back for) ends this for good: then items queue for the writer task,
        which writes from a worker thread, and the event loop is never held that long again.
        """
        self._write_through = fd
        self._slow_write = slow

    @property
    def writing_through(self) -> bool:
        return self._write_through is not None

    def _write_now(self, fd: int, item: bytes) -> None:
        began = time.perf_counter()
        try:
            write_batch(fd, (item,))
        except (StdoutClosed, StdoutError) as exc:
            # stdout failed: the writer task reports it (wait_for_items raises it there), as
            # it reports a failure of its own writes.
            self._write_through = None
            self.failure = exc
            self._wake_reader()
            return
        self.written += len(item)
        took = time.perf_counter() - began
        if took > self._slow_write:
            self._write_through = None
            LOGGER.info(
                "stdout: a write took %.0f ms: writing it from a worker thread from now on",
                took * 1000,
            )

    def release(self, cost: int) -> None:
        """The writer wrote ``cost`` worth of items: wake the handlers waiting for room.

        Only for the batch API (:meth:`take`); ``async for`` over the reader releases by
        itself, so a consumer that iterates must not call this too."""
        self.used -= cost
        if self._room:
            self._room.unpark_all()

    async def aclose(self) -> None:
        """No more output: the writer finishes what is queued, then returns."""
        self._closed = True
        self._wake_reader()
        await trio.lowlevel.checkpoint()

    # ---- the writer's end ------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if self._reader is not None:
            task, self._reader = self._reader, None
            trio.lowlevel.reschedule(task)

    async def wait_for_items(self) -> bool:
        """Wait until there is output to take; False once the queue is closed and empty.
        Not a checkpoint when items are already waiting (the caller's loop has its own)."""
        while not self._items:
            if self.failure is not None:
                raise self.failure
            if self._closed:
                return False
            if self._reader is not None:
                raise trio.BusyResourceError("another task is already reading the output")
            self._reader = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._reader = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return True

    def take(self, max_bytes: int) -> tuple[list[bytes], int]:
        """Take the oldest items, at least one and at most ``max_bytes`` worth (if there are
        any); return them and their cost, to pass to :meth:`release` once written."""
        items = self._items
        batch = [items.popleft()]
        size = len(batch[0])
        while items and size < max_bytes:
            item = items.popleft()
            batch.append(item)
            size += len(item)
        self.written += size
        return batch, size + len(batch) * ITEM_OVERHEAD

    def break_(self) -> None:
        """The writer is gone for good: drop what is queued and whatever comes later."""
        self._broken = True
        self._items.clear()
        self.used = 0
        self._room.unpark_all()


class OutputReader:
    """The writer's end of an :class:`OutputQueue`: ``async for item in reader`` (the items one
    by one, for an embedder or a test's collector), or :meth:`OutputQueue.take` in batches;
    leaving ``async with reader`` tells the handlers that nobody is writing any more.

    ``async for`` gives each item's budget back as it hands the item out: the consumer owns
    the item from then on, and one that iterates cannot forget a :meth:`OutputQueue.release`
    and so leave the handlers waiting forever once the budget (8 MiB by default) is spent.
    The backpressure is unchanged: a consumer that stops iterating stops giving budget back.
    Only the batch API (``take`` then ``release`` once written, as :func:`write_stdout` does)
    holds the budget until the bytes are out; a caller of ``take`` must not also iterate.
    """

    def __init__(self, queue: OutputQueue) -> None:
        self.queue = queue

    async def __aenter__(self) -> OutputReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.queue.break_()

    def __aiter__(self) -> OutputReader:
        return self

    async def __anext__(self) -> bytes:
        """The next item, its cost already released (see the class docstring for why)."""
        if not await self.queue.wait_for_items():
            raise StopAsyncIteration
        await trio.lowlevel.checkpoint()
        # After the checkpoint: a cancelled __anext__ leaves the item queued, not lost.
        if not self.queue._items:  # broken while we were at the checkpoint
            raise StopAsyncIteration
        (item,), cost = self.queue.take(0)
        self.queue.release(cost)
        return item


def open_output_queue(limit: int = DEFAULT_QUEUE_BYTES) -> tuple[OutputQueue, OutputReader]:
    """A new :class:`OutputQueue` and the reader that :func:`write_stdout` drains."""
    queue = OutputQueue(limit)
    return queue, OutputReader(queue)
