"""The Trio server: listeners, the accept loop, one handler task per connection, and the
graceful shutdown that cancel scopes make possible.

Structure (after hypercorn's trio runner)::

    serve()
    └── connections nursery      <- handle.shutdown() puts a *deadline* on its cancel scope
        ├── accepting nursery    <- handle.shutdown() *cancels* it: the listeners close at once
        │   └── _accept_loop() per listener
        └── _serve_connection() per client

On shutdown, accepting stops immediately, while connected clients keep being served until they
leave or the grace period runs out; then the connections nursery's own deadline cancels what is
left, every handler's ``finally`` prints what it already read and closes its socket, and
``serve()`` returns the statistics.  Nothing outlives ``serve()``: no handler, no socket.
"""

from __future__ import annotations

import errno
import math
import os
import time

import attrs
import trio

from .config import Config
from .connection import Connection
from .listen import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY_SLEEP, bind_sockets
from .logs import LOGGER
from .stats import ServerStats
from .writer import OutputQueue

__all__ = ["ServerHandle", "ServerStats", "open_listeners", "serve"]

# Log running out of file descriptors at most this often: while it lasts, accept fails ten
# times a second, and one line a second says everything those would.
CAPACITY_LOG_INTERVAL = 1.0


@attrs.define(eq=False)
class ServerHandle:
    """What ``await nursery.start(serve, config)`` returns: the bound addresses and the means to
    stop the server."""

    addresses: list[tuple[object, ...]]
    stats: ServerStats
    grace: float
    _accept_scope: trio.CancelScope
    _connections_scope: trio.CancelScope
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
        self._connections_scope.deadline = min(self._connections_scope.deadline, deadline)

    def abort(self) -> None:
        """Close every connection now, without a grace period."""
        self.shutting_down = True
        self.aborted = True
        self._accept_scope.cancel()
        self._connections_scope.cancel()


async def open_listeners(hosts: tuple[str, ...], port: int) -> list[trio.SocketListener]:
    """Trio listeners on every address of ``hosts``, all on one port (see
    :func:`trio_echo.listen.bind_sockets`); the name lookup runs in a worker thread."""
    sockets = await trio.to_thread.run_sync(bind_sockets, hosts, port)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]


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
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
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

    async def accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], connections: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                await self.wait_for_room()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self._log_capacity(exc)
                    await trio.sleep(ACCEPT_RETRY_SLEEP)
                    continue
                if self.handle is not None and self.handle.shutting_down:
                    # accept() had already succeeded when shutdown() cancelled us: this client
                    # came too late, and is closed like the rest of the listen backlog.
                    await trio.aclose_forcefully(stream)
                    return
                # With several listeners, each may have been waiting in accept() when the last
                # slot was taken: that client is held (accepted, not yet read) until a slot frees.
                await self.wait_for_room()
                conn = Connection.open(
                    self.config, self.stats, _address_of(stream), printing=self.output is not None
                )
                connections.start_soon(self.serve_connection, stream, conn)

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

    # ---- one connection --------------------------------------------------------------------

    async def serve_connection(self, stream: trio.abc.Stream, conn: Connection) -> None:
        """Read one client until it leaves; print (and echo) what it sends.

        Every error is contained here: one client's reset or garbage ends only its own task.
        The ``finally`` always prints what was already read and closes the socket.
        """
        config, output = self.config, self.output
        try:
            if output is not None:
                await output.put(conn.opened())
            with trio.CancelScope() as idle_scope:
                while True:
                    if config.idle_timeout is not None:
                        idle_scope.deadline = trio.current_time() + config.idle_timeout
                    data = await stream.receive_some(config.receive_size)
                    # Time spent waiting for stdout or for the client to take its echo is
                    # not the client being idle.
                    idle_scope.deadline = math.inf
                    if not data:
                        break
                    if not isinstance(data, bytes):  # the Stream ABC allows a bytearray
                        data = bytes(data)
                    printed = conn.feed(data)
                    if output is not None:
                        await output.put(printed)
                    if config.echo:
                        await stream.send_all(data)
            if idle_scope.cancelled_caught:
                conn.reason = f"idle for {config.idle_timeout:g} s"
        except trio.BrokenResourceError as exc:
            conn.reason = f"connection lost ({_cause(exc)})"
        except trio.Cancelled:
            conn.reason = self._cancel_reason()
            raise
        except Exception as exc:
            conn.reason = f"error: {exc!r}"
            LOGGER.warning("connection #%d %s failed: %r", conn.conn_id, conn.peer, exc)
        finally:
            last = conn.finish()
            if output is not None:
                # put_nowait: this must happen even while the handler is being cancelled.
                output.put_nowait(last)
            self._room.unpark_all()
            await trio.aclose_forcefully(stream)

    def _cancel_reason(self) -> str:
        handle = self.handle
        if handle is not None and handle.aborted:
            return "server aborted"
        if handle is not None and handle.shutting_down:
            return "grace period over"
        return "server stopped"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__


async def serve(
    config: Config,
    output: OutputQueue | None = None,
    *,
    listeners: list[trio.abc.Listener[trio.abc.Stream]] | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> ServerStats:
    """Serve until shut down; use as ``handle = await nursery.start(serve, config, output)``.

    ``output`` is the queue of the stdout writer (``None`` prints nothing, e.g. an echo-only
    embedding).  ``listeners`` replaces the TCP listeners of ``config.hosts``/``config.port``
    (tests pass in-memory ones).  Reports a :class:`ServerHandle` once listening; returns the
    statistics once every connection is closed after ``handle.shutdown()``.
    """
    if listeners is None:
        listeners = list(await open_listeners(config.hosts, config.port))
    addresses = [
        listener.socket.getsockname()
        for listener in listeners
        if isinstance(listener, trio.SocketListener)
    ]
    stats = ServerStats()
    server = _Server(config, output, stats)
    try:
        async with trio.open_nursery() as connections, trio.open_nursery() as accepting:
            handle = ServerHandle(
                addresses,
                stats,
                config.grace,
                accepting.cancel_scope,
                connections.cancel_scope,
            )
            server.handle = handle
            for listener in listeners:
                accepting.start_soon(server.accept_loop, listener, connections)
            task_status.started(handle)
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
        if server.handle is not None:
            server.handle.stopped.set()
    return stats
