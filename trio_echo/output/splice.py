"""Zero-copy raw output: ``os.splice`` from a client's socket into stdout, an optional
accelerator (Linux, Python 3.10+) for ``--raw`` streaming.

Why: streaming one client into stdout at loopback speed, the copy path costs two copies and a
Python ``bytes`` per 64 KiB (``recv`` into user space, ``write`` back into the kernel) plus a
worker-thread hop per batch for the writer; ``splice`` moves the pages kernel to kernel, from
the event loop, without blocking (docs/performance.md, "Round 3 (issue 16): raw streaming").

Where it applies, and why only there:

* stdout is a **pipe**: ``splice(socket -> stdout)`` directly, with ``SPLICE_F_NONBLOCK`` (the
  pipe side never blocks; the socket is non-blocking already).  stdout itself keeps its flags:
  ``O_NONBLOCK`` is never set on its shared open file description (see writer.py);
* anything else (a regular file, a terminal, /dev/null, a socket, ``--workers``' framed
  output, ``--output``) keeps the copy path, and so does every platform without ``os.splice``.
  A regular file was tried (socket -> a pipe of ours -> the file, inline) and measured slower
  than the copy path (docs/performance.md, round 3): a file takes a copy into the page cache
  either way, and the copy path's writer thread overlaps that copy with the receiving, where
  the splice did both one after the other in the event loop.

Ordering and backpressure stay the output queue's: a handler may splice only while the queue
is *idle* (nothing queued, nothing being written: ``OutputQueue.idle``), and the
splice is one synchronous system call in the event loop, so no other output can start or be
under way in between: one receive's chunk is never interleaved with anybody else's output.
When the queue is busy, :meth:`Splicer.move` says so and the handler receives the bytes the
ordinary way and ``put``\\ s them: they wait their turn in the queue (and a stalled stdout blocks
the writer, fills the budget and stops the handler, as on the copy path).  When stdout is full
(``EAGAIN`` with bytes waiting in the socket), the handler waits until it can take more
(:meth:`Splicer.wait_for_room`) without reading its client: the client is slowed down, and
nothing piles up in memory.  (Falling back to the copy path there instead was measured: once
one chunk is queued the queue is rarely idle again while the client streams, and nearly every
byte went the copy way.)
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol

import trio

__all__ = ["WOULD_BLOCK", "Output", "Splicer", "open_splicer"]

# SPLICE_F_MOVE is only a hint; SPLICE_F_NONBLOCK is what keeps the event loop from blocking
# on a full pipe.  Both exist wherever os.splice does.
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
# move(): nothing moved, because the socket is empty or stdout (a pipe) is full.
WOULD_BLOCK = -1


class Output(Protocol):
    """What a :class:`Splicer` needs of the output queue (an ``OutputQueue``)."""

    written: int

    @property
    def idle(self) -> bool: ...


class Splicer:
    """Moves a socket's bytes into the output descriptor while the output queue is idle.

    One per server (the writer makes it, :func:`open_splicer`); shared by every handler, which
    is safe because :meth:`move` never awaits.  Counts what it moves in the queue's
    ``written`` (the metrics' printed bytes)."""

    def __init__(self, fd: int, queue: Output) -> None:
        self.fd = fd
        self.queue = queue
        self._turn = trio.Lock()  # who waits for room in stdout (wait_for_room)
        # Off for good after stdout failed: the copy path then meets the error in the writer,
        # which reports it and stops the server as it always did.
        self.enabled = True

    def move(self, sock_fd: int, max_bytes: int) -> int | None:
        """Splice up to ``max_bytes`` from ``sock_fd`` into the output: how many bytes went (0
        at the end of the stream); :data:`WOULD_BLOCK` if the socket is empty or stdout full
        (the caller tells which and waits: :meth:`wait_for_room`); None if splicing cannot
        be used now (the queue is busy): receive the ordinary way.  Socket errors propagate
        as ``OSError``."""
        queue = self.queue
        if not self.enabled or not queue.idle:
            return None
        try:
            moved = os.splice(sock_fd, self.fd, max_bytes, flags=_FLAGS)
        except BlockingIOError:
            return WOULD_BLOCK
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise  # the socket's (ECONNRESET, ...)
            self.enabled = False  # stdout's reader is gone: the writer will say so
            return None
        queue.written += moved
        return moved

    async def wait_for_room(self) -> None:
        """Wait until stdout (a pipe) can take more: the backpressure of the splicing path.

        Handlers take turns (a ``trio.Lock``: Trio lets one task at a time wait on a
        descriptor); the next one finds the pipe writable at once or waits in its turn."""
        async with self._turn:
            await trio.lowlevel.wait_writable(self.fd)

    def close(self) -> None:
        """No more splicing (the writer is gone)."""
        self.enabled = False


def open_splicer(fd: int, queue: Output) -> Splicer | None:
    """A :class:`Splicer` into ``fd`` if splicing applies to it (see the module docstring),
    else None: the copy path."""
    if not hasattr(os, "splice"):
        return None
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return Splicer(fd, queue)
    except OSError:
        pass
    return None
