"""The Trio server: listeners, the accept loop, one handler task per connection, and the
graceful shutdown that cancel scopes make possible.

Structure (after hypercorn's trio runner)::

    serve()
    └── services nursery         <- the readiness hub (readiness.py) lives here
        └── connections nursery  <- handle.abort() cancels it; nothing else does
            ├── accepting nursery    <- handle.shutdown() *cancels* it: the listeners close
            │   └── accept_socket_loop() per listening socket (accept_loop() per Trio listener)
            ├── close_after_grace()  <- handle.shutdown() puts the grace period's end on it
            └── serve_connection() per client

Hardening, all outside the per-request path: ``--allow``/``--deny`` are checked once per accept
(a refused client is closed there and then); a TLS client's handshake runs in its own handler
task under ``--tls-handshake-timeout`` (a slow one never holds up the accept loop), then the
client is served like any other; ``--max-bytes`` wraps the transport only when it is set.
With ``--proxy-protocol``, each handler first reads its client's PROXY header (in its own task,
under ``HEADER_TIMEOUT``), renames the connection after the header's source and serves the
bytes that came with the header as the client's first; without the flag nothing of this runs.

On shutdown, accepting stops immediately, while connected clients keep being served until they
leave or the grace period runs out; then ``close_after_grace`` ends the streams of the handlers
waiting for their clients and cancels (each through its own scope) the ones stuck elsewhere;
every handler's ``finally`` prints what it already read and closes its socket, and ``serve()``
returns the statistics.  Nothing outlives ``serve()``: no handler, no socket.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.logs import LOGGER
from trio_echo.net.access import AccessPolicy
from trio_echo.net.bind import (
    ACCEPT_CAPACITY_ERRNOS,
    ACCEPT_RETRY_SLEEP,
    adopt_sockets,
    bind_sockets,
)
from trio_echo.net.proxy_protocol import HEADER_TIMEOUT, ProxyHeader, ProxyProtocolError, parse
from trio_echo.net.tls import describe_ssl_error, server_context
from trio_echo.output.format import format_peer
from trio_echo.output.queue import OutputQueue
from trio_echo.server.hub import ReadinessHub
from trio_echo.server.stream import (
    LimitedTransport,
    PrefixedStream,
    ReplayTransport,
    SocketTransport,
    StreamTransport,
    TLSTransport,
    Transport,
)
from trio_echo.stats import ServerStats

__all__ = ["ServerHandle", "ServerStats", "serve"]

# Log running out of file descriptors at most this often: while it lasts, accept fails ten
# times a second, and one line a second says everything those would.
CAPACITY_LOG_INTERVAL = 1.0

# Accept at most this many clients in a row before letting the other tasks run.  Trio's own
# SocketListener.accept() goes through the scheduler after *every* accept, and each of those
# trips runs every busy handler once: with 100 busy clients, a storm of 1,000 new ones took
# ~0.7 s.  Draining the listen backlog in batches makes that ~10x faster, while a batch
# (~2 ms of accept() calls) is short enough not to stall the clients already connected.
ACCEPT_BATCH = 128

# At the end of the grace period, how often to look for handlers that did not end when their
# client's stream was ended (see _Server.close_after_grace).
STRAGGLER_CHECK_INTERVAL = 0.05

# accept() errors that concern only the one client that was being accepted (it reset the
# connection while waiting in the backlog, a firewall rule refused it, ...): skip it and go
# on.  The same list as trio.SocketListener's.
_IGNORED_ACCEPT_ERRNOS = frozenset(
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
    )
    if hasattr(errno, name)
)


@attrs.define(eq=False)
class ServerHandle:
    """What ``await nursery.start(serve, config)`` returns: the bound addresses and the means to
    stop the server."""

    addresses: list[tuple[object, ...]]
    stats: ServerStats
    grace: float
    _accept_scope: trio.CancelScope
    _connections_scope: trio.CancelScope
    # The closer task's scope: shutdown() puts the end of the grace period on it as a deadline.
    _grace_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _shutdown_started: trio.Event = attrs.field(factory=trio.Event)
    # Set once every accept loop has ended and closed its listening socket: from then on a new
    # client is refused by the kernel (a balancer retries it elsewhere) instead of waiting in
    # a backlog that is about to be reset.  "stopped accepting" is logged after it, not before.
    accepting_stopped: trio.Event = attrs.field(factory=trio.Event)
    stopped: trio.Event = attrs.field(factory=trio.Event)
    shutting_down: bool = False
    aborted: bool = False

    @property
    def port(self) -> int:
        """The bound port (the same on every address)."""
        port = self.addresses[0][1]
        assert isinstance(port, int)
        return port

    def shutdown(self, grace: float | None = None) -> None:
        """Start the graceful shutdown: stop accepting now, close the remaining connections once
        ``grace`` seconds (default: the configured grace period) have passed.  Idempotent; a
        later call can only shorten the grace period."""
        grace = self.grace if grace is None else grace
        self.shutting_down = True
        self._accept_scope.cancel()
        deadline = trio.current_time() + grace
        self._grace_scope.deadline = min(self._grace_scope.deadline, deadline)
        self._shutdown_started.set()

    def abort(self) -> None:
        """Close every connection now, without a grace period."""
        self.shutting_down = True
        self.aborted = True
        self._accept_scope.cancel()
        self._connections_scope.cancel()


def _address_of(stream: trio.abc.Stream) -> object:
    """The client's address (``"memory"`` for an in-memory stream, as tests use)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "memory"
    try:
        return sock.getpeername()
    except OSError:
        # The client already reset the connection between accept and here.
        return "unknown"


