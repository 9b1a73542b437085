"""Trio listeners: :class:`LeanSocketListener` accepts from a listening socket in batches, and
two wrappers add what any listener may need (``--allow``/``--deny``, ``--max-connections``).

Everything here implements ``trio.abc.Listener``, so :func:`trio.serve_listeners` runs them
like Trio's own, and a listener an embedding application passes in gets the same features.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time

import trio

from trio_echo.logs import LOGGER
from trio_echo.net.access import AccessPolicy
from trio_echo.net.bind import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY_SLEEP
from trio_echo.net.keepalive import Keepalive
from trio_echo.net.peercred import peer_name as unix_peer_name
from trio_echo.output.format import format_peer
from trio_echo.server.hub import ReadinessHub
from trio_echo.server.stream import LeanSocketStream
from trio_echo.server.wrappers import SlotStream
from trio_echo.stats import ServerStats

__all__ = [
    "ACCEPT_BATCH",
    "IGNORED_ACCEPT_ERRNOS",
    "AcceptEvents",
    "AccessListener",
    "LeanSocketListener",
    "LimitedListener",
    "WrappingListener",
    "peer_address",
]

# Accept at most this many clients in a row before letting the other tasks run.  Trio's own
# SocketListener.accept() goes through the scheduler after *every* accept, and each of those
# trips runs every busy handler once: with 100 busy clients, a storm of 1,000 new ones took
# ~0.7 s.  Draining the listen backlog in batches makes that ~10x faster, while a batch
# (~2 ms of accept() calls) is short enough not to stall the clients already connected.
ACCEPT_BATCH = 128

# Log running out of file descriptors at most this often: while it lasts, accept fails ten
# times a second, and one line a second says everything those would.
CAPACITY_LOG_INTERVAL = 1.0

# accept() errors that concern only the one client that was being accepted (it reset the
# connection while waiting in the backlog, a firewall rule refused it, it timed out, ...):
# skip it and go on.  Trio's SocketListener ignores exactly these (tests/test_listener.py
# checks that the lists agree): ending the whole server for one client's trouble is wrong.
IGNORED_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)


def peer_address(stream: trio.abc.Stream) -> object:
    """The client's address (``"memory"`` for an in-memory stream, as tests use)."""
    known = getattr(stream, "peer", None)
    if known is not None:
        return known
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "memory"
    try:
        return sock.getpeername()
    except OSError:
        # The client already reset the connection between accept and here.
        return "unknown"


class AcceptEvents:
    """What accepting meets that concerns the whole server, said and counted once for all of
    its listeners: clients refused by ``--allow/--deny`` (a line each, ``stats.denied``), and
    the out-of-descriptors line, at most once per ``CAPACITY_LOG_INTERVAL`` -- every
    listener (IPv4 and IPv6, say) fails at once when the process is out of descriptors --
    with every pause counted (``stats.accept_pauses``)."""

    def __init__(self, stats: ServerStats | None = None) -> None:
        self._stats = ServerStats() if stats is None else stats
        self._logged = -math.inf

    def shortage(self, exc: OSError) -> None:
        """Accepting pauses for lack of descriptors (or memory)."""
        self._stats.accept_pauses += 1
        now = time.monotonic()
        if now - self._logged >= CAPACITY_LOG_INTERVAL:
            self._logged = now
            LOGGER.error(
                "accept failed: %s (%s); pausing accepts, %d clients connected",
                errno.errorcode.get(exc.errno or 0, "?"),
                os.strerror(exc.errno or 0),
                self._stats.active,
            )

    def refused(self, address: object, why: str) -> None:
        """``refused 127.0.0.1:53422 (--deny 127.0.0.0/8)``: a client closed right after
        accept."""
        self._stats.denied += 1
        LOGGER.info("refused %s (%s)", format_peer(address), why)


