"""The output queue's byte budget as an embedder sees it: ``async for item in reader``.

Every test runs on trio's autojumping ``MockClock``: a consumer that deadlocks the producers
makes the clock jump straight to the ``fail_after`` deadline, so the failure is immediate and
deterministic instead of a hung test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_echo.config import DEFAULT_QUEUE_BYTES
from trio_echo.output.queue import OutputQueue, open_output_queue
from trio_echo.output.stdout import StdoutError

CHUNK = b"x" * (1 << 20)


async def test_async_for_gives_the_budget_back_so_producers_never_deadlock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Twice the default budget through a queue read only with `async for`, as an embedder
    # would: every item handed out must give its cost back, or the producer waits forever.
    queue, reader = open_output_queue()
    count = 2 * DEFAULT_QUEUE_BYTES // len(CHUNK)
    received = 0

    async def produce() -> None:
        for _ in range(count):
            await queue.put(CHUNK)
        await queue.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with reader:
                async for item in reader:
                    received += len(item)
    assert received == count * len(CHUNK)
    assert queue.used == 0


async def test_async_for_keeps_the_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    # The budget is given back when an item is handed out, not before: while nobody reads,
    # a put that does not fit still waits.
    queue, reader = open_output_queue(limit=2 * OutputQueue.cost(b"a" * 100))
    await queue.put(b"a" * 100)
    await queue.put(b"b" * 100)
    done = trio.Event()

    async def third_put() -> None:
        await queue.put(b"c" * 100)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third_put)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # the budget is spent and nobody reads: backpressure
        assert await reader.__anext__() == b"a" * 100  # one item out: room for one more
        await trio.testing.wait_all_tasks_blocked()
        assert done.is_set()
    assert queue.used == 2 * OutputQueue.cost(b"a" * 100)


async def test_an_item_larger_than_the_budget_still_goes_through_async_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The one exception to the budget (an item larger than all of it goes when the queue is
    # empty) must not turn into a deadlock for an iterating reader either.
    queue, reader = open_output_queue(limit=100)
    items = [b"big" * 100, b"small", b"big" * 100]

    async def produce() -> None:
        for item in items:
            await queue.put(item)
        await queue.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            assert [item async for item in reader] == items
    assert queue.used == 0


async def test_writing_through_a_file_in_order_until_a_write_is_slow(tmp_path: Path) -> None:
    """Items go straight into the file as they are put; once a write took longer than
    ``slow``, they queue for the writer task (which writes from a worker thread), in order."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        queue, _ = open_output_queue()
        queue.write_through(fd)  # never slow
        queue.put_nowait(b"one\n")
        await queue.put(b"two\n")
        assert path.read_bytes() == b"one\ntwo\n"
        assert (queue.used, queue.written) == (0, 8)
        queue.write_through(fd, slow=0.0)  # every write is slow: the first one ends it
        queue.put_nowait(b"three\n")
        assert path.read_bytes() == b"one\ntwo\nthree\n"
        assert not queue.writing_through
        queue.put_nowait(b"four\n")
        assert path.read_bytes() == b"one\ntwo\nthree\n"  # queued for the writer now
        (item,), cost = queue.take(0)
        assert item == b"four\n"
        assert cost == queue.used
    finally:
        os.close(fd)


async def test_a_failure_while_writing_through_is_raised_by_the_writer(tmp_path: Path) -> None:
    """stdout failing under a handler's put is the writer's to report, as for its own
    writes: the handler goes on, the writer raises it."""
    fd = os.open(tmp_path / "read-only", os.O_RDONLY | os.O_CREAT)
    try:
        queue, reader = open_output_queue()
        queue.write_through(fd)
        queue.put_nowait(b"lost\n")  # EBADF: no exception here
        with pytest.raises(StdoutError, match="cannot write to stdout"):
            async with reader:
                await queue.wait_for_items()
        await queue.put(b"x" * (1 << 20))  # the writer is gone: nothing waits, nothing kept
        assert queue.used == 0
    finally:
        os.close(fd)
