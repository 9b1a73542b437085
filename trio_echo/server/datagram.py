""":func:`serve_datagrams`: ``--udp``, the RFC 862 echo / RFC 863 discard service of xinetd,
``ncat -u``, ``socat UDP-RECVFROM`` and ``nc -u``, in the trio model.

Structure (the TCP server's shape, :mod:`trio_echo.server.serve`, without connections)::

    serve_datagrams()
    └── everything scope          <- handle.abort() cancels it (a second signal cancels the
        │                            caller's nursery around it)
        ├── receiving scope       <- handle.shutdown() cancels it
        │   └── receive loop per socket (trio.socket, SOCK_DGRAM)
        └── drain per socket      <- then, within --grace: what the kernel had already queued

Each datagram is one record: it goes through the same formatting as a stream's bytes (a
:class:`~trio_echo.connection.Connection` that lives for one datagram, so every output format
applies alike), with the sender as the peer; a last line without a newline is still whole.
With ``--echo`` it is sent back to its sender.

Bounded: a loop receives the next datagram only once the output queue took the last one
(``OutputQueue.put`` waits for room: the backpressure of TCP).  UDP has no flow control, so
while stdout stalls the kernel's receive buffer fills and the kernel drops what does not fit --
the bound on our memory is the queue's budget plus one datagram per socket.  Where the kernel
counts those drops (Linux, :mod:`trio_echo.net.datagram`), a warning says so as it happens
(at most once per ``REPORT_INTERVAL``), jsonl gets a ``dropped`` record, and the summary at
exit has the total.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import signal
import socket
from typing import Any

import attrs
import trio

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.logs import LOGGER, NOTICE
from trio_echo.net.access import AccessPolicy
from trio_echo.net.datagram import (
    ANCILLARY_SIZE,
    MAX_DATAGRAM,
    bind_datagram_sockets,
    count_drops,
    drops_in,
    drops_now,
)
from trio_echo.output.format import OutputFormat, format_peer
from trio_echo.output.queue import OutputQueue
from trio_echo.server.shutdown import ServerHandle
from trio_echo.stats import ServerStats

__all__ = ["REPORT_INTERVAL", "log_stopped_receiving", "serve_datagrams"]

# Errors of one peer, not of the service: a receive may return the ICMP error an earlier
# datagram caused (on platforms that report those on unconnected sockets), and an echo may be
# refused for its destination (unreachable, a firewall, a broadcast, port 0).  The datagram in
# question is lost, as UDP allows; the server goes on.
PEER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "EHOSTDOWN",
        "ENETDOWN",
        "EMSGSIZE",
        "EACCES",
        "EPERM",
        "EADDRNOTAVAIL",
        "ENOBUFS",
        "EINVAL",
    )
    if hasattr(errno, name)
)

# At most one line per this many seconds about refused senders, and about datagrams the kernel
# dropped: a flood must not turn into a flood on stderr (the summary has the totals).
REPORT_INTERVAL = 1.0

# Datagrams taken per trip through Trio's scheduler while more are waiting (see
# _Datagrams.receive): a burst costs one checkpoint per batch instead of one per datagram,
# and the batch is short enough (a millisecond or so) not to starve the other tasks.
RECEIVE_BATCH = 32

# recvmsg's flag for a datagram longer than the buffer (an int: testing the enum costs more).
_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0))

# --allow/--deny decisions remembered per sender address: a busy sender costs one dictionary
# lookup per datagram; past this many senders the memory starts afresh (bounded under spoofing).
ACCESS_CACHE_SIZE = 4096


def log_stopped_receiving(signum: int, grace: float, *, hint: bool = True) -> None:
    """The first signal's line for ``--udp`` (``hint``: how to force, as for TCP)."""
    name = signal.Signals(signum).name
    LOGGER.log(
        NOTICE,
        "%s: stopped receiving; printing what the kernel had already queued, up to %g s%s",
        *(name, grace, f" ({name} again to force)" if hint else ""),
    )


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


