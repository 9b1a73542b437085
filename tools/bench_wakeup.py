"""What one task wake-up costs in each event loop: the scheduler's share of an echo request.

An echo request in a task-per-connection server is, besides its ``recv`` and ``send``, one
wake-up of the connection's task: the readiness source (Trio: our epoll hub's
``reschedule``; asyncio: the protocol's ``data_received`` setting the stream reader's future)
marks the task runnable, the loop later resumes it, and it parks again.  This measures that
round trip alone, without sockets, for ``tasks`` parked tasks woken in batches (as the hub
wakes them), so that docs/performance.md can say what Trio's scheduler costs per request
against asyncio's (whose ``Task`` and ``Future`` are C in CPython) and uvloop's::

    python tools/bench_wakeup.py            # 100 tasks, 2,000 rounds, best of 5

It also times Trio's checkpoints, one task alone (no other task to switch to).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import trio
import trio.testing


def trio_wakeups(tasks: int, rounds: int) -> float:
    """Seconds per wake-up: ``tasks`` tasks parked in ``wait_task_rescheduled``, all woken by
    one driver per round (``reschedule``), each parking again."""
    parked: list[trio.lowlevel.Task] = []

    def abort(_: object) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.SUCCEEDED

    async def sleeper() -> None:
        while True:
            parked.append(trio.lowlevel.current_task())
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            reschedule = trio.lowlevel.reschedule
            began = time.perf_counter()
            for _ in range(rounds):
                woken = parked[:]
                parked.clear()
                for task in woken:
                    reschedule(task)  # as the hub does: a fresh Value(None)
                await trio.lowlevel.checkpoint()
                while len(parked) < tasks:  # all of them ran and parked again
                    await trio.lowlevel.checkpoint()
            elapsed = time.perf_counter() - began
            nursery.cancel_scope.cancel()
        return elapsed / (tasks * rounds)

    return trio.run(main)


def asyncio_wakeups(
    tasks: int, rounds: int, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> float:
    """The same with asyncio tasks each awaiting a fresh future (what ``StreamReader`` does),
    set by one driver per round."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        parked: list[asyncio.Future[None]] = []
        again = asyncio.Event()

        async def sleeper() -> None:
            while True:
                future = loop.create_future()
                parked.append(future)
                if len(parked) == tasks:
                    again.set()
                await future

        runners = [loop.create_task(sleeper()) for _ in range(tasks)]
        await again.wait()
        began = time.perf_counter()
        for _ in range(rounds):
            again.clear()
            woken = parked[:]
            parked.clear()
            for future in woken:
                future.set_result(None)
            await again.wait()
        elapsed = time.perf_counter() - began
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        return elapsed / (tasks * rounds)

    loop = new_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def trio_checkpoints(count: int) -> dict[str, float]:
    """Seconds per call of each of Trio's checkpoints, one task alone."""

    async def main() -> dict[str, float]:
        out = {}
        lowlevel = trio.lowlevel
        for name in ("checkpoint", "cancel_shielded_checkpoint", "checkpoint_if_cancelled"):
            function = getattr(lowlevel, name)
            began = time.perf_counter()
            for _ in range(count):
                await function()
            out[name] = (time.perf_counter() - began) / count
        return out

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-t", "--tasks", type=int, default=100)
    parser.add_argument("-r", "--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    loops: dict[str, Callable[[], float]] = {
        "trio (reschedule → wait_task_rescheduled)": lambda: trio_wakeups(args.tasks, args.rounds),
        "asyncio (future.set_result → task step)": lambda: asyncio_wakeups(
            args.tasks, args.rounds, asyncio.new_event_loop
        ),
    }
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loops["uvloop (future.set_result → task step)"] = lambda: asyncio_wakeups(
            args.tasks, args.rounds, uvloop.new_event_loop
        )
    print(f"one wake-up of one of {args.tasks} parked tasks, best of {args.repeats}:")
    for name, measure in loops.items():
        best = min(measure() for _ in range(args.repeats))
        print(f"  {name:<45} {best * 1e6:6.2f} µs")
    print("one checkpoint, one task alone, best of 5:")
    runs = [trio_checkpoints(args.rounds * 10) for _ in range(args.repeats)]
    for name in runs[0]:
        best = min(run[name] for run in runs)
        print(f"  trio.lowlevel.{name + '()':<40} {best * 1e6:6.2f} µs")


if __name__ == "__main__":
    main()
