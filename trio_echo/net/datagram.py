"""UDP sockets for ``--udp``: binding them, and the kernel's count of the datagrams it dropped.

Blocking ``socket`` calls, like :mod:`trio_echo.net.bind` (the server runs the binding through
``trio.to_thread``), with the same addresses, errors and messages as for TCP, and two
differences that UDP's semantics force:

* No ``SO_REUSEADDR``.  TCP sets it to restart on a port with connections in ``TIME_WAIT``;
  UDP has no ``TIME_WAIT``, and there the option means something else: on Linux two sockets
  that both set it share the port, the later one taking the datagrams.  A second server on a
  port in use must be "address already in use", not a silent thief of the first's traffic.
* A full receive buffer drops datagrams instead of pushing back on the sender (UDP has no flow
  control).  That is the bound on our memory -- the server reads the next datagram only once
  the output queue has room for the last one -- and where the kernel tells how many it dropped
  (Linux: ``SO_RXQ_OVFL`` on every received datagram, ``SO_MEMINFO`` at any time), we say so.
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
from collections.abc import Iterable
from functools import partial

from trio_echo.net.bind import (
    ListenError,
    _error_text,
    bind_each,
    bind_sockets,
)

__all__ = [
    "ANCILLARY_SIZE",
    "MAX_DATAGRAM",
    "bind_datagram_reuseport",
    "bind_datagram_sockets",
    "count_drops",
    "drops_in",
    "drops_now",
]

# One receive takes any datagram whole: the largest UDP payload is 65,507 bytes over IPv4 and
# 65,527 over IPv6 (short of jumbograms, which loopback and ordinary links never carry).
MAX_DATAGRAM = 65536


def _linux_option(name: str, generic: int) -> int | None:
    """A Linux ``SOL_SOCKET`` option that Python's ``socket`` module does not name: its number
    in the kernel's asm-generic table, used on the architectures that share that table (alpha,
    mips, parisc and sparc number their options differently: there, nothing)."""
    if hasattr(socket, name):
        value: int = getattr(socket, name)
        return value
    if not sys.platform.startswith("linux"):
        return None
    if platform.machine().lower().startswith(("alpha", "mips", "parisc", "sparc")):
        return None
    return generic


# SO_RXQ_OVFL (Linux 2.6.33): once set, every datagram received carries, as ancillary data, a
# 32-bit count of the datagrams the kernel dropped on this socket before queueing it.
SO_RXQ_OVFL = _linux_option("SO_RXQ_OVFL", 40)

# SO_MEMINFO (Linux 4.6): the socket's memory counters, the ninth being its drops.  What
# SO_RXQ_OVFL cannot tell: the drops after the last datagram that was queued (a burst while
# stdout stalled, then silence), read once at exit.
SO_MEMINFO = _linux_option("SO_MEMINFO", 55)
_MEMINFO_DROPS = 8  # SK_MEMINFO_DROPS in include/uapi/linux/sock_diag.h
_U32 = struct.Struct("=I")

# Ancillary buffer for recvmsg: room for one SO_RXQ_OVFL counter (0 where there is none).
ANCILLARY_SIZE = socket.CMSG_SPACE(_U32.size) if SO_RXQ_OVFL is not None else 0


def count_drops(sock: socket.socket) -> bool:
    """Ask the kernel to report drops on ``sock`` (``SO_RXQ_OVFL``); False where it cannot."""
    if SO_RXQ_OVFL is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    except OSError:
        return False
    return True


def drops_in(ancillary: Iterable[tuple[int, int, bytes]]) -> int | None:
    """The kernel's drop count in a received datagram's ancillary data (``SO_RXQ_OVFL``), or
    ``None`` if it carries none (the kernel sends it only once it is not zero)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= _U32.size:
            count: int = _U32.unpack_from(data)[0]
            return count
    return None


def drops_now(sock: socket.socket) -> int | None:
    """How many datagrams the kernel has dropped on ``sock`` so far (``SO_MEMINFO``), or
    ``None`` where it does not say."""
    if SO_MEMINFO is None:
        return None
    size = (_MEMINFO_DROPS + 1) * _U32.size
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
    except OSError:
        return None
    if len(info) < size:
        return None  # a kernel without the drops counter
    count: int = _U32.unpack_from(info, _MEMINFO_DROPS * _U32.size)[0]
    return count


def _new_socket(family: int, *, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        # "::" means IPv6 only, as "0.0.0.0" means IPv4 only (as for TCP: trio_echo.net.bind).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _udp_error(host: str, port: int, exc: OSError) -> str:
    return _error_text(host, port, exc).replace(" port ", " UDP port ", 1)


def bind_datagram_sockets(hosts: tuple[str, ...], port: int) -> list[socket.socket]:
    """A UDP socket on every address of every host, all on the same port (port 0: one free
    port for all, as :func:`trio_echo.net.bind.bind_sockets` picks it for TCP).  Raises
    :class:`ListenError` naming the host and port."""
    return bind_sockets(hosts, port, new_socket=_new_socket, listen=False, error_text=_udp_error)


def bind_datagram_reuseport(addresses: list[tuple[object, ...]]) -> list[socket.socket]:
    """One more UDP socket on each of ``addresses`` with ``SO_REUSEPORT``: a ``--workers``
    worker's own set, among which the kernel spreads datagrams by a hash of the sender's address
    and port (only where :data:`~trio_echo.net.bind.REUSEPORT_BALANCES`; as for TCP, the caller
    first binds and closes the addresses without the option, so that a port in use is an
    error)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ListenError("cannot bind a socket per worker: this platform lacks SO_REUSEPORT")
    return bind_each(addresses, partial(_new_socket, reuse_port=True), None, _udp_error)