@attrs.define(eq=False)
class _Server:
    """The state shared by the accept loops and the handlers of one ``serve()`` call."""

    config: Config
    output: OutputQueue | None
    stats: ServerStats
    handle: ServerHandle | None = None
    # Unparked whenever a client leaves: accept loops waiting for a free slot, and the closer
    # waiting for everyone to leave, look again.
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    # Every handler's cancel scope and transport, for the end of the grace period.
    live: dict[Connection, tuple[trio.CancelScope, Transport]] = attrs.field(factory=dict)
    # True once the grace period is over and the closer is cancelling the handlers.
    closing: bool = False
    # Readability of the connection sockets, for the lean socket path.
    hub: ReadinessHub | None = None
    # --allow/--deny (None: no rules, nothing to check) and --tls-cert (None: plain TCP).
    access: AccessPolicy | None = None
    tls: ssl.SSLContext | None = None
    _capacity_logged: float = -math.inf

    # ---- accepting -------------------------------------------------------------------------

    async def wait_for_room(self) -> None:
        """Wait while ``--max-connections`` clients are being served.

        We stop *accepting* rather than accept and close: clients beyond the limit wait in the
        kernel's listen backlog and are served, in order, as slots free up.
        """
        limit = self.config.max_connections
        while limit is not None and self.stats.active >= limit:
            await self._room.park()

    async def accept_socket_loop(self, listening: socket.socket, connections: trio.Nursery) -> None:
        """Accept clients from one of our own listening sockets, in batches (see
        ``ACCEPT_BATCH``): ``accept()`` until the backlog is empty, and only then wait."""
        access, tls = self.access, self.tls
        try:
            listening.setblocking(False)
            in_a_row = 0
            while True:
                await self.wait_for_room()
                try:
                    client, address = listening.accept()
                except BlockingIOError:
                    in_a_row = 0
                    await trio.lowlevel.wait_readable(listening)
                    continue
                except OSError as exc:
                    in_a_row = 0
                    await self._accept_failed(exc)
                    continue
                if access is not None and (why := access.refusal(address)) is not None:
                    client.close()
                    _log_refused(address, why)
                elif tls is None:
                    if not self._admit(SocketTransport(client, self.hub), address, connections):
                        return
                elif not self._admit_tls(_socket_stream(client), address, connections):
                    return
                in_a_row += 1
                if in_a_row >= ACCEPT_BATCH:
                    in_a_row = 0
                    await trio.lowlevel.checkpoint()
        finally:
            trio.lowlevel.notify_closing(listening)
            listening.close()

    async def accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], connections: trio.Nursery
    ) -> None:
        """Accept clients from any Trio listener (an embedding application's, the tests'
        in-memory ones), one ``accept()`` at a time."""
        async with listener:
            while True:
                await self.wait_for_room()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    await self._accept_failed(exc)
                    continue
                try:
                    # With several listeners, each may have been waiting in accept() when the
                    # last slot was taken: that client is held (accepted, not yet read) until
                    # a slot frees.
                    await self.wait_for_room()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                address = _address_of(stream)
                if self.access is not None and (why := self.access.refusal(address)):
                    await trio.aclose_forcefully(stream)
                    _log_refused(address, why)
                elif self.tls is None:
                    if not self._admit(StreamTransport(stream), address, connections):
                        return
                elif not self._admit_tls(stream, address, connections):
                    return

    async def _accept_failed(self, exc: OSError) -> None:
        """Out of file descriptors (or memory): pause accepting, log it at most once a
        second.  A failure of the one client being accepted is skipped; anything else is a
        bug that must not be hidden."""
        if exc.errno in _IGNORED_ACCEPT_ERRNOS:
            await trio.lowlevel.checkpoint()
            return
        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
            raise exc
        self._log_capacity(exc)
        await trio.sleep(ACCEPT_RETRY_SLEEP)

    def _admit(self, transport: Transport, address: object, connections: trio.Nursery) -> bool:
        """Start the handler of a client just accepted; False (and the client closed) when it
        came too late, after shutdown began."""
        if self.handle is not None and self.handle.shutting_down:
            # accept() had already succeeded when shutdown() cancelled us: this client came
            # too late, and is closed like the rest of the listen backlog.
            connections.start_soon(transport.aclose)
            return False
        if self.config.proxy_protocol:
            conn = Connection.open(
                self.config, self.stats, address, printing=self.output is not None, announce=False
            )
            connections.start_soon(self.serve_proxied_connection, transport, conn)
            return True
        conn = Connection.open(self.config, self.stats, address, printing=self.output is not None)
        connections.start_soon(self.serve_connection, transport, conn)
        return True

    def _admit_tls(
        self, stream: trio.abc.Stream, address: object, connections: trio.Nursery
    ) -> bool:
        """:meth:`_admit` for a TLS client: its handler shakes hands first.  It is counted
        (and holds a ``--max-connections`` slot) from now on, but logged as open only once the
        handshake is done."""
        if self.handle is not None and self.handle.shutting_down:
            connections.start_soon(trio.aclose_forcefully, stream)
            return False
        conn = Connection.open(
            self.config, self.stats, address, printing=self.output is not None, announce=False
        )
        connections.start_soon(self.serve_tls_connection, stream, conn)
        return True

    def _log_capacity(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._capacity_logged >= CAPACITY_LOG_INTERVAL:
            self._capacity_logged = now
            LOGGER.error(
                "accept failed: %s (%s); pausing accepts, %d clients connected",
                errno.errorcode.get(exc.errno or 0, "?"),
                os.strerror(exc.errno or 0),
                self.stats.active,
            )

    # ---- the end of the grace period -------------------------------------------------------

    async def close_after_grace(self, handle: ServerHandle) -> None:
        """Once shutdown has begun, wait until every client has left or the grace period is
        over; then close the ones still there.

        Why not simply a deadline on the connections nursery: cancelling a nursery with
        10,000 handlers makes every one of them raise ``Cancelled`` up into the nursery, which
        gathers 10,000 exceptions into a group only to discard it: over a second (profiled in
        docs/performance.md).  Instead, a handler waiting for its client gets an end of
        stream (``shutdown(SHUT_RD)`` on its socket: no exception at all, and whatever the
        client sent before is still read and printed); only a handler busy elsewhere (stuck
        writing to a client that does not read, or waiting for stdout) is cancelled, through
        its own scope, so that it too returns normally.
        """
        with handle._grace_scope:
            await handle._shutdown_started.wait()
            while self.stats.active:
                await self._room.park()
            return
        self.closing = True
        reason = self._cancel_reason()
        while self.live:
            for conn, (scope, transport) in list(self.live.items()):
                conn.reason = reason
                if not transport.end_receiving():
                    scope.cancel()
            # Handlers woken by their end of stream finish on their own; look again shortly
            # for any that went on to block elsewhere.
            with trio.move_on_after(STRAGGLER_CHECK_INTERVAL):
                while self.live:
                    await self._room.park()

    # ---- one connection --------------------------------------------------------------------

    async def serve_proxied_connection(self, transport: Transport, conn: Connection) -> None:
        """``--proxy-protocol``: read the client's PROXY header, then serve it under the name
        the header gives (the bytes that came with the header first).

        In the client's own task, like a TLS handshake: a client that never sends its header
        holds only its own slot, until ``HEADER_TIMEOUT``.  No valid header: one ``refused``
        line, nothing on stdout, the connection closed.
        """
        read = await self._header_or_refuse(transport, conn)
        if read is not None:
            header, rest = read
            conn.announce(_rename(conn, header))
            if rest:
                transport = ReplayTransport(transport, rest)
            await self.serve_connection(transport, conn)

    async def _header_or_refuse(
        self, transport: Transport, conn: Connection
    ) -> tuple[ProxyHeader, bytes] | None:
        """The header and the bytes after it; ``None`` once a client without a valid header
        has been refused (one line) and closed."""
        # What the refused line says if the wait is cancelled from outside (an abort).
        failure: tuple[str, str] | None = ("PROXY header cut short", "")
        try:
            read = await self._proxy_header(transport.receive, transport, conn)
            failure = None
        except _NoHeader as exc:
            failure = exc.what, exc.detail
        finally:
            if failure is not None:
                self._refuse(conn, *failure)
                await transport.aclose()
        return read if failure is None else None

    async def _proxy_header(
        self, receive: Callable[[int], Awaitable[bytes]], transport: Transport, conn: Connection
    ) -> tuple[ProxyHeader, bytes]:
        """The header and the bytes received after it; raises :class:`_NoHeader` (what went
        wrong and why, for the ``refused`` line).  Registered as live meanwhile, so that the
        end of the grace period ends the wait like any handler's."""
        try:
            with trio.CancelScope() as scope:
                self.live[conn] = (scope, transport)
                with trio.move_on_after(HEADER_TIMEOUT):
                    data = b""
                    while (header := parse(data)) is None:
                        chunk = await receive(self.config.receive_size)
                        if not chunk:
                            why = self._cancel_reason() if self.closing else "closed by the client"
                            raise _NoHeader("no PROXY header", why)
                        data += chunk
                    return header, data[header.length :]
                raise _NoHeader("no PROXY header", f"timeout {HEADER_TIMEOUT:g} s")
            raise _NoHeader("PROXY header cut short", self._cancel_reason())
        except ProxyProtocolError as exc:
            raise _NoHeader("bad PROXY header", str(exc)) from None
        except trio.BrokenResourceError as exc:
            raise _NoHeader("no PROXY header", f"connection lost ({_cause(exc)})") from None
        finally:
            self.live.pop(conn, None)

    def _refuse(self, conn: Connection, what: str, detail: str) -> None:
        """Count out a client that was never served, with its one ``refused`` line."""
        self.live.pop(conn, None)
        conn.abandon(what, detail or self._cancel_reason())
        self._room.unpark_all()

    async def serve_tls_connection(self, stream: trio.abc.Stream, conn: Connection) -> None:
        """Shake hands with a TLS client (under ``--tls-handshake-timeout``), then serve it
        like any other.

        Here, in the client's own task, and never in the accept loop: a client that is slow to
        shake hands -- or never does -- holds its own slot until the timeout, not the accepting
        of everybody else.  A failed handshake is one ``refused`` line and nothing else.
        """
        assert self.tls is not None
        via = ""
        if self.config.proxy_protocol:
            # The balancer's header comes first, in the clear; the TLS bytes after it.
            read = await self._header_or_refuse(StreamTransport(stream), conn)
            if read is None:
                return
            header, rest = read
            via = f", {_rename(conn, header)}"
            if rest:
                stream = PrefixedStream(stream, rest)
        tls = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=False)
        transport = TLSTransport(tls)
        # What the refused line says if the handshake is cancelled from outside (an abort).
        failure: tuple[str, str] | None = ("TLS handshake cut short", "")
        try:
            failure = await self._handshake(tls, transport, conn)
        finally:
            if failure is not None:
                what, detail = failure
                self.live.pop(conn, None)
                conn.abandon(what, detail or self._cancel_reason())
                self._room.unpark_all()
                await trio.aclose_forcefully(tls)
        if failure is None:
            conn.announce(f"{tls.version() or 'TLS'}{via}")
            await self.serve_connection(transport, conn)

    async def _handshake(
        self, tls: trio.SSLStream[trio.abc.Stream], transport: Transport, conn: Connection
    ) -> tuple[str, str] | None:
        """``None`` once the handshake is done, else what went wrong and why, for the
        ``refused`` line."""
        timeout = self.config.tls_handshake_timeout
        with trio.CancelScope() as scope:
            # Like a served client: the end of the grace period cancels it (end_receiving is
            # False for a TLS transport).
            self.live[conn] = (scope, transport)
            with trio.move_on_after(timeout):
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    return "TLS handshake failed", _handshake_problem(exc)
                except Exception as exc:
                    LOGGER.warning(
                        "connection #%d %s: TLS handshake error: %r", conn.conn_id, conn.peer, exc
                    )
                    return "TLS handshake failed", f"error: {exc!r}"
                return None
            return "no TLS handshake", f"--tls-handshake-timeout {timeout:g}"
        return "TLS handshake cut short", self._cancel_reason()

    async def serve_connection(self, transport: Transport, conn: Connection) -> None:
        """Read one client until it leaves; print (and echo) what it sends.

        Every error is contained here: one client's reset or garbage ends only its own task.
        The ``finally`` always prints what was already read and closes the socket.

        The loop is the server's hot path (one pass per request in the echo benchmark): one
        checkpoint per pass (the receive), nothing awaited that has nothing to do.
        """
        config, output = self.config, self.output
        limited: LimitedTransport | None = None
        if config.max_bytes is not None:
            transport = limited = LimitedTransport(transport, config.max_bytes)
        receive, send, feed = transport.receive, transport.send, conn.feed
        size, echo, idle = config.receive_size, config.echo, config.idle_timeout
        try:
            with trio.CancelScope() as scope:
                self.live[conn] = (scope, transport)
                if output is not None:
                    await output.put(conn.opened())
                while True:
                    if idle is not None:
                        scope.deadline = trio.current_time() + idle
                        data = await receive(size)
                        # Time spent waiting for stdout or for the client to take its echo
                        # is not the client being idle.
                        scope.deadline = math.inf
                    else:
                        data = await receive(size)
                    if not data:
                        break
                    printed = feed(data)
                    if printed and output is not None:
                        await output.put(printed)
                    if echo:
                        await send(data)
            if scope.cancelled_caught and not self.closing:
                conn.reason = f"idle for {idle:g} s"
            elif limited is not None and limited.exceeded:
                conn.reason = f"sent more than --max-bytes {config.max_bytes}"
        except trio.BrokenResourceError as exc:
            conn.reason = f"connection lost ({_cause(exc)})"
        except trio.Cancelled:
            conn.reason = self._cancel_reason()
            raise
        except Exception as exc:
            conn.reason = f"error: {exc!r}"
            LOGGER.warning("connection #%d %s failed: %r", conn.conn_id, conn.peer, exc)
        finally:
            self.live.pop(conn, None)
            last = conn.finish()
            if output is not None:
                # put_nowait: this must happen even while the handler is being cancelled.
                output.put_nowait(last)
            self._room.unpark_all()
            await transport.aclose()

    def _cancel_reason(self) -> str:
        handle = self.handle
        if handle is not None and handle.aborted:
            return "server aborted"
        if handle is not None and handle.shutting_down:
            return "grace period over"
        return "server stopped"


