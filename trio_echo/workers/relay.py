"""A worker's output, from its stdout pipe into the supervisor's output queue, frame by frame
(:mod:`trio_echo.output.frames`): the supervisor alone writes the real stdout, whole batches at
a time, so the lines of different workers never mix."""

from __future__ import annotations

import trio

from trio_echo.logs import LOGGER
from trio_echo.output.frames import FrameDecoder
from trio_echo.output.queue import OutputQueue

__all__ = ["RELAY_READ_SIZE", "relay"]

# The most read from a worker's pipe at a time: a whole batch of the worker's writer (up to
# 1 MiB, and a frame is read in one piece up to this size) fits in one read.
RELAY_READ_SIZE = 2 * 1024 * 1024


async def relay(read_fd: int, number: int, queue: OutputQueue) -> None:
    """Worker ``number``'s frames into ``queue``, each whole, until its pipe ends."""
    decoder = FrameDecoder()
    async with trio.lowlevel.FdStream(read_fd) as pipe:
        # A read per header and a read per payload: a payload then usually arrives in one
        # piece, and goes on to stdout without being copied again (frames.py).
        while chunk := await pipe.receive_some(min(decoder.wanted(), RELAY_READ_SIZE)):
            for payload in decoder.feed(chunk):
                # Waiting here is the backpressure: the worker's writer waits on the pipe.
                await queue.put(payload)
    if decoder.pending:
        LOGGER.warning(
            "worker %d ended in the middle of an output batch: %d bytes dropped",
            *(number, decoder.pending),
        )
