"""What a shutdown keeps: clients streaming numbered lines into a printing server, a SIGTERM with
a grace period in the middle, and the count of what was lost, torn or printed twice.

Three variants, each on a fresh server in text mode with its stdout on a pipe this scenario
reads (:data:`VARIANTS`):

* ``graceful``: one SIGTERM, ``--grace``.  Half the clients (the even ones) stop sending halfway
  through the grace period and shut their side: they should see the server's clean close.  The
  other half go on until the server closes them at the end of the grace period.
* ``forced``: a second SIGTERM a quarter into the grace period: what is kept when the server is
  told to stop at once.
* ``stalled``: nobody reads the server's stdout (a pipe shrunk to one page) from the start until
  well after the grace period and the models' drain timeout (``max(grace, 1)`` s) are over;
  then the reader resumes and drains.  What the server had read but not printed is kept or
  dropped; a server that blocks on its stdout exits only when the reader comes back.

The clients, the signals and the reader run in one thread, one selector loop with a deadline
(:class:`_Run`), so "written before the signal" is exact: the signal is sent by the same
thread that writes the lines.  The figures are flat (``lines_lost``, ``exit_s``,
``port_free``...); :func:`.keeps.render_correctness` makes the table.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import math
import os
import selectors
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Callable

import attrs

from trio_echo.bench.numbered import EOF, LINE_BYTES, MAX_CLIENTS, RESET, Client, Sent, tally
from trio_echo.bench.scenarios.base import Context, Figures, Result
from trio_echo.bench.scenarios.common import guard
from trio_echo.bench.server import ServerProcess
from trio_echo.models import Model

__all__ = ["FLAGS", "VARIANTS", "Variant", "correctness", "port_free"]

# The server flags the scenario needs (a model that refuses one is skipped, with the reason).
FLAGS = ("--format", "--grace")
# The second signal of the forced variant comes this far into the grace period: after the
# server has begun its graceful sequence, before any client has finished.
FORCE_AT = 0.25
# The finishing clients stop sending this far into the grace period: well inside it, so a
# server that serves them to their end closes them cleanly before the period is over.
FINISH_AT = 0.5
# The stalled variant's pipe: one page (the smallest the kernel allows), so the server's stdout
# blocks within milliseconds instead of after 64 KiB.
STALLED_PIPE_BYTES = 4096
# How long all the clients may take to connect (a server's listen backlog takes them at once).
CONNECT_TIMEOUT = 5.0
# How long after its deadline (grace, stall) a server may take to exit before it is killed.
EXIT_TIMEOUT = 10.0
# After the exit, how long the clients and the stdout pipe get to see their end.
SETTLE = 1.0
# The longest the loop sleeps: the bound on how late a scheduled step (a signal) can be.
TICK = 0.01


@attrs.frozen
class Variant:
    """One way to stop the server."""

    key: str
    title: str
    forced: bool = False  # a second SIGTERM during the grace period
    stalled: bool = False  # nobody reads stdout until after the grace period


VARIANTS = (
    Variant("graceful", "graceful (SIGTERM)"),
    Variant("forced", "forced (SIGTERM ×2)", forced=True),
    Variant("stalled", "stalled stdout", stalled=True),
)


def port_free(port: int) -> bool:
    """Whether a new server could listen on ``port`` (IPv4 loopback, and IPv6 loopback where
    there is one) right now, with ``SO_REUSEADDR`` as every server sets it."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                if family == socket.AF_INET:
                    raise
    return True


Step = tuple[float, Callable[[], None]]


