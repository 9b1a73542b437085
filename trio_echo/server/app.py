"""Running the Trio server as a program: the stdout writer, the signals, the exit status.

``run()`` owns one nursery with three jobs in it -- the server, the stdout writer and the signal
watcher -- and decides the exit status:

* first SIGINT/SIGTERM: ``handle.shutdown()`` (stop accepting, grace period for the clients);
  when every connection is closed and stdout has taken everything, exit 0;
* second signal: cancel everything at once and exit ``128 + signal number``, the status a shell
  gives a process killed by that signal;
* stdout stalled at shutdown: once the clients are gone, stdout gets ``--grace`` seconds (at
  least ``MIN_DRAIN_TIMEOUT``) to take the rest; after that it is dropped and the exit status is 1;
* stdout closed by its reader: stop, and let the caller print one line and exit 1;
* SIGUSR1: the status dump on stderr (:mod:`trio_echo.metrics.status`), nothing else;
* SIGHUP: a stop like SIGTERM (the terminal went away), but with ``--output`` it reopens the
  file instead (:mod:`trio_echo.output.file`), and a ``--workers`` worker, whose supervisor
  writes that file, ignores it.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import attrs
import trio

from trio_echo.config import Config
from trio_echo.lifecycle import (
    MIN_DRAIN_TIMEOUT,
    Outcome,
    forces,
    log_forced,
    log_listening,
    log_stopping,
    watched_signals,
)
from trio_echo.logs import LOGGER
from trio_echo.metrics.observe import observe
from trio_echo.metrics.snapshot import Snapshot, take
from trio_echo.metrics.status import STATUS_SIGNAL, log_status
from trio_echo.output.file import OutputFile, write_file
from trio_echo.output.queue import open_output_queue
from trio_echo.output.writer import write_stdout
from trio_echo.server.datagram import log_stopped_receiving, serve_datagrams
from trio_echo.server.serve import Listener, ServerHandle, serve
from trio_echo.stats import ServerStats

__all__ = ["run", "run_trio"]


@attrs.define(eq=False)
class _SignalWatcher:
    """First signal: graceful shutdown.  Second: cancel everything (``everything``).

    A signal before the server is up (``handle`` still unset) forces the exit of a plain
    server: there is nothing to drain.  A ``--workers`` worker instead keeps it as the stop
    request that it is -- its supervisor forwards SIGTERM to a worker that is still starting --
    and stops gracefully once its server is up, so that it exits 0 like the others.
    """

    everything: trio.CancelScope
    forced_by: int | None = None
    # In a --workers worker: the user signals the supervisor, not us.
    worker: bool = False
    _handle: ServerHandle | None = attrs.field(default=None, init=False)
    # Set with the handle: a worker's early stop request waits for it.
    _attached: trio.Event = attrs.field(factory=trio.Event, init=False)
    # What SIGHUP does instead of stopping, with --output (None: it stops like SIGTERM).
    on_hangup: Callable[[], None] | None = None

    @property
    def handle(self) -> ServerHandle | None:
        """The running server, once it is up."""
        return self._handle

    @handle.setter
    def handle(self, handle: ServerHandle | None) -> None:
        self._handle = handle
        if handle is not None:
            self._attached.set()

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP and self.on_hangup is not None:
                self.on_hangup()
                continue
            if signum == STATUS_SIGNAL:
                self.dump_status()
                continue
            if self.worker:
                # Signals that come meanwhile wait in ``signals``; the first is the stop.
                await self._attached.wait()
            handle = self._handle
            if self.worker and handle is not None and handle.shutting_down:
                # A worker is forced by its supervisor (stop_when), not by a second signal:
                # under systemd or pkill a signal may reach it twice, directly and forwarded.
                continue
            if handle is not None and handle.shutting_down and not forces(signum):
                LOGGER.debug("SIGHUP again: the stop goes on (SIGINT or SIGTERM to force)")
                continue
            if handle is None or handle.shutting_down:
                if handle is not None:
                    log_forced(signum)
                self.forced_by = signum
                self.everything.cancel()
                return
            handle.shutdown()
            # The line says the listeners are closed: a balancer in front (or a test) may act on
            # it at once, so it comes only once that is true.  Closing takes one scheduler turn.
            await handle.accepting_stopped.wait()
            if handle.stats.udp:
                log_stopped_receiving(signum, handle.grace, hint=not self.worker)
            else:
                log_stopping(signum, handle.grace, handle.stats.active, hint=not self.worker)

    def dump_status(self) -> None:
        """SIGUSR1: the status dump, once the server is up (before, there is nothing)."""
        if (handle := self._handle) is not None:
            log_status(take(handle.stats, handle.output), handle.live)

    async def stop_when(self, trigger: Callable[[], Awaitable[str]]) -> None:
        """Close everything at once when ``trigger`` returns (why, for the log): a worker's
        supervisor forces the exit, or is gone, and with it the reader of its output."""
        why = await trigger()
        LOGGER.warning("%s: closing every connection now", why)
        self.everything.cancel()


async def run(
    config: Config,
    stdout_fd: int = 1,
    *,
    sockets: list[socket.socket] | None = None,
    framed: bool = False,
    announce: Callable[[ServerHandle], None] | None = None,
    stop_when: Callable[[], Awaitable[str]] | None = None,
    listeners: Callable[[], Awaitable[list[Listener]]] | None = None,
) -> Outcome:
    """Serve until a signal stops us; see the module docstring for the exit statuses.

    Errors (cannot listen, stdout closed) propagate out, inside an exception group.  A
    ``--workers`` worker (:mod:`trio_echo.workers.worker`) passes its listening ``sockets``, writes
    ``framed`` output, announces itself to its supervisor (``announce``) instead of the
    start-up line, and closes everything when ``stop_when`` returns (its supervisor says so, or
    is gone).  ``listeners``, if given, opens the Trio listeners to serve in place of ours
    (the ``trio-stock`` model's).
    """

    # Listen for signals before anything else, so that a signal during start-up is not lost.
    watching = (*watched_signals(config.output is not None), STATUS_SIGNAL)
    with trio.open_signal_receiver(*watching) as signals:
        queue, reader = open_output_queue(config.queue_bytes)
        # --output: the file, opened once the server listens; a worker's is its supervisor's.
        output = OutputFile(config.output) if config.output is not None and not framed else None
        async with trio.open_nursery() as nursery:
            watcher = _SignalWatcher(nursery.cancel_scope, worker=config.worker_id is not None)
            if output is not None:
                watcher.on_hangup = output.request_reopen
            elif config.output is not None:
                watcher.on_hangup = partial(LOGGER.debug, "SIGHUP: the supervisor reopens --output")
            nursery.start_soon(watcher.watch, signals)
            if stop_when is not None:
                nursery.start_soon(watcher.stop_when, stop_when)
            async with trio.open_nursery() as work:
                if output is None:
                    work.start_soon(
                        partial(
                            write_stdout,
                            queue,
                            reader,
                            stdout_fd,
                            framed=framed,
                            accelerate=config.accelerate,
                        )
                    )
                try:
                    serving = None if listeners is None else await listeners()
                    # --udp: datagrams instead of connections (trio_echo.server.datagram).
                    server = serve_datagrams if config.udp else partial(serve, listeners=serving)
                    handle = await work.start(
                        partial(server, sockets=sockets), config, None if config.quiet else queue
                    )
                    watcher.handle = handle
                    if output is not None:
                        await output.open()
                        work.start_soon(write_file, queue, reader, output)
                    if config.metrics is not None or config.stats_interval is not None:
                        page = partial(_page, handle)
                        await work.start(
                            observe, config.metrics, config.stats_interval, page, handle.stopped
                        )
                    if announce is None:
                        log_listening(handle.addresses, config)
                    else:
                        announce(handle)
                    await handle.stopped.wait()
                    # Every client is gone; stdout gets as long to take the rest as they got.
                    drain_timeout = max(config.grace, MIN_DRAIN_TIMEOUT)
                    work.cancel_scope.deadline = trio.current_time() + drain_timeout
                finally:
                    # No more output after this; the writer drains what is queued, then ends.
                    await queue.aclose()
            nursery.cancel_scope.cancel()  # stop the signal watcher
        stats = watcher.handle.stats if watcher.handle else ServerStats()
        if watcher.forced_by is not None:
            return Outcome.forced(watcher.forced_by, stats)
        if work.cancel_scope.cancelled_caught:
            return Outcome.drain_failed(drain_timeout, stats)
        return Outcome.stopped(stats)


async def _page(handle: ServerHandle) -> Snapshot:
    """A snapshot of this server, for the observers."""
    return take(handle.stats, handle.output)


def run_trio(config: Config) -> Outcome:
    """The ``trio`` model's entry point (see :mod:`trio_echo.models`)."""
    return trio.run(run, config)
