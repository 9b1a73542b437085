"""The readiness hub: edge-triggered epoll events handed to waiting tasks, with no lost wakeup
(data, end of stream, errors, events that arrive while nobody waits) and Trio's usual
cancellation and closing semantics.  Real socket pairs, Trio's real clock."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trio.testing
from conftest import needs_epoll

from trio_echo.server.hub import ReadinessHub

# The hub is an epoll instance: where there is none, the server reads through Trio alone.
pytestmark = needs_epoll

# Generous: a wait that should return does so in microseconds; one that should not is checked
# with wait_all_tasks_blocked, never with a sleep.
TIMEOUT = 5


@pytest.fixture
async def hub() -> AsyncIterator[ReadinessHub]:
    hub = ReadinessHub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        yield hub
        nursery.cancel_scope.cancel()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


async def test_a_wait_returns_when_data_arrives(hub, pair) -> None:
    ours, theirs = pair
    hub.register(ours.fileno())
    woke = trio.Event()

    async def waiter() -> None:
        await hub.wait_readable(ours.fileno())
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        theirs.send(b"x")
        with trio.fail_after(TIMEOUT):
            await woke.wait()
    assert ours.recv(10) == b"x"
    hub.forget(ours.fileno())


async def test_data_and_end_of_stream_sent_before_registration_are_both_seen(hub, pair) -> None:
    # The half-closing client: its line and its FIN arrive before we even register.  A short
    # recv returns the line; the end of stream must still wake the next wait (sticky state).
    ours, theirs = pair
    theirs.send(b"line\n")
    theirs.shutdown(socket.SHUT_WR)
    hub.register(ours.fileno())
    with trio.fail_after(TIMEOUT):
        await hub.wait_readable(ours.fileno())
        assert ours.recv(100) == b"line\n"
        await hub.wait_readable(ours.fileno())
        assert ours.recv(100) == b""
        await hub.wait_readable(ours.fileno())  # and it stays readable
    hub.forget(ours.fileno())


async def test_an_event_while_nobody_waits_is_remembered(hub, pair) -> None:
    ours, theirs = pair
    hub.register(ours.fileno())
    theirs.send(b"early")
    await trio.testing.wait_all_tasks_blocked()  # the hub has taken the event by now
    with trio.fail_after(TIMEOUT):
        await hub.wait_readable(ours.fileno())
    assert ours.recv(10) == b"early"
    hub.forget(ours.fileno())


async def test_a_cancelled_wait_leaves_no_waiter_behind(hub, pair) -> None:
    ours, theirs = pair
    hub.register(ours.fileno())
    with trio.move_on_after(0.01) as scope:
        await hub.wait_readable(ours.fileno())
    assert scope.cancelled_caught
    # A new wait is allowed (no BusyResourceError) and still wakes on data.
    theirs.send(b"y")
    with trio.fail_after(TIMEOUT):
        await hub.wait_readable(ours.fileno())
    hub.forget(ours.fileno())


async def test_two_waiters_on_one_socket_is_an_error(hub, pair) -> None:
    ours, _ = pair
    hub.register(ours.fileno())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.wait_readable, ours.fileno())
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await hub.wait_readable(ours.fileno())
        nursery.cancel_scope.cancel()
    hub.forget(ours.fileno())


async def test_forget_wakes_a_waiter_with_closed_resource_error(hub, pair) -> None:
    ours, _ = pair
    hub.register(ours.fileno())
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await hub.wait_readable(ours.fileno())
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        hub.forget(ours.fileno())
    assert len(errors) == 1


async def test_end_wakes_the_waiter_at_once_and_the_socket_stays_readable(hub, pair) -> None:
    # What the end of the grace period relies on (LeanSocketStream.end_receiving): the waiter
    # is woken by end() itself, not by an epoll event (none comes here: the socket was not
    # shut down), and every later wait returns at once.
    ours, _ = pair
    hub.register(ours.fileno())
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.wait_readable, ours.fileno())
            await trio.testing.wait_all_tasks_blocked()
            hub.end(ours.fileno())
            # The nursery exits only once the waiter woke.
        await hub.wait_readable(ours.fileno())
        await hub.wait_readable(ours.fileno())
    hub.forget(ours.fileno())


async def test_a_reset_wakes_the_waiter(hub, pair) -> None:
    ours, theirs = pair
    hub.register(ours.fileno())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.wait_readable, ours.fileno())
        await trio.testing.wait_all_tasks_blocked()
        theirs.close()
        # The nursery exits only once the waiter woke.
    hub.forget(ours.fileno())
