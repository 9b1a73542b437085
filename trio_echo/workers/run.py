"""``--workers N``, the program: the supervisor's signals, port, output writer and nurseries.

What the supervisor does is :mod:`trio_echo.workers.supervisor`; this is the nursery tree it
runs in and the exit status it ends with, as :mod:`trio_echo.server.app` is for one process.
"""

from __future__ import annotations

from functools import partial

import trio

from trio_echo.config import Config
from trio_echo.lifecycle import Outcome, watched_signals
from trio_echo.logs import LOGGER, NOTICE
from trio_echo.metrics.observe import observe
from trio_echo.metrics.status import STATUS_SIGNAL
from trio_echo.output.file import OutputFile, write_output
from trio_echo.output.queue import open_output_queue
from trio_echo.stats import ServerStats
from trio_echo.workers.ports import open_port
from trio_echo.workers.supervisor import Supervisor

__all__ = ["run_supervisor", "supervise"]


async def supervise(config: Config, log_level: str) -> Outcome:
    """Run ``config.workers`` workers until a signal stops them; the exit status as for one
    process (see :mod:`trio_echo.server.app`)."""
    watching = (*watched_signals(config.output is not None), STATUS_SIGNAL)
    with trio.open_signal_receiver(*watching) as signals:
        shared, addresses = await open_port(config)
        queue, reader = open_output_queue(config.queue_bytes)
        out = None if config.output is None else OutputFile(config.output)
        supervisor = Supervisor(
            config,
            log_level,
            queue,
            addresses,
            shared,
            output=out,
            stats=ServerStats(udp=config.udp),
        )
        try:
            if out is not None:
                await out.open()  # once the port is ours: a port in use leaves no file
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervisor.watch, signals)
                if config.metrics is not None or config.stats_interval is not None:
                    # Until the end: the cancel below, once the workers and stdout are done.
                    await nursery.start(
                        observe,
                        config.metrics,
                        config.stats_interval,
                        supervisor.snapshot,
                        trio.Event(),
                    )
                async with trio.open_nursery() as output:
                    output.start_soon(
                        partial(write_output, queue, reader, out, accelerate=config.accelerate)
                    )
                    try:
                        async with trio.open_nursery() as workers:
                            for _ in range(config.workers):
                                workers.start_soon(supervisor.run_slot)
                        # Every worker is gone: stdout gets what is left of the stop's drain
                        # period (nothing, after a forced stop).
                        if supervisor.forced_by is not None:
                            output.cancel_scope.cancel()
                        output.cancel_scope.deadline = supervisor.drain_deadline()
                    finally:
                        await queue.aclose()
                nursery.cancel_scope.cancel()  # stop the signal watcher and the observers
        finally:
            for sock in shared:
                sock.close()
    stats = supervisor.stats
    if supervisor.restarts:
        LOGGER.log(NOTICE, "workers restarted: %d", supervisor.restarts)
    if supervisor.forced_by is not None:
        return Outcome.forced(supervisor.forced_by, stats, supervisor.describe_forced())
    if output.cancel_scope.cancelled_caught:
        return Outcome.drain_failed(supervisor.drain_timeout, stats)
    if supervisor.failures:
        return Outcome(1, f"{supervisor.failures[0]} while stopping: {stats.summary()}", stats)
    return Outcome.stopped(stats)


def run_supervisor(config: Config, log_level: str) -> Outcome:
    """``trio-echo --workers N`` (N > 1): see the module docstring."""
    return trio.run(supervise, config, log_level)
