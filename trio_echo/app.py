"""Running the Trio server as a program: the stdout writer, the signals, the exit status.

``run()`` owns one nursery with three jobs in it -- the server, the stdout writer and the signal
watcher -- and decides the exit status:

* first SIGINT/SIGTERM: ``handle.shutdown()`` (stop accepting, grace period for the clients);
  when every connection is closed and stdout has taken everything, exit 0;
* second signal: cancel everything at once and exit ``128 + signal number``, the status a shell
  gives a process killed by that signal;
* stdout stalled at shutdown: once the clients are gone, stdout gets ``--grace`` seconds (at
  least ``MIN_DRAIN_TIMEOUT``) to take the rest; after that it is dropped and the exit status is 1;
* stdout closed by its reader: stop, and let the caller print one line and exit 1.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import attrs
import trio

from .config import Config
from .listen import describe_addresses
from .logs import LOGGER, NOTICE
from .server import ServerHandle, serve
from .writer import open_output_queue, write_stdout

__all__ = ["Outcome", "run", "run_trio"]

# At shutdown, once the clients are gone, stdout gets the grace period (but at least this many
# seconds) to take what is still queued: a reader that stopped reading must not keep a stopped
# server alive forever.
MIN_DRAIN_TIMEOUT = 1.0

# The signals that mean "please stop": Ctrl-C, and what systemd, docker and kill send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@attrs.frozen
class Outcome:
    """How a run ended: the exit status and the one-line summary for stderr."""

    exit_status: int
    summary: str


@attrs.define(eq=False)
class _SignalWatcher:
    """First signal: graceful shutdown.  Second: cancel everything (``everything``)."""

    everything: trio.CancelScope
    handle: ServerHandle | None = None
    forced_by: int | None = None

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.handle is None or self.handle.shutting_down:
                if self.handle is not None:
                    LOGGER.warning("%s again: closing every connection now", name)
                self.forced_by = signum
                self.everything.cancel()
                return
            self.handle.shutdown()
            active = self.handle.stats.active
            LOGGER.log(
                NOTICE,
                "%s: stopped accepting; waiting up to %g s for %d client%s (%s again to force)",
                name,
                self.handle.grace,
                active,
                "" if active == 1 else "s",
                name,
            )


async def run(config: Config, stdout_fd: int = 1) -> Outcome:
    """Serve until a signal stops us; see the module docstring for the exit statuses.

    Errors (cannot listen, stdout closed) propagate out, inside an exception group.
    """
    # Listen for signals before anything else, so that a signal during start-up is not lost.
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        queue, receive = open_output_queue(config.queue_bytes)
        async with trio.open_nursery() as nursery:
            watcher = _SignalWatcher(nursery.cancel_scope)
            nursery.start_soon(watcher.watch, signals)
            async with trio.open_nursery() as work:
                work.start_soon(write_stdout, queue, receive, stdout_fd)
                try:
                    handle = await work.start(serve, config, None if config.quiet else queue)
                    watcher.handle = handle
                    LOGGER.log(
                        NOTICE,
                        "listening on %s (%s)",
                        describe_addresses(handle.addresses),
                        config.describe_mode(),
                    )
                    await handle.stopped.wait()
                    # Every client is gone; stdout gets as long to take the rest as they got.
                    drain_timeout = max(config.grace, MIN_DRAIN_TIMEOUT)
                    work.cancel_scope.deadline = trio.current_time() + drain_timeout
                finally:
                    # No more output after this; the writer drains what is queued, then ends.
                    await queue.aclose()
            nursery.cancel_scope.cancel()  # stop the signal watcher
        if watcher.forced_by is not None:
            stats = watcher.handle.stats.summary() if watcher.handle else "not started"
            return Outcome(128 + watcher.forced_by, f"forced exit: {stats}")
        assert watcher.handle is not None
        summary = watcher.handle.stats.summary()
        if work.cancel_scope.cancelled_caught:
            return Outcome(
                1,
                f"stdout did not take the last output within {drain_timeout:g} s after the last "
                f"client left; the rest was dropped: {summary}",
            )
        return Outcome(0, f"stopped: {summary}")


def run_trio(config: Config) -> Outcome:
    """The ``trio`` model's entry point (see :mod:`trio_echo.models`)."""
    return trio.run(run, config)
