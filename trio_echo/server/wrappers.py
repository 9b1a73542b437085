"""Features as Trio streams wrapped around a client's stream, each used only where it is on.

A connection without ``--max-bytes``, ``--max-connections`` or a PROXY header's extra bytes is
served on its own stream, without a layer in between: a feature that is off costs nothing.

* :class:`LimitedStream`: ``--max-bytes``;
* :class:`PrefixedStream`: bytes that arrived with a PROXY protocol header, handed back first;
* :class:`SlotStream`: holds one ``--max-connections`` slot until it is closed.

Every wrapper passes :meth:`end_receiving` through (see :mod:`trio_echo.server.shutdown`).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["LimitedStream", "PrefixedStream", "SlotStream", "end_receiving", "plain_bytes"]


def plain_bytes(data: bytes | bytearray) -> bytes:
    """The Stream ABC allows ``receive_some`` to return a bytearray; the output path wants
    bytes."""
    return data if isinstance(data, bytes) else bytes(data)


def end_receiving(stream: trio.abc.Stream) -> bool:
    """Make ``stream`` end as if its client had finished sending, where it can (our
    :class:`~trio_echo.server.stream.LeanSocketStream` and the wrappers around it); True if a
    ``receive_some`` waiting on it will therefore return by itself."""
    end = getattr(stream, "end_receiving", None)
    return bool(end()) if end is not None else False


class _Wrapper(trio.abc.Stream):
    """A stream that changes only how ``inner`` receives (or closes)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return plain_bytes(await self.inner.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def end_receiving(self) -> bool:
        return end_receiving(self.inner)

    @property
    def send_some_nowait(self) -> Callable[[bytes], int] | None:
        """The inner stream's :meth:`~trio_echo.server.stream.LeanSocketStream.send_some_nowait`
        where it has one (wrappers change receiving, not sending)."""
        send: Callable[[bytes], int] | None = getattr(self.inner, "send_some_nowait", None)
        return send

    @property
    def socket(self) -> object:
        """The kernel socket underneath, if any (for the client's address)."""
        return getattr(self.inner, "socket", None)

    @property
    def peer(self) -> object:
        """The client's address as the inner stream knows it, if it does."""
        return getattr(self.inner, "peer", None)


class LimitedStream(_Wrapper):
    """``--max-bytes``: a client may send at most ``limit`` bytes; the next one ends the
    stream, and :attr:`exceeded` says why.

    Never reads past the limit (it asks for at most one byte more than is left, to tell "sent
    exactly the limit, then closed" from "sent more"), so exactly ``limit`` bytes are printed
    and echoed.  One subtraction and one comparison per receive.
    """

    def __init__(self, inner: trio.abc.Stream, limit: int) -> None:
        super().__init__(inner)
        self.remaining = limit
        self.exceeded = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.exceeded:
            await trio.lowlevel.checkpoint()
            return b""
        remaining = self.remaining
        wanted = remaining + 1 if max_bytes is None else min(max_bytes, remaining + 1)
        data = plain_bytes(await self.inner.receive_some(wanted))
        if len(data) > remaining:
            self.exceeded = True
            data = data[:remaining]
        self.remaining = remaining - len(data)
        return data


class PrefixedStream(_Wrapper):
    """A stream whose first bytes were already received (with a PROXY protocol header):
    ``receive_some`` returns them first, then reads ``inner``; a TLS handshake after the header
    reads the ClientHello bytes that arrived with it the same way."""

    def __init__(self, inner: trio.abc.Stream, pending: bytes) -> None:
        super().__init__(inner)
        self._pending = pending

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        pending = self._pending
        if not pending:
            return plain_bytes(await self.inner.receive_some(max_bytes))
        await trio.lowlevel.checkpoint()
        size = len(pending) if max_bytes is None else max_bytes
        self._pending = pending[size:]
        return pending[:size]


class SlotStream(_Wrapper):
    """A client's stream that holds one ``--max-connections`` slot of ``limiter`` until it is
    closed (see :class:`~trio_echo.server.listener.LimitedListener`)."""

    def __init__(self, inner: trio.abc.Stream, limiter: trio.CapacityLimiter) -> None:
        super().__init__(inner)
        self._limiter: trio.CapacityLimiter | None = limiter

    async def aclose(self) -> None:
        limiter, self._limiter = self._limiter, None
        try:
            await self.inner.aclose()
        finally:
            if limiter is not None:
                limiter.release_on_behalf_of(self)
