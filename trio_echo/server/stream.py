""":class:`LeanSocketStream`: Trio's ``HalfCloseableStream`` over a kernel socket, with fewer
scheduler trips than ``trio.SocketStream``.

Why not simply ``trio.SocketStream``: profiling the echo benchmark (docs/performance.md) showed
that a request/response on a ``SocketStream`` pays for more than it needs.  Its next
``receive_some`` first tries ``recv``, fails with ``EAGAIN`` (a raised and caught exception),
and only then waits; every wait re-arms the socket in epoll with an ``epoll_ctl`` system call
(Trio registers with ``EPOLLONESHOT``); and each call goes through ``trio.socket``'s generic
non-blocking helper.  This stream does the same work with one scheduler trip per receive:

* it waits for readability *first* whenever the previous ``recv`` came back short (the kernel
  buffer was emptied, so trying again would only fail), and otherwise takes one plain
  checkpoint, so every ``receive_some`` is exactly one checkpoint, as Trio's contract asks;
* readability comes from the server's :class:`~trio_echo.server.hub.ReadinessHub` where the
  platform has epoll (one persistent, edge-triggered registration per socket: no
  ``epoll_ctl`` per wait), or from Trio's own ``wait_readable`` everywhere else;
* ``send_all`` writes directly, waits with Trio's ``wait_writable`` only when the kernel's send
  buffer is full, and ends with one cancel-shielded checkpoint (the same as Trio's);
  :meth:`LeanSocketStream.send_some_nowait` is the same without the checkpoint, for a caller
  that checkpoints anyway (the handler's echo, right before its next receive).

It passes Trio's own stream conformance suite (``trio.testing.check_half_closeable_stream``,
tests/test_stream.py), hub on and hub off, so any Trio code can use it like a
``trio.SocketStream``.  One method more, :meth:`end_receiving`, lets the end of the grace
period wake a handler waiting for its client without a cancellation (see
:mod:`trio_echo.server.shutdown`).
"""

from __future__ import annotations

import errno
import math
import socket
from typing import TYPE_CHECKING

import trio

from trio_echo.output.splice import WOULD_BLOCK
from trio_echo.server.hub import ReadinessHub

if TYPE_CHECKING:
    from trio_echo.output.splice import Splicer

__all__ = ["LeanSocketStream"]