class _NoHeader(Exception):
    """A ``--proxy-protocol`` client without a valid header: what and why, for its line."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what, detail)
        self.what = what
        self.detail = detail


def _rename(conn: Connection, header: ProxyHeader) -> str:
    """Name the client after the header's source; return what its ``open`` line adds:
    ``open #3 203.0.113.7:51234 (via 127.0.0.1:53422)``."""
    if header.source is None:
        return "PROXY LOCAL" if header.local else "PROXY without an address"
    balancer = conn.peer
    conn.rename(header.source)
    return f"via {balancer}"


def _socket_stream(client: socket.socket) -> trio.SocketStream:
    """A kernel socket as a Trio stream, for the TLS path."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(client))


def _log_refused(address: object, why: str) -> None:
    """``refused 127.0.0.1:53422 (--deny 127.0.0.0/8)``: a client closed right after accept."""
    LOGGER.info("refused %s (%s)", format_peer(address), why)


def _handshake_problem(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return describe_ssl_error(cause, handshake=True)
    if isinstance(cause, OSError):
        return (cause.strerror or str(cause)).lower()
    # The client closed the connection before its handshake was done.
    return str(exc) or "closed by the client"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return describe_ssl_error(cause, handshake=False)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__


async def serve(
    config: Config,
    output: OutputQueue | None = None,
    *,
    listeners: list[trio.abc.Listener[trio.abc.Stream]] | None = None,
    sockets: list[socket.socket] | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> ServerStats:
    """Serve until shut down; use as ``handle = await nursery.start(serve, config, output)``.

    ``output`` is the queue of the stdout writer (``None`` prints nothing, e.g. an echo-only
    embedding).  ``listeners`` replaces the TCP listeners of ``config.hosts``/``config.port``
    (tests pass in-memory ones); ``sockets``, listening sockets opened by the caller (a
    ``--workers`` worker's), are served and closed at shutdown like our own.  Reports a
    :class:`ServerHandle` once listening; returns the statistics once every connection is
    closed after ``handle.shutdown()``.
    """
    tls = None
    if config.tls_cert is not None:
        # Loaded (again: the CLI checked it) before anything listens; a TLSSetupError is one
        # line from the CLI.
        tls = await trio.to_thread.run_sync(server_context, config.tls_cert, config.tls_key)
    if listeners is None:
        # Our own listening sockets are served on the lean path (batched accept(), plain
        # sockets read by SocketTransport); a caller's Trio listeners are used as they are.
        if sockets:
            sockets = list(sockets)
        elif config.fds:
            # Inherited (--fd, systemd): served and closed at shutdown like our own.
            sockets = adopt_sockets(config.fds)
        else:
            sockets = await trio.to_thread.run_sync(bind_sockets, config.hosts, config.port)
        addresses = [sock.getsockname() for sock in sockets]
    else:
        sockets = []
        addresses = [
            listener.socket.getsockname()
            for listener in listeners
            if isinstance(listener, trio.SocketListener)
        ]
    stats = ServerStats()
    server = _Server(config, output, stats)
    server.access = AccessPolicy.of(config.allow, config.deny)
    server.tls = tls
    try:
        async with trio.open_nursery() as services:
            if sockets:
                server.hub = ReadinessHub()
                services.start_soon(server.hub.run)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    handle = ServerHandle(
                        addresses,
                        stats,
                        config.grace,
                        accepting.cancel_scope,
                        connections.cancel_scope,
                    )
                    server.handle = handle
                    connections.start_soon(server.close_after_grace, handle)
                    for sock in sockets:
                        accepting.start_soon(server.accept_socket_loop, sock, connections)
                    for listener in listeners or ():
                        accepting.start_soon(server.accept_loop, listener, connections)
                    task_status.started(handle)
                handle.accepting_stopped.set()
            # Every handler is gone: the hub has nothing left to watch.
            services.cancel_scope.cancel()
    finally:
        # Normally the accept loops closed them; this covers a failure before they started.
        for sock in sockets:
            sock.close()
        for listener in listeners or ():
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
        if server.handle is not None:
            server.handle.stopped.set()
    return stats
