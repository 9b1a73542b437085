"""``--workers N``: a supervisor process and N Trio worker processes that share the port.

One Trio process uses one core.  With ``--workers N`` the process started from the command line
becomes a small supervisor (this module, Trio too) and N workers
(:mod:`trio_echo.workers.worker`) do the serving, each the ordinary server on its own core:

* **Sharing the port**: :mod:`trio_echo.workers.ports` (``SO_REUSEPORT`` sockets per worker
  where the kernel balances them, else one set every worker accepts from).
* **Restarts.**  A worker that exits while nobody asked it to is started again after a
  back-off (``RESTART_FIRST_DELAY``, doubling up to ``RESTART_MAX_DELAY``, back to the first
  after ``HEALTHY_AFTER`` of good service), with a warning line each time.  A worker of the
  first start that ends before it is ready is not restarted: the server cannot start (the
  worker said why on stderr), and the supervisor exits with status 1.
* **Signals.**  Workers run in a session of their own, so a Ctrl-C on the terminal reaches
  the supervisor only (and a worker writing to the terminal is never stopped as a background
  job), which forwards one SIGTERM to each worker: they all stop
  accepting at once and drain within the same ``--grace``.  The supervisor exits 0 once they
  all have.  On a second signal it tells them over their control sockets to close everything
  (a worker ignores signals after its first: under systemd's default ``KillMode`` or ``pkill``
  the first one may reach it twice, directly and forwarded); workers still alive
  ``KILL_AFTER_FORCE`` later are killed.  A forced worker exits 128 + N like the supervisor,
  and the supervisor's summary names the workers that closed their connections.  SIGHUP is a
  stop signal too, but with ``--output`` the supervisor, which writes the file, reopens it
  (and a worker ignores it).  However
  stalled stdout is, a stop takes at most ``--grace`` plus one drain period
  (:meth:`Supervisor.drain_deadline`): the workers, the relays and the writer share it.
* **Output.**  Each worker's stdout is a pipe to the supervisor, written in frames of whole
  batches (:mod:`trio_echo.output.frames`).  The supervisor reads every pipe and puts each complete
  frame into one bounded output queue (:mod:`trio_echo.output.writer`), whose single writer owns the
  real stdout: lines of different workers never mix inside a line, whatever their size, and
  the backpressure chain stays whole (slow stdout -> full queue -> supervisor stops reading a
  pipe -> the worker's writer blocks -> its queue fills -> its clients wait).  The cost is one
  more copy of the output through the supervisor (docs/performance.md measures it).
* **Diagnostics.**  Workers write stderr themselves: each line is one short ``write``, whole on
  a pipe or terminal, tagged ``worker N:``.  Workers are numbered 1, 2, ... in the order they
  are started (a replacement gets a new number); jsonl records carry ``"worker"``, so
  ``(worker, conn)`` names a connection.  The supervisor sums the workers' counts into the
  usual summary line.

The program around it -- the signal receiver, the port, the output writer, the nurseries and the
exit status -- is :mod:`trio_echo.workers.run`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import attrs
import trio

from trio_echo.config import Config
from trio_echo.lifecycle import (
    MIN_DRAIN_TIMEOUT,
    WorkerError,
    force_hint,
    forces,
    log_listening,
)
from trio_echo.logs import LOGGER, NOTICE
from trio_echo.metrics.snapshot import Snapshot
from trio_echo.metrics.status import STATUS_SIGNAL, log_status
from trio_echo.net.bind import ListenError, bind_reuseport
from trio_echo.net.datagram import bind_datagram_reuseport
from trio_echo.output.file import OutputFile
from trio_echo.output.queue import OutputQueue
from trio_echo.stats import ServerStats
from trio_echo.workers.figures import WorkerFigures
from trio_echo.workers.process import describe_exit, grow_pipe, interpreter_flags
from trio_echo.workers.relay import relay
from trio_echo.workers.worker import WorkerSpec, force_message

__all__ = [
    "HEALTHY_AFTER",
    "KILL_AFTER_FORCE",
    "RESTART_FIRST_DELAY",
    "RESTART_MAX_DELAY",
    "Supervisor",
]

# A worker that died is started again after this long at first: long enough not to spin on a
# worker that dies at once, short enough that a one-off crash costs a fraction of a second.
RESTART_FIRST_DELAY = 0.1

# Each death in a row doubles the delay, up to this: a worker that keeps crashing costs a
# start-up every few seconds, not a core.
RESTART_MAX_DELAY = 10.0

# A worker that served this long before it died was healthy: its replacement starts at the
# first delay again.
HEALTHY_AFTER = 30.0

# After the second signal the workers close everything at once; one still alive this much
# later is stuck, and killed.
KILL_AFTER_FORCE = 2.0


@attrs.define(eq=False)
class Supervisor:
    """The workers of one run: starting, restarting, signalling them, and relaying their
    output into ``queue``."""

    config: Config
    log_level: str
    queue: OutputQueue
    # The addresses every worker listens on (port resolved), and the listening sockets that
    # they all share, if any: inherited (--fd, systemd), or bound once by the supervisor where
    # SO_REUSEPORT does not balance.  Empty: each worker gets its own (bind_reuseport).
    addresses: list[tuple[object, ...]]
    shared: list[socket.socket] = attrs.field(factory=list)
    stats: ServerStats = attrs.field(factory=ServerStats)
    live: dict[int, trio.Process] = attrs.field(factory=dict)
    controls: dict[int, socket.socket] = attrs.field(factory=dict)
    stop_requested: trio.Event = attrs.field(factory=trio.Event)
    # When the output of a graceful stop is given up on: the first signal, plus the grace
    # period, plus one drain period (see drain_deadline).
    stop_deadline: float | None = None
    forced_by: int | None = None
    restarts: int = 0
    # Workers that ended badly while stopping (not forced): the exit status is then 1.
    failures: list[str] = attrs.field(factory=list)
    # After a second signal: the workers that closed their connections when told to, and how
    # the others that did not stop gracefully ended ("worker 3 was killed by SIGKILL").
    forced_workers: list[int] = attrs.field(factory=list)
    killed: list[str] = attrs.field(factory=list)
    # --output: the file the supervisor writes the workers' output to, reopened on SIGHUP.
    output: OutputFile | None = None
    # The workers' counters, for --metrics, --stats-interval and SIGUSR1 (figures.py).
    figures: WorkerFigures = attrs.field(
        default=attrs.Factory(lambda self: WorkerFigures(self.stats, self.queue), takes_self=True)
    )
    # The workers that said they are ready (and so listen for SIGUSR1).
    serving: set[int] = attrs.field(factory=set)
    _numbers: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _first_ready: int = 0

    # ---- signals ---------------------------------------------------------------------------

    async def watch(self, signals: AsyncIterator[int]) -> None:
        """First signal: every worker drains (SIGTERM).  Second: every worker closes everything
        (``FORCE`` on its control socket); ``KILL_AFTER_FORCE`` later, SIGKILL for any still
        alive."""
        async for signum in signals:
            if signum == signal.SIGHUP and self.output is not None:
                # logrotate's: the workers write to us, and we to the file (they ignore it).
                self.output.request_reopen()
                continue
            if signum == STATUS_SIGNAL:
                await self.dump_status()
                continue
            name = signal.Signals(signum).name
            if not self.stop_requested.is_set():
                self.stop_deadline = trio.current_time() + self.config.grace + self.drain_timeout
                self.stop_requested.set()
                # Our copies of the shared sockets: each closes when the workers close theirs,
                # so that a client or a balancer sees refusals, not a queue nobody serves.
                for sock in self.shared:
                    sock.close()
                LOGGER.log(
                    NOTICE,
                    "%s: stopping %d worker%s: they stop accepting and give their clients up "
                    "to %g s (%s)",
                    *(name, len(self.live), "" if len(self.live) == 1 else "s"),
                    *(self.config.grace, force_hint(signum)),
                )
                self._signal_all(signal.SIGTERM)
            elif forces(signum):
                LOGGER.warning("%s again: closing every connection now", name)
                self.forced_by = signum
                for control in list(self.controls.values()):
                    with contextlib.suppress(OSError):
                        control.send(force_message(signum))
                await trio.sleep(KILL_AFTER_FORCE)
                self._signal_all(signal.SIGKILL)
                return

    @property
    def drain_timeout(self) -> float:
        """How long stdout may take the last output once the clients are gone."""
        return max(self.config.grace, MIN_DRAIN_TIMEOUT)

    def drain_deadline(self) -> float:
        """Until when the output still on its way (a worker's pipe, the output queue) may
        reach stdout.

        After a stop, one deadline for all of it: the workers' drains, the relays that empty
        their pipes and the supervisor's own writer run at the same time, against a stdout
        that is stalled for all of them.  A drain period each, one after another, made a stop
        last grace + three drain periods, past what the stop line promises and past
        systemd's TimeoutStopSec (docs/deployment.md).  Without a stop (a worker died): one
        drain period from now.
        """
        if self.stop_deadline is not None:
            return self.stop_deadline
        return trio.current_time() + self.drain_timeout

    def describe_forced(self) -> str:
        """How the workers ended after the second signal, for the summary: ``workers 1, 2
        closed every connection``."""
        parts = []
        if numbers := sorted(self.forced_workers):
            parts.append(
                f"worker{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))} "
                "closed every connection"
            )
        return "; ".join(parts + self.killed)

    async def dump_status(self) -> None:
        """SIGUSR1: the totals here, then each worker dumps its own connections (tagged with
        its number).  Only workers that said they serve get it: one still starting would die
        of it."""
        log_status(await self.snapshot(), None)
        for number in self.serving & set(self.live):
            self.live[number].send_signal(STATUS_SIGNAL)

    async def snapshot(self) -> Snapshot:
        """Every worker's counters, added up (:mod:`trio_echo.workers.figures`)."""
        return await self.figures.gather(self.controls, len(self.live), self.restarts)

    def _signal_all(self, signum: int) -> None:
        for process in list(self.live.values()):
            if process.returncode is None:
                process.send_signal(signum)

    # ---- one worker slot -------------------------------------------------------------------

    async def run_slot(self) -> None:
        """Keep one worker running until the stop: start it, wait for it, restart it."""
        delay = RESTART_FIRST_DELAY
        first = True
        while not self.stop_requested.is_set():
            number = next(self._numbers)
            began = trio.current_time()
            ready = trio.Event()
            try:
                returncode = await self._run_worker(number, ready, first)
            except ListenError as exc:
                if first:
                    raise
                # Every worker gone and the port taken meanwhile: try again after the back-off.
                LOGGER.error("worker %d: %s", number, exc)
                returncode = None
            if self.stop_requested.is_set():
                if self.forced_by is None:
                    if returncode not in (0, -signal.SIGTERM):
                        self.failures.append(f"worker {number} {describe_exit(returncode)}")
                elif returncode is not None and returncode > 128:
                    self.forced_workers.append(number)  # 128 + N: it was forced (worker.py)
                elif returncode != 0:
                    self.killed.append(f"worker {number} {describe_exit(returncode)}")
                return
            if first and not ready.is_set():
                raise WorkerError(
                    f"worker {number} {describe_exit(returncode)} before it was ready "
                    "(see its error above)"
                )
            first = False
            if trio.current_time() - began >= HEALTHY_AFTER:
                delay = RESTART_FIRST_DELAY
            self.restarts += 1
            LOGGER.warning(
                "worker %d %s; starting a new worker in %g s",
                *(number, describe_exit(returncode), delay),
            )
            with trio.move_on_after(delay):
                await self.stop_requested.wait()
            delay = min(delay * 2, RESTART_MAX_DELAY)

    async def _run_worker(self, number: int, ready: trio.Event, first: bool) -> int | None:
        """Start worker ``number``, relay its output and messages until it exits; its exit
        status (negative: killed by that signal)."""
        if self.shared:
            # Duplicates, taken before any checkpoint (run_slot saw no stop): the first signal
            # closes self.shared while the process may still be forked in a thread, and its
            # descriptor numbers must stay valid (and ours) until then.
            sockets = [sock.dup() for sock in self.shared]
        else:
            bind = bind_datagram_reuseport if self.config.udp else bind_reuseport
            sockets = await trio.to_thread.run_sync(bind, self.addresses)
        fds = tuple(sock.fileno() for sock in sockets)
        spec = WorkerSpec(
            # The supervisor serves the metrics and prints the interval line, for them all.
            attrs.evolve(
                self.config,
                fds=fds,
                workers=1,
                worker_id=number,
                metrics=None,
                stats_interval=None,
            ),
            self.log_level,
        )
        ours, theirs = socket.socketpair()
        read_fd, write_fd = os.pipe()
        try:
            grow_pipe(write_fd)
            ours.sendall(pickle.dumps(spec))
            process = await trio.lowlevel.open_process(
                [
                    *(sys.executable, *interpreter_flags()),
                    *("-m", "trio_echo.workers.worker", str(theirs.fileno())),
                ],
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                pass_fds=(*fds, theirs.fileno()),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            ours.close()
            raise
        finally:
            # The worker has its copies now; its listening sockets live and die with it (its
            # own, or its copies of the shared ones).
            os.close(write_fd)
            theirs.close()
            for sock in sockets:
                sock.close()
        self.live[number] = process
        self.controls[number] = ours
        if self.stop_requested.is_set():
            # The signal came while it was being started: it missed the forwarded one.
            process.send_signal(signal.SIGTERM)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay, read_fd, number, self.queue)
                nursery.start_soon(self._messages, ours, number, ready, first)
                await process.wait()
                # The relay still empties the pipe; if stdout is stalled, not for ever.
                nursery.cancel_scope.deadline = self.drain_deadline()
        finally:
            del self.live[number]
            del self.controls[number]
            self.serving.discard(number)
            self.figures.retire(number)
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            ours.close()
        returncode: int | None = process.returncode
        return returncode

    async def _messages(
        self, control: socket.socket, number: int, ready: trio.Event, first: bool
    ) -> None:
        """Worker ``number``'s JSON lines on the control socket: ``ready``, then its counts."""
        sock = trio.socket.from_stdlib_socket(control)
        pending = b""
        while True:
            try:
                data = await sock.recv(4096)
            except ConnectionResetError:
                # It ended without reading all its spec (it died at start-up): the kernel
                # resets a socket closed with unread data.  Its exit status says the rest.
                return
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                message = json.loads(line)
                if "ready" in message:
                    ready.set()
                    self._ready(number, int(message["ready"]), first)
                if "snapshot" in message and message["snapshot"] is not None:
                    self.figures.received(number, message["snapshot"])
                if "status" in message:
                    self.stats.connections += int(message.get("connections", 0))
                    self.stats.bytes_received += int(message.get("bytes", 0))
                    self.stats.add_datagrams(message, shared=bool(self.shared))  # --udp

    def _ready(self, number: int, pid: int, first: bool) -> None:
        self.serving.add(number)
        LOGGER.info("worker %d (pid %d) is serving", number, pid)
        if first:
            self._first_ready += 1
            if self._first_ready == self.config.workers and not self.stop_requested.is_set():
                log_listening(self.addresses, self.config)
