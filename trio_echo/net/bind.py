"""Opening the listening sockets: the same code, errors and messages for every model.

Plain blocking ``socket`` calls, so the sync and threads models use the sockets as they are,
asyncio hands them to ``start_server(sock=...)`` and Trio wraps them in ``SocketListener``s
(calling this through ``trio.to_thread`` so the name lookup does not block its event loop).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from functools import partial

from trio_echo.logs import LOGGER
from trio_echo.output.format import format_peer

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "ACCEPT_RETRY_SLEEP",
    "BACKLOG",
    "REUSEPORT_BALANCES",
    "SD_LISTEN_FDS_START",
    "ListenError",
    "adopt_sockets",
    "bind_reuseport",
    "bind_sockets",
    "describe_addresses",
    "inherited_problem",
    "is_loopback",
    "reuseport_balances",
    "systemd_fds",
    "warn_if_exposed",
]

# The listen(2) backlog: as deep as the kernel allows (it caps this at net.core.somaxconn), so
# that a storm of clients -- or the clients waiting out --max-connections -- are queued by the
# kernel instead of refused.  Trio's open_tcp_listeners uses the same value.
BACKLOG = 0xFFFF

# Errors accept(2) returns when the process or the system is out of something (as in Trio's
# serve_listeners): not fatal, so we wait and try again instead of crashing the server.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

# How long to pause accepting after one of those errors: long enough for some clients to leave,
# short enough that nobody notices once they have.
ACCEPT_RETRY_SLEEP = 0.100

# With port 0 and several addresses, the port picked on the first address may be taken on
# another; a fresh pick almost always fits, so a few attempts make "0 picks a free port" true.
PORT_ZERO_ATTEMPTS = 20


def reuseport_balances(platform: str, has_reuseport: bool) -> bool:
    """Does ``SO_REUSEPORT`` spread new connections over the sockets bound with it, on
    ``platform`` (a ``sys.platform``)?  Only :data:`REUSEPORT_BALANCES` should ask."""
    # Linux and DragonFly BSD balance by a hash of the client's address; macOS's and the other
    # BSDs' SO_REUSEPORT lets sockets share a port but gives one of them every connection.
    # (FreeBSD 12+ balances with SO_REUSEPORT_LB, socket.SO_REUSEPORT_LB from Python 3.14:
    # a possible later addition.)
    return has_reuseport and platform.startswith(("linux", "dragonfly"))


# The one place that decides how --workers shares the port: True, every worker gets listening
# sockets of its own (bind_reuseport) and the kernel balances; False, the supervisor binds once
# and every worker accepts from those sockets (workers.supervisor).
REUSEPORT_BALANCES = reuseport_balances(sys.platform, hasattr(socket, "SO_REUSEPORT"))

# systemd passes its sockets as descriptors 3, 4, ... (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    """The server could not open a listening socket; the message names the host and port."""


class _PortTaken(Exception):
    """The port that port 0 picked on the first address is taken on a later one."""


def bind_sockets(
    hosts: tuple[str, ...],
    port: int,
    *,
    new_socket: Callable[[int], socket.socket] | None = None,
    listen: bool = True,
    error_text: Callable[[str, int, OSError], str] | None = None,
    warn: bool = True,
) -> list[socket.socket]:
    """Listening sockets on every address of every host, all on the same port.

    With port 0 the first address picks a free port and the others reuse it, so that
    ``127.0.0.1`` and ``::1`` answer on the same port; if that port happens to be taken on a
    later address, we start over with a new one.  Errors become a :class:`ListenError` that
    names the host and port, for a one-line message.

    TCP by default; UDP's sockets (:func:`trio_echo.net.datagram.bind_datagram_sockets`) are
    the same walk with their own ``new_socket(family)``, without ``listen`` and with their own
    ``error_text(host, port, error)``.  ``warn=False``: the caller warns about addresses that
    are not loopback in its own words (the metrics endpoint's).
    """
    new_socket = new_socket or _new_socket
    prepare = _listen if listen else None
    error_text = error_text or _error_text
    for attempt in range(1, PORT_ZERO_ATTEMPTS + 1):
        try:
            sockets = _bind_once(hosts, port, new_socket, prepare, error_text)
        except _PortTaken as exc:
            if attempt == PORT_ZERO_ATTEMPTS:
                raise ListenError(str(exc)) from exc.__cause__
        else:
            if warn:
                warn_if_exposed([sock.getsockname() for sock in sockets])
            return sockets
    raise AssertionError("unreachable")  # pragma: no cover


def _addresses_of(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    except UnicodeError as exc:
        # The IDNA codec rejects it (an empty label, a label over 63 characters).
        raise ListenError(f"invalid host name {host!r}: {exc}") from exc
    seen: list[tuple[int, tuple[object, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address) not in seen:
            seen.append((family, address))
    return seen


def _listen(sock: socket.socket) -> None:
    sock.listen(BACKLOG)


def _bind_once(
    hosts: tuple[str, ...],
    port: int,
    new_socket: Callable[[int], socket.socket],
    prepare: Callable[[socket.socket], None] | None,
    error_text: Callable[[str, int, OSError], str],
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    chosen = port
    try:
        for host in hosts:
            for family, address in _addresses_of(host, chosen):
                sock = new_socket(family)
                sockets.append(sock)
                try:
                    sock.bind(address)
                    if prepare is not None:
                        prepare(sock)
                except OSError as exc:
                    if port == 0 and chosen != 0 and exc.errno == errno.EADDRINUSE:
                        raise _PortTaken(error_text(host, chosen, exc)) from exc
                    raise ListenError(error_text(host, chosen, exc)) from exc
                if chosen == 0:
                    chosen = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _new_socket(family: int, *, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Restart on the same port right away, despite connections in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        # "::" means IPv6 only, as "0.0.0.0" means IPv4 only: explicit, not
        # dependent on the net.ipv6.bindv6only sysctl.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def bind_reuseport(addresses: list[tuple[object, ...]]) -> list[socket.socket]:
    """One more listening socket on each of ``addresses`` (as ``getsockname`` gave them, the
    port included), with ``SO_REUSEPORT``: the sockets of ``--workers``, one set per worker,
    among which the kernel spreads new connections (only where :data:`REUSEPORT_BALANCES`).

    The caller first binds the addresses *without* ``SO_REUSEPORT`` (:func:`bind_sockets`) and
    closes them: that is what turns "port in use" into a clear error, even against another
    server that uses ``SO_REUSEPORT`` and that these sockets would otherwise silently join.
    Where the platform lacks ``SO_REUSEPORT`` (the supervisor shares one set of sockets there
    instead, and never calls this), a :class:`ListenError` says so in one line.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ListenError("cannot bind a socket per worker: this platform lacks SO_REUSEPORT")
    return bind_each(addresses, partial(_new_socket, reuse_port=True), _listen, _error_text)


def bind_each(
    addresses: list[tuple[object, ...]],
    new_socket: Callable[[int], socket.socket],
    prepare: Callable[[socket.socket], None] | None,
    error_text: Callable[[str, int, OSError], str],
) -> list[socket.socket]:
    """A socket from ``new_socket(family)`` bound on each of ``addresses``, then ``prepare``d
    (e.g. ``listen``); on any failure every socket made so far is closed and a
    :class:`ListenError` carries ``error_text(host, port, error)``: TCP's and UDP's per-worker
    sockets (:func:`bind_reuseport`, :func:`trio_echo.net.datagram.bind_datagram_reuseport`)."""
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            host, port = str(address[0]), int(str(address[1]))
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = new_socket(family)
            sockets.append(sock)
            try:
                sock.bind(address)
                if prepare is not None:
                    prepare(sock)
            except OSError as exc:
                raise ListenError(error_text(host, port, exc)) from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _error_text(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {host} port {port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: address already in use (is another server running on port {port}?)"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no such address on this machine"
    return f"{where}: {exc.strerror or exc}"


def is_loopback(address: tuple[object, ...]) -> bool:
    """Is this bound address reachable only from this machine?  ``0.0.0.0`` and ``::`` (every
    interface) are not."""
    host = address[0]
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def warn_if_exposed(
    addresses: list[tuple[object, ...]],
    *,
    what: str = "",
    risk: str = "other machines can connect and have their data printed",
    remedy: str = "--host 127.0.0.1 keeps the server local",
) -> None:
    """One warning line naming the bound addresses that are not loopback: a server that prints
    whatever it is sent must not be opened to the network by accident (every model); nor its
    metrics endpoint (``what``, ``risk`` and ``remedy`` say so in its words)."""
    exposed = [address for address in addresses if not is_loopback(address)]
    if exposed:
        LOGGER.warning(
            "%sexposed to the network: %s %s not loopback; %s (%s)",
            what,
            describe_addresses(exposed),
            "is" if len(exposed) == 1 else "are",
            risk,
            remedy,
        )


def describe_addresses(addresses: Sequence[object]) -> str:
    """``127.0.0.1:8888, [::1]:8888``: the bound addresses as the start-up line shows them."""
    return ", ".join(map(_describe_address, addresses))


def _describe_address(address: object) -> str:
    if isinstance(address, tuple):
        return format_peer(address)
    # A Unix socket's, as getsockname gives it: a path, or an abstract name after a NUL byte.
    text = os.fsdecode(address) if isinstance(address, bytes) else str(address)
    return "unix:" + ("@" + text[1:] if text.startswith("\0") else text)


# ---- inherited sockets: --fd N, systemd socket activation ------------------------------------


def inherited_problem(fd: int) -> str | None:
    """``None`` if descriptor ``fd`` is a listening TCP socket (IPv4 or IPv6) we can serve,
    else what it is instead, in a few words.  Leaves ``fd`` as it is.

    Checked with the kernel's own answers (``fstat``, ``SO_TYPE``, ``SO_PROTOCOL``,
    ``SO_ACCEPTCONN``) on a duplicate, so that checking cannot close or change the original.
    """
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return "not a socket"
    except OSError as exc:
        return "not an open file descriptor" if exc.errno == errno.EBADF else str(exc.strerror)
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return "not an IPv4 or IPv6 socket"
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            return "not a stream (TCP) socket"
        protocol = getattr(socket, "SO_PROTOCOL", None)
        if protocol is not None and sock.getsockopt(socket.SOL_SOCKET, protocol) not in (
            0,
            socket.IPPROTO_TCP,
        ):
            return "not a TCP socket"
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return "a TCP socket that is not listening"
    return None


def adopt_sockets(fds: tuple[int, ...]) -> list[socket.socket]:
    """The inherited listening sockets ``fds`` as socket objects that own them: closing them at
    shutdown closes the descriptors, as for sockets we bound ourselves.  Raises
    :class:`ListenError` (one line, exit status 1) for a descriptor that is not a listening
    TCP socket."""
    for fd in fds:
        if (problem := inherited_problem(fd)) is not None:
            raise ListenError(f"cannot serve file descriptor {fd}: {problem}")
    sockets = [socket.socket(fileno=fd) for fd in fds]
    warn_if_exposed([sock.getsockname() for sock in sockets])
    return sockets


def systemd_fds(environ: dict[str, str] | os._Environ[str]) -> tuple[int, ...] | None:
    """The descriptors systemd passed us (``LISTEN_FDS`` of them from 3, when ``LISTEN_PID`` is
    our pid), or ``None`` when the environment is not meant for this process.  Raises
    ``ValueError`` for a malformed ``LISTEN_FDS``.

    Like ``sd_listen_fds(unset_environment=1)``, the variables are removed, so that nothing we
    might start believes they are meant for it.
    """
    if environ.get("LISTEN_PID") != str(os.getpid()) or "LISTEN_FDS" not in environ:
        return None
    count = environ.pop("LISTEN_FDS")
    environ.pop("LISTEN_PID", None)
    environ.pop("LISTEN_FDNAMES", None)
    if not count.isdigit() or not count.isascii() or not 0 < int(count) <= 1024:
        raise ValueError(f"LISTEN_FDS must be a number of descriptors, got {count!r}")
    return tuple(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
