"""Our stream against Trio's own conformance suite for streams, which nobody here wrote.

``trio.testing.check_half_closeable_stream`` (a superset of ``check_two_way_stream``) runs a
pair of :class:`~trio_echo.server.stream.LeanSocketStream` s with the epoll readiness hub (where
the platform has epoll) and without it: over a Unix socket pair, as Trio's own test of its
``SocketStream`` does (a clogged pair stays clogged, which a TCP connection's window updates do
not promise), and over a real loopback TCP connection for everything but the clogged cases.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from trio_echo.server import hub
from trio_echo.server.stream import LeanSocketStream
from trio_echo.server.wrappers import LimitedStream

Pair = tuple[LeanSocketStream, LeanSocketStream]


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        server, _ = listening.accept()
    return client, server


def _clog(sock: socket.socket) -> None:
    """Fill the kernel's buffers from ``sock`` towards its peer until a send would block."""
    sock.setblocking(False)
    size = 65536
    while size:
        try:
            sock.send(b"x" * size)
        except BlockingIOError:
            size //= 2  # down to a single byte: not even that fits any more


Maker = Callable[[], Awaitable[Pair]]


@pytest.fixture(params=["hub", "trio"])
async def readiness(
    request: pytest.FixtureRequest, nursery: trio.Nursery
) -> AsyncIterator[hub.ReadinessHub | None]:
    """Readability from the hub, or from Trio alone."""
    if request.param == "trio":
        yield None
        return
    if not hub.AVAILABLE:
        pytest.skip("no epoll on this platform: the hub is Linux's accelerator")
    readiness = hub.ReadinessHub()
    nursery.start_soon(readiness.run)
    yield readiness
    nursery.cancel_scope.cancel()


def maker(pair: Callable[[], tuple[socket.socket, socket.socket]], readiness: object) -> Maker:
    assert readiness is None or isinstance(readiness, hub.ReadinessHub)

    async def stream_maker() -> Pair:
        await trio.lowlevel.checkpoint()
        left, right = pair()
        return LeanSocketStream(left, readiness), LeanSocketStream(right, readiness)

    return stream_maker


async def test_trios_half_closeable_stream_conformance_unix(
    readiness: hub.ReadinessHub | None,
) -> None:
    stream_maker = maker(socket.socketpair, readiness)

    async def clogged_stream_maker() -> Pair:
        left, right = await stream_maker()
        _clog(left.socket)
        _clog(right.socket)
        return left, right

    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


async def test_trios_half_closeable_stream_conformance_tcp(
    readiness: hub.ReadinessHub | None,
) -> None:
    await trio.testing.check_half_closeable_stream(maker(_tcp_pair, readiness), None)


async def test_end_receiving_wakes_a_waiting_receiver_without_cancelling(
    readiness: hub.ReadinessHub | None,
) -> None:
    # What the end of the grace period relies on: the waiting receive returns what the client
    # sent before, then b"", with no exception.
    client, server = await maker(_tcp_pair, readiness)()
    received: list[bytes] = []

    async def receive_all() -> None:
        while data := await server.receive_some(100):
            received.append(data)
        received.append(b"<eof>")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_all)
        await client.send_all(b"last words")
        await trio.testing.wait_all_tasks_blocked()
        assert server.end_receiving()
    assert received == [b"last words", b"<eof>"]
    await client.aclose()
    await server.aclose()
    assert not server.end_receiving()  # closed: nothing to end


async def test_end_receiving_again_only_says_whether_receiving_still_waits(
    readiness: hub.ReadinessHub | None,
) -> None:
    # The end of the grace period looks at a handler again while it has not ended: asking
    # again must not fail (the socket is shut down already) and must still say "waiting"
    # until the woken receiver has run.
    client, server = await maker(_tcp_pair, readiness)()
    received: list[bytes] = []

    async def receive() -> None:
        received.append(await server.receive_some(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert server.end_receiving()
        assert server.end_receiving()
    assert received == [b""]
    assert not server.end_receiving()  # nobody receives any more
    await client.aclose()
    await server.aclose()


async def test_a_reused_descriptor_number_starts_clean() -> None:
    # A connection whose socket ended is forgotten; a new socket that gets the same fd
    # number must not inherit its "ended" state, or its handler would spin on EAGAIN.
    if not hub.AVAILABLE:
        pytest.skip("no epoll on this platform")
    readiness = hub.ReadinessHub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readiness.run)
        client, server = _tcp_pair()
        fd = server.fileno()
        stream = LeanSocketStream(server, readiness)
        client.close()
        assert await stream.receive_some(10) == b""  # ended: remembered by the hub
        # A close that bypasses forget(): the state stays behind for this fd number.
        server.close()
        client2, server2 = _tcp_pair()
        try:
            if server2.fileno() != fd:
                # Make the new socket take the old number.
                server2 = socket.socket(fileno=_move_to(server2, fd))
            fresh = LeanSocketStream(server2, readiness)
            got: list[bytes] = []

            async def receive() -> None:
                got.append(await fresh.receive_some(10))

            async with trio.open_nursery() as inner:
                inner.start_soon(receive)
                # Nothing sent yet: the receiver must block.  A spinning one never does, and
                # this times out.
                with trio.fail_after(2):
                    await trio.testing.wait_all_tasks_blocked()
                assert got == []
                client2.sendall(b"hi")
            assert got == [b"hi"]
            await fresh.aclose()
        finally:
            client2.close()
            server2.close()
        nursery.cancel_scope.cancel()


def _move_to(sock: socket.socket, fd: int) -> int:
    os.dup2(sock.fileno(), fd)
    sock.close()
    return fd


async def test_send_some_nowait_sends_what_fits_without_a_checkpoint() -> None:
    left, right = socket.socketpair()
    stream = LeanSocketStream(left)
    with trio.testing.assert_no_checkpoints():
        assert stream.send_some_nowait(b"hello") == 5
    assert right.recv(10) == b"hello"
    _clog(left)
    assert stream.send_some_nowait(b"more") == 0  # the buffer is full: nothing waits
    # Wrappers pass it through (they change receiving only).
    assert LimitedStream(stream, 10).send_some_nowait == stream.send_some_nowait
    right.close()
    with pytest.raises(trio.BrokenResourceError):
        stream.send_some_nowait(b"x")
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        stream.send_some_nowait(b"x")


async def test_closing_a_closed_stream_in_a_cancelled_scope_costs_nothing() -> None:
    # serve_listeners ends every handler with aclose_forcefully (aclose in a cancelled scope);
    # the handler closed the stream already, so there is nothing to do: no Cancelled raised
    # only to be caught, no scheduler trip.  An open stream still closes, then raises.
    left, right = socket.socketpair()
    closed, still_open = LeanSocketStream(left), LeanSocketStream(right)
    await closed.aclose()
    with trio.CancelScope() as scope:
        scope.cancel()
        with trio.testing.assert_no_checkpoints():
            await closed.aclose()
        with pytest.raises(trio.Cancelled):
            await still_open.aclose()
    assert still_open.socket.fileno() == -1
