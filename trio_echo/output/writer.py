"""The one task that writes stdout, and the bounded queue that feeds it.

Data flows one way: connection handlers ``put`` finished output into an :class:`OutputQueue`;
a single :func:`write_stdout` task takes it out in batches and writes it.  Because there is one
writer, output lines of different clients never mix inside a line.

The queue (:mod:`trio_echo.output.queue`) is bounded in bytes, which is what slows the clients
down when stdout is slow.

Why a thread for the write: ``os.write`` on a pipe or a terminal blocks when the reader is slow,
and it must not block the event loop.  Trio's ``FdStream`` would instead set ``O_NONBLOCK`` on
stdout's *open file description*, which is shared with stderr on the same terminal and with the
parent shell, so their writes would start failing with ``BlockingIOError``.  A blocking write in
``trio.to_thread`` leaves the descriptor alone; batching (one ``writev`` per up to
``WRITE_BATCH_BYTES``, no copy into one buffer) keeps the cost of the thread hop small.
"""

from __future__ import annotations

import trio

from trio_echo.output.frames import frame_header
from trio_echo.output.queue import ITEM_OVERHEAD, OutputQueue, OutputReader
from trio_echo.output.splice import open_splicer
from trio_echo.output.stdout import WRITE_BATCH_BYTES, never_blocks, on_local_disk, write_batch

__all__ = ["SLOW_FILE_WRITE", "write_stdout"]

# A write into a file on a local disk that takes longer than this (seconds) means the kernel
# holds writers back (more waits for the disk than it allows): the event loop must not wait
# like that again, so the file is written from a worker thread from then on.  Far above a
# write into the page cache (a batch of 1 MiB: well under a millisecond).
SLOW_FILE_WRITE = 0.1


async def write_stdout(
    queue: OutputQueue,
    reader: OutputReader,
    fd: int = 1,
    *,
    framed: bool = False,
    accelerate: bool = True,
) -> None:
    """Drain the queue into ``fd`` until it is closed and empty.

    Takes everything that is waiting (up to ``WRITE_BATCH_BYTES``) and writes it with one
    ``writev`` in a worker thread.  Where writes do not wait for anybody, the handlers write
    their output through as they put it, from the event loop, while nothing is queued:
    ``/dev/null``, and with ``accelerate`` a file on a local disk (until one of its writes is
    slow: ``SLOW_FILE_WRITE``).  Cancellation abandons a write that is stuck (a stalled pipe
    during a forced shutdown); the worker threads are daemons, so the process can still exit.
    ``framed``: each batch goes as one frame (:mod:`trio_echo.output.frames`), for the
    supervisor of a ``--workers`` worker.
    """
    if not framed:
        if never_blocks(fd):
            queue.write_through(fd)
        elif accelerate and on_local_disk(fd):
            queue.write_through(fd, slow=SLOW_FILE_WRITE)
        else:
            # A pipe: --raw handlers may splice into it while we are idle (else None).
            queue.splicer = open_splicer(fd, queue)
    try:
        await _drain(queue, reader, fd, framed=framed)
    finally:
        if queue.splicer is not None:
            queue.splicer.close()
            queue.splicer = None


async def _drain(queue: OutputQueue, reader: OutputReader, fd: int, *, framed: bool) -> None:
    async with reader:
        while await queue.wait_for_items():
            batch, cost = queue.take(WRITE_BATCH_BYTES)
            if framed:
                batch.insert(0, frame_header(cost - len(batch) * ITEM_OVERHEAD))
            if queue.writing_through:
                # No checkpoint needed: only handlers add items, so this loop drains at most
                # the budget (8 MiB, a millisecond into /dev/null) before it parks and yields.
                write_batch(fd, batch)
            else:
                await trio.to_thread.run_sync(write_batch, fd, batch, abandon_on_cancel=True)
            queue.release(cost)
