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
from trio_echo.output.stdout import WRITE_BATCH_BYTES, never_blocks, write_batch

__all__ = ["write_stdout"]


async def write_stdout(
    queue: OutputQueue, reader: OutputReader, fd: int = 1, *, framed: bool = False
) -> None:
    """Drain the queue into ``fd`` until it is closed and empty.

    Takes everything that is waiting (up to ``WRITE_BATCH_BYTES``) and writes it with one
    ``writev`` in a worker thread (inline when ``fd`` is ``/dev/null``, which never blocks).
    Cancellation abandons a write that is stuck (a stalled pipe during a forced shutdown); the
    worker threads are daemons, so the process can still exit.  ``framed``: each batch goes as
    one frame (:mod:`trio_echo.output.frames`), for the supervisor of a ``--workers`` worker.
    """
    inline = never_blocks(fd) and not framed
    if inline:
        queue._write_through = fd
    elif not framed:
        # A pipe: --raw handlers may splice into it while we are idle (else None).
        queue.splicer = open_splicer(fd, queue)
    try:
        await _drain(queue, reader, fd, inline=inline, framed=framed)
    finally:
        if queue.splicer is not None:
            queue.splicer.close()
            queue.splicer = None


async def _drain(
    queue: OutputQueue, reader: OutputReader, fd: int, *, inline: bool, framed: bool
) -> None:
    async with reader:
        while await queue.wait_for_items():
            batch, cost = queue.take(WRITE_BATCH_BYTES)
            if framed:
                batch.insert(0, frame_header(cost - len(batch) * ITEM_OVERHEAD))
            if inline:
                # No checkpoint needed: only handlers add items, so this loop drains at most
                # the budget (8 MiB, a millisecond into /dev/null) before it parks and yields.
                write_batch(fd, batch)
            else:
                await trio.to_thread.run_sync(write_batch, fd, batch, abandon_on_cancel=True)
            queue.release(cost)
