"""Tests for :mod:`trio_echo.server.listener`: our ``trio.abc.Listener`` over a listening
socket, on real loopback sockets.

Failures of ``accept(2)`` are staged with a socket whose ``accept`` raises the errors a test
lists first (a subclass of ``socket.socket``: everything else is the kernel's).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio._highlevel_socket
import trio.testing

import trio_echo.server.stream
from trio_echo.logs import LOGGER
from trio_echo.net.access import AccessPolicy, parse_network
from trio_echo.server import hub
from trio_echo.server.listener import (
    ACCEPT_BATCH,
    IGNORED_ACCEPT_ERRNOS,
    AcceptEvents,
    LeanSocketListener,
    LimitedListener,
    peer_address,
)
from trio_echo.server.stream import LeanSocketStream
from trio_echo.server.wrappers import SlotStream
from trio_echo.stats import ServerStats


class FlakySocket(socket.socket):
    """A listening socket whose ``accept`` first raises ``errors``, one per call."""

    errors: list[OSError]

    def accept(self) -> tuple[socket.socket, object]:
        if self.errors:
            raise self.errors.pop(0)
        return super().accept()


def listening(errors: list[OSError] | None = None) -> FlakySocket:
    sock = FlakySocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.errors = list(errors or ())
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@pytest.fixture
async def readiness(nursery: trio.Nursery) -> AsyncIterator[hub.ReadinessHub | None]:
    """The epoll hub where there is one (else None: the listener works without)."""
    if not hub.AVAILABLE:
        yield None
        return
    readiness = hub.ReadinessHub()
    nursery.start_soon(readiness.run)
    yield readiness
    nursery.cancel_scope.cancel()


def test_the_ignored_accept_errors_are_trios() -> None:
    # Trio's SocketListener skips these errors of one client; so must we (an ECONNRESET in
    # the backlog must never end the whole server).
    trio_names = trio._highlevel_socket._ignorable_accept_errno_names
    trios = {getattr(errno, name) for name in trio_names if hasattr(errno, name)}
    assert trios == IGNORED_ACCEPT_ERRNOS


@pytest.mark.parametrize("name", ["ECONNRESET", "ETIMEDOUT", "ECONNABORTED", "EPROTO"])
async def test_one_clients_accept_error_costs_only_that_client(name: str) -> None:
    code = getattr(errno, name)
    sock = listening([OSError(code, name)])
    listener = LeanSocketListener(sock)
    with socket.create_connection(sock.getsockname()) as client:
        with trio.fail_after(5):
            stream = await listener.accept()
        client.sendall(b"hello")
        assert await stream.receive_some(10) == b"hello"
        await stream.aclose()
    await listener.aclose()


async def test_an_unknown_accept_error_is_not_hidden() -> None:
    sock = listening([OSError(errno.EINVAL, "Invalid argument")])
    listener = LeanSocketListener(sock)
    with (
        socket.create_connection(sock.getsockname()),
        pytest.raises(OSError, match="Invalid argument") as caught,
    ):
        await listener.accept()
    assert caught.value.errno == errno.EINVAL
    await listener.aclose()


async def test_running_out_of_descriptors_pauses_accepting(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sock = listening([OSError(errno.EMFILE, "Too many open files") for _ in range(5)])
    stats = ServerStats(active=7)
    listener = LeanSocketListener(sock, events=AcceptEvents(stats))
    with socket.create_connection(sock.getsockname()):
        t0 = trio.current_time()
        stream = await listener.accept()
        # Five failures, 100 ms apart, then served: paused, not crashed...
        assert trio.current_time() - t0 == pytest.approx(0.5)
        await stream.aclose()
    # ...and logged once, not five times, with the clients connected.
    assert caplog.text.count("EMFILE") == 1
    assert "7 clients connected" in caplog.text
    assert stats.accept_pauses == 5  # but every pause counted, for the metrics
    await listener.aclose()


async def test_a_client_that_cannot_be_set_up_costs_only_itself(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # e.g. epoll's ENOSPC when the hub registers the socket: the first client is closed and
    # logged, the accept goes on with the next one.
    real = trio_echo.server.stream.LeanSocketStream.__init__
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def flaky_init(self: LeanSocketStream, *args: object, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LeanSocketStream, "__init__", flaky_init)
    sock = listening()
    listener = LeanSocketListener(sock)
    with (
        socket.create_connection(sock.getsockname()) as first,
        socket.create_connection(sock.getsockname()) as second,
    ):
        with trio.fail_after(5):
            stream = await listener.accept()
        assert first.recv(10) == b""  # closed by the server
        second.sendall(b"ok")
        assert await stream.receive_some(10) == b"ok"
        await stream.aclose()
    assert "could not set up 127.0.0.1" in caplog.text
    await listener.aclose()


class BacklogSocket(socket.socket):
    """A listening socket whose backlog is known: ``accept`` returns the server halves of
    ``pending`` socket pairs, then would block (a real backlog fills as the kernel completes
    handshakes, which a loaded machine may do later than the test expects)."""

    pending: list[socket.socket]

    def accept(self) -> tuple[socket.socket, object]:
        if not self.pending:
            raise BlockingIOError(errno.EAGAIN, "no client waiting")
        return self.pending.pop(0), ("127.0.0.1", 1)


async def test_accept_drains_the_backlog_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 * ACCEPT_BATCH + 1 clients waiting: accepted one after the other without a schedule
    # point in between (each accept is only a cancel point), then one for the other tasks
    # after each ACCEPT_BATCH.
    total = 2 * ACCEPT_BATCH + 1
    sock = BacklogSocket(socket.AF_INET, socket.SOCK_STREAM)
    pairs = [socket.socketpair() for _ in range(total)]
    sock.pending = [server for _, server in pairs]
    listener = LeanSocketListener(sock)
    streams: list[LeanSocketStream] = []
    # How many clients had been accepted at each schedule point the listener took.
    yields: list[int] = []
    checkpoint = trio.lowlevel.checkpoint

    async def counted_checkpoint() -> None:
        yields.append(len(streams))
        await checkpoint()

    monkeypatch.setattr(trio.lowlevel, "checkpoint", counted_checkpoint)
    try:
        while len(streams) < total:
            streams.append(await listener.accept())
        assert yields == [ACCEPT_BATCH, 2 * ACCEPT_BATCH]
    finally:
        monkeypatch.undo()
        for stream in streams:
            await stream.aclose()
        for client, _ in pairs:
            client.close()
        await listener.aclose()


async def test_refused_clients_never_reach_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    sock = listening()
    access = AccessPolicy.of((), (parse_network("127.0.0.0/8"),))
    assert access is not None
    stats = ServerStats()
    listener = LeanSocketListener(sock, access=access, events=AcceptEvents(stats))
    with socket.create_connection(sock.getsockname()) as client:
        with trio.move_on_after(0.2) as timeout:
            await listener.accept()
        assert timeout.cancelled_caught
        assert client.recv(10) == b""
    assert "refused 127.0.0.1" in caplog.text
    assert stats.denied == 1
    await listener.aclose()


async def test_max_connections_listener_holds_a_slot_per_stream(
    readiness: hub.ReadinessHub | None,
) -> None:
    sock = listening()
    limiter = trio.CapacityLimiter(1)
    listener = LimitedListener(LeanSocketListener(sock, hub=readiness), limiter)
    with (
        socket.create_connection(sock.getsockname()),
        socket.create_connection(sock.getsockname()),
    ):
        first = await listener.accept()
        assert limiter.borrowed_tokens == 1
        with trio.move_on_after(0.2) as timeout:
            await listener.accept()
        assert timeout.cancelled_caught  # the second client waits in the backlog
        await first.aclose()
        assert limiter.borrowed_tokens == 0
        with trio.fail_after(5):
            second = await listener.accept()
        assert limiter.borrowed_tokens == 1
        await second.aclose()
        await second.aclose()  # idempotent: the slot is given back once
        assert limiter.borrowed_tokens == 0
    await listener.aclose()


async def test_the_shortage_is_logged_once_for_all_listeners(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # IPv4 and IPv6 listeners run out of descriptors together: one line a second says it.
    shortage = AcceptEvents()
    socks = [listening([OSError(errno.EMFILE, "Too many open files")] * 3) for _ in range(2)]
    listeners = [LeanSocketListener(sock, events=shortage) for sock in socks]
    clients = [socket.create_connection(sock.getsockname()) for sock in socks]
    streams: list[LeanSocketStream] = []

    async def accept(listener: LeanSocketListener) -> None:
        streams.append(await listener.accept())

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept, listener)
    # Three failures each, 100 ms apart, both listeners at once: 0.3 s, one line.
    assert caplog.text.count("EMFILE") == 1
    for stream in streams:
        await stream.aclose()
    for client in clients:
        client.close()
    for listener in listeners:
        await listener.aclose()


async def test_a_client_that_resets_at_once_keeps_its_name() -> None:
    # The address comes from accept() itself: by the time the handler asks the socket, a
    # client that reset has no peer name any more ("unknown" in the log and the jsonl).
    sock = listening()
    listener = LeanSocketListener(sock)
    client = socket.create_connection(sock.getsockname())
    name = client.getsockname()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    with trio.fail_after(5):
        stream = await listener.accept()
    assert peer_address(stream) == name
    assert peer_address(SlotStream(stream, trio.CapacityLimiter(1))) == name
    await stream.aclose()
    await listener.aclose()
