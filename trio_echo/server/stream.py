"""How a handler reads and writes one client: a lean path for kernel sockets, and any Trio stream.

Why not simply ``trio.SocketStream``: profiling the echo benchmark (docs/performance.md) showed
that a request/response on a ``SocketStream`` costs three trips through Trio's scheduler --
``receive_some`` and ``send_all`` each end in a ``cancel_shielded_checkpoint`` even when the
syscall succeeded at once, and the next ``receive_some`` first tries ``recv``, fails with
``EAGAIN`` (a raised and caught exception), and only then waits.  :class:`SocketTransport` does
the same work with *one* trip: it waits for readability first whenever the previous ``recv``
came back short (the kernel buffer was emptied, so trying again would only fail), and otherwise
takes one plain checkpoint.  Either way every ``receive`` is still exactly one checkpoint, so
cancellation and fairness behave as Trio promises: a client that floods us yields once per
receive, like everybody else.  ``send`` writes directly and only waits when the kernel's send
buffer is full.

Readability comes from the server's :class:`~trio_echo.server.hub.ReadinessHub` (one persistent,
edge-triggered registration per socket instead of Trio's ``epoll_ctl`` per wait), or from Trio's
``wait_readable`` when there is no hub; a full send buffer is waited out with Trio's
``wait_writable``.  The socket stays a plain non-blocking ``socket.socket``.

:class:`StreamTransport` adapts any ``trio.abc.Stream`` (in-memory streams in the tests, or the
listeners an embedding application passes to :func:`trio_echo.server.serve.serve`);
:class:`TLSTransport` is one over a ``trio.SSLStream`` that ends its TLS politely.  TLS goes
through Trio's streams on purpose: encryption costs far more than the scheduler trips the lean
path saves.

:class:`LimitedTransport` wraps either for ``--max-bytes``, so that the limit costs nothing at
all when it is not set.  Likewise :class:`ReplayTransport` (and :class:`PrefixedStream`, for
TLS) hands back the client's first bytes that arrived with a ``--proxy-protocol`` header, only
on connections where that happened.
"""

from __future__ import annotations

import socket
from typing import Protocol

import trio

from trio_echo.net.tls import CLOSE_TIMEOUT
from trio_echo.server.hub import ReadinessHub

__all__ = [
    "LimitedTransport",
    "PrefixedStream",
    "ReplayTransport",
    "SocketTransport",
    "StreamTransport",
    "TLSTransport",
    "Transport",
]


class Transport(Protocol):
    """The three things a connection handler does with its client."""

    async def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes, ``b""`` at end of stream; always a checkpoint.
        Raises ``trio.BrokenResourceError`` when the connection is lost."""
        ...

    async def send(self, data: bytes) -> None:
        """Send all of ``data``; raises ``trio.BrokenResourceError`` when the connection is
        lost."""
        ...

    async def aclose(self) -> None:
        """Close at once, without waiting for anything (safe in a cancelled ``finally``)."""
        ...

    def end_receiving(self) -> bool:
        """Make receiving end as if the client had finished sending; True if a ``receive``
        that is waiting now will therefore return by itself (else the caller must cancel)."""
        ...


def _lost(exc: OSError) -> trio.BrokenResourceError:
    # The handler reports the cause's strerror ("connection reset by peer").
    broken = trio.BrokenResourceError(f"socket connection broken: {exc}")
    broken.__cause__ = exc
    return broken


class SocketTransport:
    """A connected, non-blocking kernel socket, read and written with as few scheduler trips
    as Trio's guarantees allow (see the module docstring)."""

    __slots__ = ("_drained", "_fd", "_hub", "_waited_in_trio", "_waiting", "sock")

    def __init__(self, sock: socket.socket, hub: ReadinessHub | None = None) -> None:
        sock.setblocking(False)
        # Like trio.SocketStream: small writes (an echo, a prompt) go out at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._fd = sock.fileno()
        # With a hub, readability comes from its persistent registration (no epoll_ctl per
        # wait); without, from Trio's own wait_readable.
        self._hub = hub
        if hub is not None:
            hub.register(self._fd)
        # A new client has most likely not sent anything yet: wait before the first recv.
        self._drained = True
        # True while receive() waits for the socket to become readable.
        self._waiting = False
        # Whether Trio's I/O manager may know the socket (then it must hear of its closing).
        self._waited_in_trio = hub is None

    async def receive(self, max_bytes: int) -> bytes:
        sock = self.sock
        if self._drained:
            # No try/finally to reset the flag: if the wait raises, the handler is ending.
            self._waiting = True
            if self._hub is not None:  # (inlined _wait_readable: this is the hot path)
                await self._hub.wait_readable(self._fd)
            else:
                await trio.lowlevel.wait_readable(sock)
            self._waiting = False
        else:
            # The last recv filled the whole buffer, so more is probably waiting: take it
            # without asking epoll, but still let everybody else run first.
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                # Readable, yet nothing to read (a stale or raced wakeup): wait again.
                await self._wait_readable()
                continue
            except OSError as exc:
                raise _lost(exc) from exc
            self._drained = len(data) < max_bytes
            return data

    async def _wait_readable(self) -> None:
        if self._hub is not None:
            await self._hub.wait_readable(self._fd)
        else:
            await trio.lowlevel.wait_readable(self.sock)

    async def send(self, data: bytes) -> None:
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _lost(exc) from exc
        if sent == len(data):
            # The common case: the kernel took it all; no checkpoint needed, because the
            # handler's next receive is one.
            return
        view = memoryview(data)
        self._waited_in_trio = True
        while sent < len(view):
            await trio.lowlevel.wait_writable(sock)
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _lost(exc) from exc

    async def aclose(self) -> None:
        # Wake (with ClosedResourceError) any task still waiting on the socket, then close.
        if self._hub is not None:
            self._hub.forget(self._fd)
        if self._waited_in_trio:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    def end_receiving(self) -> bool:
        # The kernel marks the socket readable at end of stream: the waiting task wakes
        # through epoll like for any data, reads what is left, then b"".  Much cheaper than a
        # cancellation when ten thousand handlers end at once.
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:  # the client already reset the connection
            return False
        return self._waiting