class LeanSocketListener(trio.abc.Listener[LeanSocketStream]):
    """A listening kernel socket whose ``accept`` drains the backlog in batches (see
    ``ACCEPT_BATCH``) and hands out :class:`LeanSocketStream` s.

    Like the stream's ``send_all``, ``accept`` is always a cancel point; it gives the other
    tasks a turn whenever it waits for a client and after every ``ACCEPT_BATCH`` clients in a
    row, rather than after each.  Clients refused by ``access`` are closed here, before they
    cost a task.  Running out of descriptors pauses accepting (``ACCEPT_RETRY_SLEEP``) with a
    log line at most once a second; an error that concerns one client costs only that client.

    TCP and Unix sockets alike: a Unix socket's client is named by the kernel's credentials of
    its process (``unix:pid=1234,uid=1000,gid=1000``, one ``getsockopt`` per accept), since it
    has no address.  ``keepalive`` is set on every accepted TCP socket where it is given (only
    where they do not inherit it from the listening socket: trio_echo.net.keepalive).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        hub: ReadinessHub | None = None,
        access: AccessPolicy | None = None,
        events: AcceptEvents | None = None,
        keepalive: Keepalive | None = None,
    ) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._hub = hub
        self._access = access
        # --keepalive, where accepted sockets do not inherit it from this one.
        self._keepalive = keepalive
        # A Unix socket's clients are named by their credentials (trio_echo.net.unix).
        self._unix = sock.family == getattr(socket, "AF_UNIX", None)
        # Shared by the server's listeners (see AcceptEvents).
        self._events = events or AcceptEvents()
        self._in_a_row = 0

    async def accept(self) -> LeanSocketStream:
        listening, access, unix = self.socket, self._access, self._unix
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._in_a_row >= ACCEPT_BATCH:
                self._in_a_row = 0
                await trio.lowlevel.checkpoint()
            try:
                client, address = listening.accept()
            except BlockingIOError:
                self._in_a_row = 0
                await trio.lowlevel.wait_readable(listening)
                continue
            except OSError as exc:
                self._in_a_row = 0
                if exc.errno == errno.EBADF and listening.fileno() == -1:
                    raise trio.ClosedResourceError("the listener was closed") from None
                await self._accept_failed(exc)
                continue
            self._in_a_row += 1
            if unix:
                address = unix_peer_name(client, address)
            if access is not None and (why := access.refusal(address)) is not None:
                client.close()
                self._events.refused(address, why)
                continue
            try:
                if self._keepalive is not None and not unix:
                    self._keepalive.apply(client)
                return LeanSocketStream(client, self._hub, address)
            except OSError as exc:
                # Setting the client up failed (epoll's ENOSPC, a socket option the peer's
                # reset made fail): that costs this client, never the accept loop.
                client.close()
                LOGGER.warning("could not set up %s: %s", format_peer(address), exc)

    async def _accept_failed(self, exc: OSError) -> None:
        """Out of file descriptors (or memory): pause accepting, log it at most once a
        second.  A failure of the one client being accepted is skipped; anything else is a
        bug that must not be hidden."""
        if exc.errno in IGNORED_ACCEPT_ERRNOS:
            await trio.lowlevel.checkpoint()
            return
        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
            raise exc
        self._events.shortage(exc)
        await trio.sleep(ACCEPT_RETRY_SLEEP)

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self.socket)
        self.socket.close()
        await trio.lowlevel.checkpoint()


class WrappingListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener that changes only how ``inner`` accepts: closing and the bound socket are
    ``inner``'s own."""

    def __init__(self, inner: trio.abc.Listener[trio.abc.Stream]) -> None:
        self.inner = inner

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def socket(self) -> object:
        """The inner listener's socket, if any (for the bound address)."""
        return getattr(self.inner, "socket", None)


class AccessListener(WrappingListener):
    """``--allow``/``--deny`` for any listener (an embedding application's, Trio's own):
    a refused client is closed before it reaches a handler."""

    def __init__(
        self,
        inner: trio.abc.Listener[trio.abc.Stream],
        access: AccessPolicy,
        events: AcceptEvents | None = None,
    ) -> None:
        super().__init__(inner)
        self._access = access
        self._events = events or AcceptEvents()

    async def accept(self) -> trio.abc.Stream:
        while True:
            stream = await self.inner.accept()
            address = peer_address(stream)
            why = self._access.refusal(address)
            if why is None:
                return stream
            await trio.aclose_forcefully(stream)
            self._events.refused(address, why)


class LimitedListener(WrappingListener):
    """``--max-connections``: ``accept`` waits while every slot of ``limiter`` is taken, and
    each stream it returns holds a slot until it is closed.

    We stop *accepting* rather than accept and close: clients beyond the limit wait in the
    kernel's listen backlog and are served, in order, as slots free up.  A slot is not held
    while ``accept`` waits (with two listeners, IPv4 and IPv6, an idle one would otherwise sit
    on it); if another listener took the last slot meanwhile, the client just accepted is held,
    unread, until one frees.
    """

    def __init__(
        self, inner: trio.abc.Listener[trio.abc.Stream], limiter: trio.CapacityLimiter
    ) -> None:
        super().__init__(inner)
        self._limiter = limiter

    async def accept(self) -> trio.abc.Stream:
        limiter = self._limiter
        if limiter.available_tokens < 1:
            async with limiter:
                pass  # wait for a free slot, without taking it while accept() waits
        stream = await self.inner.accept()
        slot = SlotStream(stream, limiter)
        try:
            # At once, in the common case: no scheduler trip to spoil the inner batching.
            limiter.acquire_on_behalf_of_nowait(slot)
        except trio.WouldBlock:
            try:
                await limiter.acquire_on_behalf_of(slot)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return slot
