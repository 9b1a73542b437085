"""How the ``--workers`` share the port: the listening sockets the supervisor hands them.

One of two ways, chosen by :data:`~trio_echo.net.bind.REUSEPORT_BALANCES`
(the supervisor says which at debug level).  Where ``SO_REUSEPORT`` balances (Linux): the
supervisor first binds the addresses the ordinary way, without ``SO_REUSEPORT``, and closes
them again: a port in use is then the usual one-line error, and ``--port 0`` picks the port
once for everybody.  Then every worker gets a set of listening sockets of its own, bound with
``SO_REUSEPORT`` to those addresses; the kernel spreads new connections over them by a hash
of the client's address and port.  The supervisor keeps no copy: when a worker dies, its
sockets close with it and the kernel sends new clients to the others (the few that were
waiting in the dead worker's accept queue are reset -- a worker dies only by a crash or a
kill).  Its replacement gets a new set.  Everywhere else (macOS and most BSDs, where
``SO_REUSEPORT`` lets sockets share a port but gives one of them every connection, and where
it is missing): the supervisor binds the addresses once, the ordinary way, and keeps them;
every worker accepts from those same sockets, whichever is free takes the next client, and a
dead worker's replacement gets them again (clients wait in the queue meanwhile, none is
reset).  Inherited sockets (``--fd``, systemd) are shared that way too, and so is a ``--unix``
socket (one path is one socket; the supervisor's closing it at the stop removes its file).
"""

from __future__ import annotations

import socket

import trio

from trio_echo.config import Config
from trio_echo.logs import LOGGER
from trio_echo.net.bind import REUSEPORT_BALANCES, adopt_sockets, bind_sockets
from trio_echo.net.datagram import bind_datagram_sockets
from trio_echo.net.unix import bind_unix

__all__ = ["open_port"]


async def open_port(config: Config) -> tuple[list[socket.socket], list[tuple[object, ...]]]:
    """The listening sockets every worker shares (none where each worker binds its own with
    ``SO_REUSEPORT``), and the addresses the workers serve, for the start-up line.  The
    caller closes the shared sockets."""
    if config.unix is not None:
        # One path, one socket: every worker accepts from it, the supervisor owns its file.
        unix = await trio.to_thread.run_sync(bind_unix, config.unix, config.unix_mode)
        LOGGER.debug("the workers share the Unix socket")
        return [unix], [unix.getsockname()]
    if config.fds:
        shared = adopt_sockets(config.fds)
        LOGGER.debug("the workers share the inherited listening sockets")
        return shared, [sock.getsockname() for sock in shared]
    # --udp: the same two ways, with UDP sockets (trio_echo.net.datagram).
    bind = bind_datagram_sockets if config.udp else bind_sockets
    if REUSEPORT_BALANCES:
        # Bound without SO_REUSEPORT, then closed: see the module docstring.
        probe = await trio.to_thread.run_sync(bind, config.hosts, config.port)
        addresses = [sock.getsockname() for sock in probe]
        for sock in probe:
            sock.close()
        LOGGER.debug("each worker gets listening sockets of its own (SO_REUSEPORT balances here)")
        return [], addresses
    shared = await trio.to_thread.run_sync(bind, config.hosts, config.port)
    LOGGER.debug(
        "the workers share one set of listening sockets (SO_REUSEPORT %s)",
        "does not balance here" if hasattr(socket, "SO_REUSEPORT") else "is missing",
    )
    return shared, [sock.getsockname() for sock in shared]