class StreamTransport:
    """Any ``trio.abc.Stream``, used as it comes."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        # The Stream ABC allows a bytearray; the output path wants bytes.
        return data if isinstance(data, bytes) else bytes(data)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def end_receiving(self) -> bool:
        return False


class TLSTransport(StreamTransport):
    """A ``trio.SSLStream`` whose handshake is done: closing it sends a ``close_notify`` first,
    so that the client can tell our end of the stream from an attacker's truncation."""

    __slots__ = ()

    async def aclose(self) -> None:
        # Shielded and bounded: this runs in cancelled finally blocks too, and a client that
        # does not read must not hold us (SSLStream.aclose closes the socket when cut short).
        with trio.CancelScope(deadline=trio.current_time() + CLOSE_TIMEOUT, shield=True):
            try:
                await self.stream.aclose()
            except Exception:  # whatever went wrong, the socket must close
                await trio.aclose_forcefully(self.stream)


class _WrappedTransport:
    """A transport that changes only how ``inner`` receives: sending, closing and ending the
    receiving side are ``inner``'s own."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    async def send(self, data: bytes) -> None:
        await self._inner.send(data)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def end_receiving(self) -> bool:
        # A wrapper's own pending bytes (ReplayTransport) are returned without waiting; after
        # them comes the inner end.
        return self._inner.end_receiving()


class LimitedTransport(_WrappedTransport):
    """``--max-bytes``: a client may send at most ``limit`` bytes; the next one ends the
    stream, and :attr:`exceeded` says why.

    Never reads past the limit (it asks for at most one byte more than is left, to tell "sent
    exactly the limit, then closed" from "sent more"), so exactly ``limit`` bytes are printed
    and echoed.  One subtraction and one comparison per receive.
    """

    __slots__ = ("exceeded", "remaining")

    def __init__(self, inner: Transport, limit: int) -> None:
        super().__init__(inner)
        self.remaining = limit
        self.exceeded = False

    async def receive(self, max_bytes: int) -> bytes:
        if self.exceeded:
            await trio.lowlevel.checkpoint()
            return b""
        remaining = self.remaining
        data = await self._inner.receive(min(max_bytes, remaining + 1))
        if len(data) > remaining:
            self.exceeded = True
            data = data[:remaining]
        self.remaining = remaining - len(data)
        return data


class ReplayTransport(_WrappedTransport):
    """A transport whose first bytes were already received (with a PROXY protocol header):
    ``receive`` returns them first, then reads ``inner``.

    Only used when such bytes exist, so a connection without them pays nothing.
    """

    __slots__ = ("_pending",)

    def __init__(self, inner: Transport, pending: bytes) -> None:
        super().__init__(inner)
        self._pending = pending

    async def receive(self, max_bytes: int) -> bytes:
        pending = self._pending
        if not pending:
            return await self._inner.receive(max_bytes)
        await trio.lowlevel.checkpoint()
        self._pending = pending[max_bytes:]
        return pending[:max_bytes]


class PrefixedStream(trio.abc.Stream):
    """A Trio stream whose first bytes were already received: the TLS handshake after a PROXY
    protocol header reads the ClientHello bytes that arrived with the header first."""

    def __init__(self, inner: trio.abc.Stream, pending: bytes) -> None:
        self._inner = inner
        self._pending = pending

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        pending = self._pending
        if not pending:
            data = await self._inner.receive_some(max_bytes)
            return data if isinstance(data, bytes) else bytes(data)
        await trio.lowlevel.checkpoint()
        size = len(pending) if max_bytes is None else max_bytes
        self._pending = pending[size:]
        return pending[:size]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()
