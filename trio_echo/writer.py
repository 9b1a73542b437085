"""The one task that writes stdout, and the bounded queue that feeds it.

Data flows one way: connection handlers ``put`` finished output into an :class:`OutputQueue`;
a single :func:`write_stdout` task takes it out in batches and writes it.  Because there is one
writer, output lines of different clients never mix inside a line.

Backpressure: the queue is bounded in *bytes*, not items.  A handler whose ``put`` does not fit
waits, so it stops reading its socket, the kernel's receive buffer fills and TCP pushes back on
the client.  Bounding items alone would not do: every handler blocked in ``put`` holds one item,
so memory would grow with the number of clients; bounding the bytes bounds the total.

Why a thread for the write: ``os.write`` on a pipe or a terminal blocks when the reader is slow,
and it must not block the event loop.  Trio's ``FdStream`` would instead set ``O_NONBLOCK`` on
stdout's *open file description*, which is shared with stderr on the same terminal and with the
parent shell, so their writes would start failing with ``BlockingIOError``.  A blocking write in
``trio.to_thread`` leaves the descriptor alone; batching (one ``writev`` per up to
``WRITE_BATCH_BYTES``, no copy into one buffer) keeps the cost of the thread hop small.
"""

from __future__ import annotations

import math

import trio

from .config import DEFAULT_QUEUE_BYTES
from .stdout import WRITE_BATCH_BYTES, never_blocks, write_batch

__all__ = ["OutputQueue", "open_output_queue", "write_stdout"]

# Bookkeeping cost charged per item on top of its length, so that a flood of tiny items
# (thousands of clients sending one short line each) is bounded too.
_ITEM_OVERHEAD = 64


class OutputQueue:
    """The handlers' end of the output path: a byte budget in front of a memory channel.

    ``put`` waits while the budget is spent; the writer gives the budget back once the bytes are
    written.  If a handler is cancelled while waiting (grace period over, forced shutdown), the
    bytes it already read from its client are queued anyway, over budget: they were accepted
    from the client and must still be printed.  That overshoot is bounded by one receive plus one
    line piece per connection, and only happens at shutdown.
    """

    def __init__(
        self, send: trio.MemorySendChannel[bytes], limit: int = DEFAULT_QUEUE_BYTES
    ) -> None:
        self._send = send
        self.limit = limit
        self.used = 0
        self._lot = trio.lowlevel.ParkingLot()

    @staticmethod
    def cost(item: bytes) -> int:
        """What ``item`` counts against the budget."""
        return len(item) + _ITEM_OVERHEAD

    async def put(self, item: bytes) -> None:
        """Queue ``item`` for stdout, waiting for room: this wait is the backpressure."""
        if not item:
            return
        cost = self.cost(item)
        try:
            # An item larger than the whole budget may go when the queue is empty, or it
            # would never go at all.
            while self.used and self.used + cost > self.limit:
                await self._lot.park()
        except trio.Cancelled:
            self.put_nowait(item)
            raise
        self.put_nowait(item)

    def put_nowait(self, item: bytes) -> None:
        """Queue ``item`` now, even over budget (see the class docstring for when)."""
        if not item:
            return
        self.used += self.cost(item)
        try:
            self._send.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The writer is gone (stdout closed or shutting down): nobody will print this.
            self.used -= self.cost(item)

    def release(self, cost: int) -> None:
        """The writer wrote ``cost`` worth of items: wake the handlers waiting for room."""
        self.used -= cost
        self._lot.unpark_all()

    async def aclose(self) -> None:
        """No more output: the writer finishes what is queued, then returns."""
        await self._send.aclose()


def open_output_queue(
    limit: int = DEFAULT_QUEUE_BYTES,
) -> tuple[OutputQueue, trio.MemoryReceiveChannel[bytes]]:
    """A new :class:`OutputQueue` and the receive end that :func:`write_stdout` drains."""
    # The channel itself is unbounded in items: the byte budget in OutputQueue is the bound.
    send, receive = trio.open_memory_channel[bytes](math.inf)
    return OutputQueue(send, limit), receive


async def write_stdout(
    queue: OutputQueue,
    receive: trio.MemoryReceiveChannel[bytes],
    fd: int = 1,
) -> None:
    """Drain ``receive`` into ``fd`` until the queue is closed and empty.

    Takes everything that is waiting (up to ``WRITE_BATCH_BYTES``) and writes it with one
    ``writev`` in a worker thread (inline when ``fd`` is ``/dev/null``, which never blocks).
    Cancellation abandons a write that is stuck (a stalled pipe during a forced shutdown); the
    worker threads are daemons, so the process can still exit.
    """
    inline = never_blocks(fd)
    async with receive:
        async for first in receive:
            batch = [first]
            size = len(first)
            while size < WRITE_BATCH_BYTES:
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(item)
                size += len(item)
            if inline:
                # /dev/null: nothing to wait for (the receive above was the checkpoint).
                write_batch(fd, batch)
            else:
                await trio.to_thread.run_sync(write_batch, fd, batch, abandon_on_cancel=True)
            queue.release(size + len(batch) * _ITEM_OVERHEAD)
