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
* stdout is a **regular file** (not ``O_APPEND``, which ``splice`` refuses): one side of a
  splice must be a pipe, so the bytes go socket -> a pipe of ours -> the file, the pipe
  emptied before :meth:`Splicer.move` returns (a write to the page cache, inline like the
  writer's write-through to /dev/null);
* anything else (a terminal, /dev/null, a socket, ``--workers``' framed output, ``--output``)
  keeps the copy path, and so does every platform without ``os.splice``.

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

import contextlib
import errno
import fcntl
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
# Our own pipe (regular-file stdout) holds one receive: 64 KiB is the default pipe size and the
# handler's receive size, so one splice in always fits.
_PIPE_BYTES = 1 << 16


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

    def __init__(self, fd: int, queue: Output, pipe: tuple[int, int] | None) -> None:
        self.fd = fd
        self.queue = queue
        # (read end, write end) of our pipe when fd is a regular file; None for a pipe.
        self._pipe = pipe
        self._turn = trio.Lock()  # who waits for room in stdout (wait_for_room)
        # Off for good after stdout failed: the copy path then meets the error in the writer,
        # which reports it and stops the server as it always did.
        self.enabled = True

    def move(self, sock_fd: int, max_bytes: int) -> int | bytes | None:
        """Splice up to ``max_bytes`` from ``sock_fd`` into the output: how many bytes went (0
        at the end of the stream); :data:`WOULD_BLOCK` if the socket is empty or stdout full
        (the caller tells which and waits: :meth:`wait_for_room`); None if splicing cannot
        be used now (the queue is busy): receive the ordinary way.  Bytes: taken from the
        socket but refused by the file (ENOSPC...), for the copy path, whose writer reports
        the error.  Socket errors propagate as ``OSError``."""
        queue = self.queue
        if not self.enabled or not queue.idle:
            return None
        if self._pipe is not None:
            return self._via_pipe(sock_fd, max_bytes)
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

    def _via_pipe(self, sock_fd: int, max_bytes: int) -> int | bytes | None:
        """socket -> our pipe -> the file, the pipe empty again on return."""
        assert self._pipe is not None
        read_end, write_end = self._pipe
        try:
            moved = os.splice(sock_fd, write_end, min(max_bytes, _PIPE_BYTES), flags=_FLAGS)
        except BlockingIOError:
            return WOULD_BLOCK  # our pipe is empty: the socket is
        left = moved
        try:
            while left:
                left -= os.splice(read_end, self.fd, left)
        except OSError:
            # ENOSPC, EIO...: hand what is in our pipe back to the copy path (whose writer
            # meets the error and reports it); nothing is spliced any more.
            self.enabled = False
            self.queue.written += moved - left
            return os.read(read_end, left)
        self.queue.written += moved
        return moved

    async def wait_for_room(self) -> None:
        """Wait until stdout (a pipe) can take more: the backpressure of the splicing path.

        Handlers take turns (a ``trio.Lock``: Trio lets one task at a time wait on a
        descriptor); the next one finds the pipe writable at once or waits in its turn.  A
        regular file is always writable (and epoll refuses it): a checkpoint."""
        if self._pipe is not None:
            await trio.lowlevel.checkpoint()
            return
        async with self._turn:
            await trio.lowlevel.wait_writable(self.fd)

    def close(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None
        self.enabled = False


def open_splicer(fd: int, queue: Output) -> Splicer | None:
    """A :class:`Splicer` into ``fd`` if splicing applies to it (see the module docstring),
    else None: the copy path."""
    if not hasattr(os, "splice"):
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISFIFO(st.st_mode):
            return Splicer(fd, queue, None)
        if stat.S_ISREG(st.st_mode) and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            return Splicer(fd, queue, (read_end, write_end))
    except OSError:
        pass
    return None
