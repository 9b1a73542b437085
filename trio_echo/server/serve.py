""":func:`serve`: the Trio server, as a nursery tree that any Trio user recognises.

Structure (after hypercorn's trio runner)::

    serve()
    └── services nursery          <- the readiness hub (an optional accelerator) lives here
        └── connections nursery   <- handle.abort() cancels it (its scope); nothing else does
            ├── accepting scope   <- handle.shutdown() cancels it: serve_listeners stops and
            │   │                    closes every listener
            │   └── trio.serve_listeners(handler, listeners, handler_nursery=connections)
            ├── registry.close_after_grace()  <- shutdown() puts the grace period's end on it
            └── handler(stream) per client    <- started by serve_listeners, lives here

The listeners are ours (:mod:`trio_echo.server.listener`: batched accept, ``--allow/--deny``
before a client costs a task) over our streams (:mod:`trio_echo.server.stream`), or whatever
Trio listeners the caller passes; features wrap them (``--max-connections``) or the streams
(TLS, the PROXY header, ``--max-bytes``) only when they are on.  The handler
(:mod:`trio_echo.server.handler`) takes any Trio stream.  On shutdown, accepting stops at once,
while connected clients keep being served until they leave or the grace period runs out
(:mod:`trio_echo.server.shutdown`).  Nothing outlives ``serve()``: no handler, no socket.
"""

from __future__ import annotations

import socket
from functools import partial

import trio

from trio_echo.config import Config
from trio_echo.net.access import AccessPolicy
from trio_echo.net.bind import adopt_sockets, bind_sockets
from trio_echo.net.keepalive import KEEPALIVE_INHERITED, Keepalive
from trio_echo.net.tls import server_context
from trio_echo.net.unix import bind_unix
from trio_echo.output.queue import OutputQueue
from trio_echo.server import hub
from trio_echo.server.handler import Handler
from trio_echo.server.listener import (
    AcceptEvents,
    AccessListener,
    LeanSocketListener,
    LimitedListener,
)
from trio_echo.server.shutdown import AdmittingListener, Registry, ServerHandle
from trio_echo.stats import ServerStats

__all__ = ["ServerHandle", "ServerStats", "serve"]

Listener = trio.abc.Listener[trio.abc.Stream]


def _bound_address(listener: object) -> tuple[object, ...] | None:
    sock = getattr(listener, "socket", None)
    if sock is None:
        return None
    address: tuple[object, ...] = sock.getsockname()
    return address


def _set_keepalive(config: Config, owned: list[socket.socket]) -> Keepalive | None:
    """``--keepalive``: set on the listening TCP sockets; what the listeners must still set on
    every accepted socket (``None`` where those inherit it: trio_echo.net.keepalive)."""
    if config.keepalive is None:
        return None
    keepalive = Keepalive.after(config.keepalive)
    for sock in owned:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            keepalive.apply(sock)
    return None if KEEPALIVE_INHERITED else keepalive


async def serve(
    config: Config,
    output: OutputQueue | None = None,
    *,
    listeners: list[Listener] | None = None,
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
    owned: list[socket.socket] = []
    if listeners is None:
        if sockets:
            owned = list(sockets)
        elif config.unix is not None:
            # Its file goes when the socket is closed (trio_echo.net.unix).
            owned = [await trio.to_thread.run_sync(bind_unix, config.unix, config.unix_mode)]
        elif config.fds:
            # Inherited (--fd, systemd): served and closed at shutdown like our own.
            owned = adopt_sockets(config.fds)
        else:
            owned = await trio.to_thread.run_sync(bind_sockets, config.hosts, config.port)
    stats = ServerStats()
    access = AccessPolicy.of(config.allow, config.deny)
    handle: ServerHandle | None = None
    try:
        async with trio.open_nursery() as services:
            readiness = None
            if owned and config.accelerate and hub.AVAILABLE:
                readiness = hub.ReadinessHub()
                services.start_soon(readiness.run)
            events = AcceptEvents(stats)
            keepalive = _set_keepalive(config, owned)
            serving: list[Listener] = [
                LeanSocketListener(
                    sock, hub=readiness, access=access, events=events, keepalive=keepalive
                )
                for sock in owned
            ]
            for listener in listeners or ():
                serving.append(
                    listener if access is None else AccessListener(listener, access, events)
                )
            if config.max_connections is not None:
                limiter = trio.CapacityLimiter(config.max_connections)
                serving = [LimitedListener(listener, limiter) for listener in serving]
            addresses = [a for a in map(_bound_address, serving) if a is not None]
            # The scopes the handle cancels, made before the nurseries they will wrap, so that
            # everything below gets what it needs when it is made.
            accepting, everything = trio.CancelScope(), trio.CancelScope()
            handle = ServerHandle(
                addresses, stats, config.grace, accepting, everything, output=output
            )
            registry = Registry(stats, handle, live=handle.live)
            handler = Handler(config, output, stats, registry, tls)
            serving = [AdmittingListener(listener, registry) for listener in serving]
            with everything:
                async with trio.open_nursery() as connections:
                    connections.start_soon(registry.close_after_grace)
                    with accepting:
                        async with trio.open_nursery() as accept:
                            await accept.start(
                                partial(
                                    trio.serve_listeners,
                                    handler,
                                    serving,
                                    handler_nursery=connections,
                                )
                            )
                            task_status.started(handle)
                    # serve_listeners closed every listener on its way out.
                    handle.accepting_stopped.set()
            # Every handler is gone: the hub has nothing left to watch.
            services.cancel_scope.cancel()
    finally:
        # Normally the listeners closed them; this covers a failure before they could.
        for sock in owned:
            sock.close()
        if handle is not None:
            handle.stopped.set()
    return stats