# errno values that mean "this socket was closed under us": like trio.SocketStream, they are
# a ClosedResourceError (our own misuse), not a BrokenResourceError (the peer's doing).
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def _translate(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """The one place a socket error becomes a stream error (as in Trio's
    ``_translate_socket_errors_to_stream_errors``); raise it ``from exc``."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class LeanSocketStream(trio.abc.HalfCloseableStream):
    """A connected kernel socket as a Trio stream (see the module docstring for why)."""

    __slots__ = (
        "_closed",
        "_drained",
        "_eof_sent",
        "_fd",
        "_hub",
        "_read_ended",
        "_receiving",
        "_sending",
        "_waited_in_trio",
        "_waiting",
        "peer",
        "socket",
    )

    def __init__(
        self, sock: socket.socket, hub: ReadinessHub | None = None, peer: object = None
    ) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Like trio.SocketStream: small writes (an echo, a prompt) go out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        #: The kernel socket (a plain ``socket.socket``), for its addresses and options.
        self.socket = sock
        #: The client's address as ``accept()`` gave it (``None``: ask the socket): a client
        #: that resets at once has no ``getpeername()`` any more, but still a name in the log.
        self.peer = peer
        self._fd = sock.fileno()
        self._hub = hub
        if hub is not None:
            # May raise (epoll's ENOSPC): the listener then closes the client, and only it.
            hub.register(self._fd)
        # A new client has most likely not sent anything yet: wait before the first recv.
        self._drained = True
        # True while receive_some waits for the socket to become readable.
        self._waiting = False
        self._receiving = False
        self._sending = False
        self._closed = False
        # After send_eof, sending is our own misuse (ClosedResourceError), not a broken pipe.
        self._eof_sent = False
        # After end_receiving: the kernel was told already (once is enough).
        self._read_ended = False
        # Whether Trio's I/O manager may know the socket (then it must hear of its closing).
        self._waited_in_trio = hub is None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = 65536
        elif max_bytes < 1:
            await trio.lowlevel.checkpoint()
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this stream was closed")
        self._receiving = True
        try:
            if self._drained:
                self._waiting = True
                hub = self._hub
                if hub is not None:  # (inlined hub.wait_readable: this is the hot path)
                    abort = hub.arm(self._fd)
                    if abort is None:
                        await trio.lowlevel.checkpoint()
                    else:
                        await trio.lowlevel.wait_task_rescheduled(abort)
                else:
                    await trio.lowlevel.wait_readable(self.socket)
                self._waiting = False
            else:
                # The last recv filled the whole buffer, so more is probably waiting: take it
                # without asking epoll, but still let everybody else run first.
                await trio.lowlevel.checkpoint()
            while True:
                try:
                    data = self.socket.recv(max_bytes)
                except BlockingIOError:
                    # Readable, yet nothing to read (a stale or raced wakeup): wait again.
                    self._waiting = True
                    await self._wait_readable()
                    self._waiting = False
                    continue
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError("this stream was closed") from None
                    raise _translate(exc) from exc
                self._drained = len(data) < max_bytes
                return data
        finally:
            self._receiving = False
            self._waiting = False

    async def splice_some(self, splicer: Splicer, max_bytes: int) -> int | bytes:
        """Like :meth:`receive_some`, but the bytes go straight into the output when they can
        (``--raw`` to a pipe, :mod:`trio_echo.output.splice`): how many were
        spliced, or the bytes received as usual when they could not go now (the output queue
        busy, stdout full); ``b""`` at the end of the stream.

        The same contract as ``receive_some``: one checkpoint per call, the same waits (so
        :meth:`end_receiving` ends it alike), errors translated alike."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this stream was closed")
        self._receiving = True
        try:
            if self._drained:
                self._waiting = True
                await self._wait_readable()
                self._waiting = False
            else:
                await trio.lowlevel.checkpoint()
            while True:
                try:
                    moved = splicer.move(self._fd, max_bytes)
                    if moved is None:
                        data = self.socket.recv(max_bytes)
                    elif moved == WOULD_BLOCK:
                        # The socket is empty (the peek raises BlockingIOError: wait for the
                        # client, below), or stdout is full: wait for stdout, the client's
                        # bytes left in its socket (the backpressure).
                        self.socket.recv(1, socket.MSG_PEEK)
                        await splicer.wait_for_room()
                        continue
                    else:
                        # Not "drained" after a short splice: stdout may have taken less than
                        # was waiting, and the hub is edge-triggered (see receive_some).
                        self._drained = False
                        return moved if moved else b""
                except BlockingIOError:
                    self._waiting = True
                    await self._wait_readable()
                    self._waiting = False
                    continue
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError("this stream was closed") from None
                    raise _translate(exc) from exc
                self._drained = len(data) < max_bytes
                return data
        finally:
            self._receiving = False
            self._waiting = False

    async def _wait_readable(self) -> None:
        if self._hub is not None:
            await self._hub.wait_readable(self._fd)
        else:
            await trio.lowlevel.wait_readable(self.socket)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed or self._eof_sent:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this stream was closed")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            sock = self.socket
            sent = 0
            try:
                sent = sock.send(data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _translate(exc) from exc
            if sent < len(data):
                # The kernel's buffer is full: wait for room, through Trio.
                view = memoryview(data).cast("B")
                self._waited_in_trio = True
                while sent < len(view):
                    await trio.lowlevel.wait_writable(sock)
                    try:
                        sent += sock.send(view[sent:])
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if self._closed:
                            raise trio.ClosedResourceError("this stream was closed") from None
                        raise _translate(exc) from exc
                return  # waiting for room was the schedule point
            # The schedule point Trio's contract asks of every send_all; cancel-shielded, as
            # in trio.socket, because the data is already on its way.
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def send_some_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the kernel's buffer takes now, without waiting: how many bytes it took
        (0 when the buffer is full).  Raises like :meth:`send_all`.

        Trio's ``*_nowait`` idiom (``MemorySendChannel.send_nowait``,
        ``CapacityLimiter.acquire_nowait``): synchronous, so never a checkpoint.  It exists for
        the echo: a handler that receives (one checkpoint) then echoes with ``send_all`` would
        take a second scheduler trip per request for nothing, about a fifth of the echo
        benchmark's rate (docs/performance.md).  The handler calls it where a stream has it,
        and ``send_all`` for the rest; its loop still checkpoints once per pass, so fairness
        and cancellation stay as Trio promises."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("this stream was closed")
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _translate(exc) from exc

    async def _refuse_to_send(self) -> None:
        """What Trio's streams do when a send-side method cannot run: ``BusyResourceError`` at
        once if another task is sending, ``ClosedResourceError`` after a checkpoint once
        closed.  (``receive_some`` and ``send_all`` check the same inline: the hot path.)"""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this stream was closed")

    async def wait_send_all_might_not_block(self) -> None:
        await self._refuse_to_send()
        self._sending = True
        try:
            self._waited_in_trio = True
            await trio.lowlevel.wait_writable(self.socket)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        await self._refuse_to_send()
        await trio.lowlevel.checkpoint()
        self._eof_sent = True
        # ENOTCONN: the peer is already gone; the write side is closed either way.
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise _translate(exc) from exc

    async def aclose(self) -> None:
        """Close at once, without waiting for anything, then checkpoint, as Trio asks of every
        ``aclose``.

        One exception, for a stream that is closed already: in a scope that is cancelled
        already, there is nothing left to do, and it returns at once.  That is what
        ``trio.serve_listeners`` does after every handler (``trio.aclose_forcefully``:
        ``aclose`` in a cancelled scope), and raising ``Cancelled`` there only to catch it
        again costs two scheduler trips, a cancel scope and an exception per connection,
        about a third of the time it takes to end ten thousand connections
        (docs/performance.md).  The handler closes its stream first, with a plain
        checkpoint."""
        if self._closed and trio.current_effective_deadline() == -math.inf:
            return
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the socket now; tasks waiting on it wake with ``ClosedResourceError``.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._hub is not None:
            self._hub.forget(self._fd)
        if self._waited_in_trio or self._hub is None:
            trio.lowlevel.notify_closing(self.socket)
        self.socket.close()

    def end_receiving(self) -> bool:
        """Make receiving end as if the client had finished sending; True if a
        ``receive_some`` waiting now will therefore return by itself (else the caller must
        cancel it).

        The kernel marks the socket readable at end of stream: the waiting task wakes like
        for any data, reads what is left, then ``b""``.  Much cheaper than a cancellation
        when ten thousand handlers end at once.  With the hub, the waiting task is woken at
        once rather than through the epoll (:meth:`ReadinessHub.end`).  Calling it again is
        cheap (no system call): it only says whether receiving is still waiting, which is
        what the end of the grace period asks of a handler that has not ended yet."""
        if self._closed:
            return False
        if not self._read_ended:
            try:
                self.socket.shutdown(socket.SHUT_RD)
            except OSError:  # the client already reset the connection
                return False
            self._read_ended = True
            if self._hub is not None:
                self._hub.end(self._fd)
        return self._waiting