class _Run:
    """One variant against one running server: the selector loop and what it saw.

    Times are seconds from the start of the streaming; the first signal comes at ``lead``."""

    def __init__(self, ctx: Context, server: ServerProcess, variant: Variant) -> None:
        sizes = ctx.sizes
        self.server = server
        self.variant = variant
        self.rate = sizes.correctness_rate
        self.grace = sizes.correctness_grace
        self.lead = sizes.correctness_lead
        self.stall = sizes.correctness_stall if variant.stalled else 0.0
        self.count = sizes.correctness_clients
        self.selector = selectors.DefaultSelector()
        assert server.proc.stdout is not None
        self.stdout = server.proc.stdout.fileno()
        os.set_blocking(self.stdout, False)
        if variant.stalled:
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(self.stdout, fcntl.F_SETPIPE_SZ, STALLED_PIPE_BYTES)
        self.output = bytearray()
        self.stdout_open = True
        self.clients: list[Client] = []
        self.signalled_at: float | None = None
        self.unread_at_signal: int | None = None
        self.exited_at: float | None = None
        self.port_free: bool | None = None
        # The server's exit as an event of the loop (Linux >= 5.3); else polled every tick.
        self.pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(server.proc.pid)

    def connect(self) -> None:
        """Connect every client, all within :data:`CONNECT_TIMEOUT` (one refused or too slow
        is left out, and counted)."""
        deadline = time.monotonic() + CONNECT_TIMEOUT
        for index in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.connect(("127.0.0.1", self.server.port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            client = Client(index, sock)
            self.clients.append(client)
            self.selector.register(sock, selectors.EVENT_READ, client)
        if self.pidfd is not None:
            self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")

    # ---- the steps ----------------------------------------------------------------------------

    def _steps(self) -> list[Step]:
        at = self.lead
        steps: list[Step] = [(at, self._first_signal), (at + self.stall, self._resume_reading)]
        if self.variant.forced:
            steps.append((at + self.grace * FORCE_AT, self._signal))
        steps += [(at + self.grace * FINISH_AT, c.stop) for c in self.clients if c.index % 2 == 0]
        return sorted(steps, key=lambda step: step[0])

    def _first_signal(self) -> None:
        for client in self.clients:
            client.mark_signal()
        with contextlib.suppress(OSError):
            unread = array.array("i", [0])
            fcntl.ioctl(self.stdout, termios.FIONREAD, unread)
            self.unread_at_signal = unread[0]
        self.signalled_at = time.monotonic()
        self._signal()

    def _signal(self) -> None:
        if self.server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.server.proc.send_signal(signal.SIGTERM)

    def _resume_reading(self) -> None:
        self.selector.register(self.stdout, selectors.EVENT_READ, "stdout")
        self._read_stdout()

    def _read_stdout(self) -> None:
        while self.stdout_open:
            try:
                chunk = os.read(self.stdout, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self.stdout_open = False
                self.selector.unregister(self.stdout)
                return
            self.output += chunk

    def _exited(self) -> None:
        self.exited_at = time.monotonic()
        self.port_free = port_free(self.server.port)
        if self.pidfd is not None:
            self.selector.unregister(self.pidfd)

    def _end(self, client: Client) -> None:
        self.selector.unregister(client.sock)
        client.close()

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Stream, signal, stop, until the server has exited and every client and the stdout
        pipe have seen their end (or :data:`SETTLE` after the exit), or until the deadline (the
        caller then kills the server)."""
        steps = self._steps()
        start = time.monotonic()
        deadline = self.lead + self.grace + self.stall + EXIT_TIMEOUT
        while True:
            now = time.monotonic() - start
            while steps and steps[0][0] <= now:
                steps.pop(0)[1]()
            if (
                self.exited_at is None
                and self.pidfd is None
                and self.server.proc.poll() is not None
            ):
                self._exited()
            for client in self.clients:
                if not client.done:
                    offset = client.index / self.count
                    client.queue(math.floor(now * self.rate - offset) + 1)
                    client.flush()
                    if client.done:
                        self._end(client)
            if self.exited_at is not None and not steps:
                settled = all(c.done for c in self.clients) and not self.stdout_open
                if settled or time.monotonic() - self.exited_at >= SETTLE:
                    return
            if now >= deadline:
                return
            timeout = min(TICK, deadline - now, *(at - now for at, _ in steps[:1]))
            for key, mask in self.selector.select(max(0.0, timeout)):
                if key.data == "stdout":
                    self._read_stdout()
                elif key.data == "exit":
                    self._exited()
                elif isinstance(key.data, Client) and mask & selectors.EVENT_READ:
                    key.data.on_readable()
                    if key.data.done:
                        self._end(key.data)

    def figures(self) -> Figures:
        """The counts (:func:`.numbered.tally`), how the clients' connections ended, the exit."""
        sent = [Sent(0, 0, 0)] * self.count
        for client in self.clients:
            sent[client.index] = client.sent()
        lines = self.output.decode(errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        counts = tally(sent, lines)
        finishers = [c for c in self.clients if c.index % 2 == 0]
        cut = [c for c in self.clients if c.index % 2 == 1]
        exit_s = (
            None
            if self.exited_at is None or self.signalled_at is None
            else round(self.exited_at - self.signalled_at, 3)
        )
        stderr = self.server.stderr.strip().splitlines()
        # What the server read but never printed, from its own summary of the bytes it
        # received (a client's line cut in its socket makes it at most a line high per client).
        received = self.server.received()
        read = None if received is None else received[1] // LINE_BYTES
        dropped = None if read is None else max(0, read - counts.lines_printed - counts.lines_torn)
        return {
            "clients": self.count,
            "clients_connected": len(self.clients),
            "line_bytes": LINE_BYTES,
            "lines_per_s_per_client": self.rate,
            "lead_s": self.lead,
            "grace_s": self.grace,
            "second_signal_s": round(self.grace * FORCE_AT, 3) if self.variant.forced else None,
            "stdout_stalled_s": self.stall if self.variant.stalled else None,
            # Bytes in the stdout pipe nobody had read when the signal came (the stalled
            # variant's pipe holds 4096: full means the server's writes were blocked).
            "stdout_unread_at_signal_bytes": self.unread_at_signal,
            # The output ends inside a line: the server's last write was cut short.
            "stdout_ends_mid_line": bool(self.output) and not self.output.endswith(b"\n"),
            **counts.to_json(),
            "server_received_bytes": None if received is None else received[1],
            "lines_read_not_printed": dropped,
            "clients_closed_eof": sum(c.outcome == EOF for c in self.clients),
            "clients_reset": sum(c.outcome == RESET for c in self.clients),
            "clients_unclosed": sum(c.outcome is None for c in self.clients),
            "finishers": len(finishers),
            "finishers_shut_down": sum(c.shut_down for c in finishers),
            "finishers_closed_eof": sum(c.outcome == EOF for c in finishers),
            "cut_clients_closed_eof": sum(c.outcome == EOF for c in cut),
            "cut_clients_reset": sum(c.outcome == RESET for c in cut),
            "exit_s": exit_s,
            "exit_status": self.server.proc.returncode if self.exited_at is not None else None,
            "killed": self.exited_at is None,
            "port_free": self.port_free,
            "server_last_line": stderr[-1] if stderr else "",
        }

    def close(self) -> None:
        for client in self.clients:
            if not client.done:
                client.close()
        self.selector.close()
        if self.pidfd is not None:
            os.close(self.pidfd)


def correctness(variant: Variant) -> Callable[[Context, Model], Result]:
    """The scenario of ``variant``: a fresh text-mode server of the model with
    ``--grace correctness_grace``, ``correctness_clients`` clients streaming numbered lines,
    and the count of what was kept (:class:`_Run`)."""

    def scenario(ctx: Context, model: Model) -> Result:
        sizes = ctx.sizes
        if not 2 <= sizes.correctness_clients <= MAX_CLIENTS:
            return Result(skipped=f"needs 2 to {MAX_CLIENTS} clients")

        def run() -> Result:
            flags = ["--format", "text", "--grace", f"{sizes.correctness_grace:g}"]
            with ctx.server(model, flags, stdout=subprocess.PIPE) as server:
                assert server.proc.stdout is not None
                with server.proc.stdout:
                    lab = _Run(ctx, server, variant)
                    try:
                        lab.connect()
                        lab.run()
                    finally:
                        server.kill()
                        lab.close()
                    figures = lab.figures()
            return Result(figures)

        return guard(run)

    return scenario