@attrs.define(eq=False)
class _Throttle:
    """At most one line per ``interval``: :meth:`due` says whether to write one now, and how
    many events it stands for."""

    interval: float = REPORT_INTERVAL
    _last: float = -math.inf
    _held: int = 0

    def due(self) -> int:
        """Count one event; the number of events to report now (0: not yet)."""
        self._held += 1
        now = trio.current_time()
        if now - self._last < self.interval:
            return 0
        self._last, held, self._held = now, self._held, 0
        return held


@attrs.define(eq=False)
class _Socket:
    """One bound UDP socket: the Trio socket the loops use, and its drop bookkeeping."""

    std: socket.socket
    sock: trio.socket.SocketType
    name: str
    # SO_RXQ_OVFL is on: received datagrams carry the kernel's drop count.
    counting: bool
    # The kernel's drop count last seen on this socket.
    drops: int = 0

    @classmethod
    def of(cls, std: socket.socket) -> _Socket:
        counting = count_drops(std)
        name = format_peer(std.getsockname())
        return cls(std, trio.socket.from_stdlib_socket(std), name, counting)


@attrs.define(eq=False)
class _Datagrams:
    """What happens to every datagram, whichever socket it came in on."""

    config: Config
    output: OutputQueue | None
    stats: ServerStats
    access: AccessPolicy | None
    _decisions: dict[str, str | None] = attrs.field(factory=dict)
    _refusals: _Throttle = attrs.field(factory=_Throttle)
    _drop_lines: _Throttle = attrs.field(factory=_Throttle)

    async def receive(self, bound: _Socket) -> None:
        """Take datagrams from ``bound`` until cancelled (the shutdown).

        Each ``await recvmsg`` is a checkpoint (a trip through Trio's scheduler); while more
        datagrams are already waiting, up to ``RECEIVE_BATCH`` more are taken with plain
        non-blocking receives before the next one."""
        recvmsg, take_more = bound.sock.recvmsg, bound.std.recvmsg
        while True:
            try:
                data, ancillary, flags, address = await recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
                await self.take(bound, data, ancillary, flags, address)
                for _ in range(RECEIVE_BATCH - 1):
                    data, ancillary, flags, address = take_more(MAX_DATAGRAM, ANCILLARY_SIZE)
                    await self.take(bound, data, ancillary, flags, address)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in PEER_ERRNOS:
                    raise
                LOGGER.debug("receive on %s: %s", bound.name, exc.strerror)

    async def drain(self, bound: _Socket) -> None:
        """Take what the kernel has queued on ``bound`` now, without waiting for more: the
        graceful stop (under the caller's ``--grace`` deadline, for a sender that goes on)."""
        while True:
            await trio.lowlevel.checkpoint()
            try:
                data, ancillary, flags, address = bound.std.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in PEER_ERRNOS:
                    raise
                continue
            await self.take(bound, data, ancillary, flags, address)

    async def take(
        self,
        bound: _Socket,
        data: bytes,
        ancillary: list[tuple[int, int, bytes]],
        flags: int,
        address: Any,
    ) -> None:
        """One datagram: drops noted, the sender checked, the record printed, the echo sent."""
        if ancillary and bound.counting:
            self._note_drops(bound, drops_in(ancillary))
        if self.access is not None and self._refused(address):
            return
        stats = self.stats
        stats.datagrams += 1
        if flags & _MSG_TRUNC:
            LOGGER.warning("datagram from %s cut to %d bytes", format_peer(address), len(data))
        output = self.output
        conn = Connection.datagram(
            self.config, stats, address, stats.datagrams, printing=output is not None
        )
        record = conn.feed(data)  # counts its bytes too
        if conn.assembler is not None:
            # An empty datagram is a record too: an empty line.
            record += conn.flush() if data else conn.assembler.formatter.piece(b"", b"", False)
        if output is not None:
            await output.put(record)  # waiting here is the bound: see the module docstring
        if self.config.echo:
            await self._echo(bound, data, address)

    async def _echo(self, bound: _Socket, data: bytes, address: Any) -> None:
        try:
            await bound.sock.sendto(data, address)
        except OSError as exc:
            if exc.errno not in PEER_ERRNOS:
                raise
            LOGGER.debug("echo to %s: %s", format_peer(address), exc.strerror)

    def _refused(self, address: object) -> bool:
        """Is the sender refused by ``--allow``/``--deny``?  Counted, and logged (throttled)."""
        assert self.access is not None
        host = str(address[0]) if isinstance(address, tuple) and address else ""
        try:
            why = self._decisions[host]
        except KeyError:
            if len(self._decisions) >= ACCESS_CACHE_SIZE:
                self._decisions.clear()
            why = self._decisions[host] = self.access.refusal(address)
        if why is None:
            return False
        self.stats.refused += 1
        if count := self._refusals.due():
            more = f"; {count - 1} more refused since the last line" if count > 1 else ""
            LOGGER.info("refused a datagram from %s (%s)%s", format_peer(address), why, more)
        return True

    def _note_drops(self, bound: _Socket, total: int | None) -> None:
        """The kernel says it has dropped ``total`` datagrams on ``bound`` so far.

        Not a checkpoint: a cancellation here would lose the datagram that told.  Its jsonl
        record goes over the queue's budget by its own few dozen bytes at most (the datagram's
        own record then waits for room)."""
        if total is None or total <= bound.drops:
            return
        new, bound.drops = total - bound.drops, total
        self.stats.kernel_drops = (self.stats.kernel_drops or 0) + new
        if self._drop_lines.due():
            LOGGER.warning(
                "the kernel dropped datagrams on %s: %d so far (its receive buffer was full: "
                "the senders are faster than stdout%s)",
                *(bound.name, self.stats.kernel_drops, " or the echo" if self.config.echo else ""),
            )
        if self.output is not None and self.config.output_format is OutputFormat.JSONL:
            record: dict[str, object] = {"time": _utc_now(), "event": "dropped"}
            if self.config.worker_id is not None:
                record["worker"] = self.config.worker_id
            record.update(socket=bound.name, datagrams=new, total=total)
            self.output.put_nowait((json.dumps(record) + "\n").encode())

    def count_final_drops(self, bound: _Socket) -> None:
        """At exit: the drops since the last datagram that told (a burst, then silence)."""
        total = drops_now(bound.std)
        if total is None:
            return
        if total > bound.drops:
            self.stats.kernel_drops = (self.stats.kernel_drops or 0) + total - bound.drops
            bound.drops = total
        elif self.stats.kernel_drops is None:
            self.stats.kernel_drops = 0


