"""``--output FILE``: the output appended to a file instead of stdout, and reopened on SIGHUP.

The logrotate convention: logrotate renames ``FILE`` away (``FILE.1``), then runs the
``postrotate`` script, ``kill -HUP`` of the server; the server opens ``FILE`` again by its path
(creating it) and goes on writing there.  Until the signal it writes to the renamed file -- it
still holds it open -- so nothing written before the signal is lost, and nothing is written
twice: the one writer task (:func:`write_file`) writes whole batches, each to one file, and the
reopen (:meth:`OutputFile.reopen_on_request`) happens between two batches, never inside one.
The lock between them is Trio's fair ``Lock``: a reopen waits for the batch being written (the
"current write" to the old file) and is next, before the following batch.

Why a thread for every write, as for stdout (:mod:`trio_echo.output.writer`): a write to a
regular file never returns ``EAGAIN``, it *blocks* (disk writeback, a full NFS server), and
making the descriptor non-blocking would change nothing.  A file we opened ourselves has none
of stdout's shared-``O_NONBLOCK`` trouble, but the write must still leave the event loop.
Opening it can block too (NFS), so it happens in a thread as well.

The file is opened ``O_APPEND`` (several writers, or a ``>>`` of the user's, never overwrite
each other) and created with mode ``0o666`` less the umask, as a shell's ``>>`` creates it.
"""

from __future__ import annotations

import contextlib
import os

import trio

from trio_echo.logs import LOGGER
from trio_echo.output.queue import OutputQueue, OutputReader
from trio_echo.output.stdout import WRITE_BATCH_BYTES, StdoutClosed, StdoutError, write_batch
from trio_echo.output.writer import write_stdout

__all__ = ["FILE_MODE", "OutputFile", "open_append", "write_file", "write_output"]

# Created as a shell's >> creates a file: read-write for everyone the umask lets through.
FILE_MODE = 0o666


def open_append(path: str) -> int:
    """Open ``path`` for appending, creating it if needed (blocking); a descriptor."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise StdoutError(f"cannot open --output {path}: {exc.strerror or exc}") from exc


class OutputFile:
    """The ``--output`` file: its path, the descriptor written now, and the SIGHUP reopen.

    Made before it is opened, so that a SIGHUP during start-up is already a reopen request
    (never a stop); :meth:`open` once the server listens (a server that cannot listen leaves
    nothing on disk)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.reopens = 0
        self._lock = trio.Lock()
        self._wanted = trio.Event()

    async def open(self) -> None:
        """Open the file for the first time (raises :class:`StdoutError`, one line)."""
        self.fd = await trio.to_thread.run_sync(open_append, self.path, abandon_on_cancel=True)
        LOGGER.info("output to %s (appending; SIGHUP reopens it)", self.path)

    def request_reopen(self) -> None:
        """SIGHUP: open the path again once the batch being written is out (see
        :meth:`reopen_on_request`).  Several signals before that are one reopen."""
        self._wanted.set()

    async def reopen_on_request(self) -> None:
        """Reopen the file whenever :meth:`request_reopen` asks, until cancelled.

        A path that cannot be opened now (its directory gone, no permission) is a warning,
        and the output goes on into the file already open: losing it would be worse."""
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            async with self._lock:
                try:
                    fd = await trio.to_thread.run_sync(
                        open_append, self.path, abandon_on_cancel=True
                    )
                except StdoutError as exc:
                    LOGGER.warning("SIGHUP: %s; still writing to the file open before", exc)
                    continue
                old, self.fd = self.fd, fd
                if old is not None:
                    os.close(old)
                self.reopens += 1
            LOGGER.info("SIGHUP: reopened %s", self.path)

    async def write(self, batch: list[bytes]) -> None:
        """Write ``batch`` whole to the file open now."""
        async with self._lock:
            assert self.fd is not None
            try:
                await trio.to_thread.run_sync(write_batch, self.fd, batch, abandon_on_cancel=True)
            except (StdoutError, StdoutClosed) as exc:
                why = exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc
                raise StdoutError(f"cannot write to --output {self.path}: {why}") from exc

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


async def write_file(queue: OutputQueue, reader: OutputReader, output: OutputFile) -> None:
    """Drain the queue into ``output`` until the queue is closed and empty, reopening the file
    on request meanwhile; the :func:`~trio_echo.output.writer.write_stdout` of ``--output``.

    ``output`` must be open.  Closed at the end; not if cancelled (a forced stop), when a write
    abandoned in its thread may still be using the descriptor: the exit closes it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.reopen_on_request)
        async with reader:
            while await queue.wait_for_items():
                batch, cost = queue.take(WRITE_BATCH_BYTES)
                await output.write(batch)
                queue.release(cost)
        nursery.cancel_scope.cancel()
    output.close()


async def write_output(
    queue: OutputQueue, reader: OutputReader, output: OutputFile | None, *, accelerate: bool = True
) -> None:
    """:func:`write_file` into ``output`` if there is one, else
    :func:`~trio_echo.output.writer.write_stdout` (a ``--workers`` supervisor's writer)."""
    if output is None:
        await write_stdout(queue, reader, accelerate=accelerate)
    else:
        await write_file(queue, reader, output)