async def serve_datagrams(
    config: Config,
    output: OutputQueue | None = None,
    *,
    sockets: list[socket.socket] | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> ServerStats:
    """Serve UDP until shut down; use as ``handle = await nursery.start(serve_datagrams,
    config, output)``, like :func:`trio_echo.server.serve.serve`.

    ``sockets``: bound UDP sockets opened by the caller (a ``--workers`` worker's), served and
    closed like our own; else ``config.hosts``/``config.port`` are bound.  Reports a
    :class:`ServerHandle` once receiving; ``handle.shutdown()`` stops receiving, then what the
    kernel had already queued is taken within ``--grace``; returns the statistics.
    """
    if sockets:
        owned = list(sockets)
    else:
        owned = await trio.to_thread.run_sync(bind_datagram_sockets, config.hosts, config.port)
    stats = ServerStats(udp=True)
    handle: ServerHandle | None = None
    bound: list[_Socket] = []
    try:
        bound = [_Socket.of(sock) for sock in owned]
        if any(b.counting for b in bound):
            stats.kernel_drops = 0
        server = _Datagrams(config, output, stats, AccessPolicy.of(config.allow, config.deny))
        receiving, everything = trio.CancelScope(), trio.CancelScope()
        addresses = [b.std.getsockname() for b in bound]
        handle = ServerHandle(addresses, stats, config.grace, receiving, everything, output=output)
        with everything:
            with receiving:
                async with trio.open_nursery() as loops:
                    for b in bound:
                        loops.start_soon(server.receive, b)
                    task_status.started(handle)
            handle.accepting_stopped.set()
            with trio.move_on_after(config.grace):
                async with trio.open_nursery() as drains:
                    for b in bound:
                        drains.start_soon(server.drain, b)
        for b in bound:
            server.count_final_drops(b)
    finally:
        for b in bound:
            b.sock.close()
        for sock in owned:
            sock.close()
        if handle is not None:
            handle.stopped.set()
    return stats
