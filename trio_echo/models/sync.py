"""The ``sync`` model: the article's blocking server, one client at a time.

It exists to show the problem: while one client is served, the next waits in the kernel's listen
backlog (its ``connect`` succeeds, its bytes wait unread) until the first has gone.

Every wait is a ``select`` that also watches the signals' self-pipe (see
:class:`~trio_echo.models._common.StopSignals`), with the next deadline (grace period, idle
timeout) as its timeout.  The first SIGINT/SIGTERM closes the listeners at once (clients in the
backlog are reset) and lets the current client go on for ``--grace`` seconds; a second signal
raises from the handler.  Deviations: ``--max-connections`` makes no sense (it is always 1),
and a stalled stdout blocks the whole server until it moves (or a second signal).
"""

from __future__ import annotations

import socket
import time

import attrs

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.lifecycle import Outcome, log_forced, log_listening, log_stopping
from trio_echo.models._common import BlockingStdout, Forced, StopSignals, accept, lost_reason
from trio_echo.net.bind import bind_sockets
from trio_echo.output.stdout import StdoutClosed, StdoutError
from trio_echo.stats import ServerStats


def run(config: Config, stdout_fd: int = 1) -> Outcome:
    with StopSignals() as signals:
        server = _Server(config, BlockingStdout(stdout_fd), signals)
        server.listeners = bind_sockets(config.hosts, config.port)
        try:
            for listener in server.listeners:
                listener.setblocking(False)
            log_listening([sock.getsockname() for sock in server.listeners], config)
            server.serve_until_signal()
        except Forced as forced:
            log_forced(forced.signum)
            return Outcome.forced(forced.signum, server.stats)
        finally:
            server.close_listeners()
    return Outcome.stopped(server.stats)


@attrs.define(eq=False)
class _Server:
    config: Config
    stdout: BlockingStdout
    signals: StopSignals
    listeners: list[socket.socket] = attrs.field(factory=list)
    stats: ServerStats = attrs.field(factory=ServerStats)

    def serve_until_signal(self) -> None:
        while self.signals.first is None:
            for listener in self.signals.wait(self.listeners):
                if (accepted := accept(listener)) is not None:
                    self.serve_client(*accepted)
                    break  # back to select: a signal may have come meanwhile
        if self.listeners:  # the signal came while idle: nobody to wait for
            self.stop_accepting(active=0)

    def close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()

    def stop_accepting(self, active: int) -> None:
        self.close_listeners()
        assert self.signals.first is not None
        log_stopping(self.signals.first, self.config.grace, active)

    def serve_client(self, client: socket.socket, address: object) -> None:
        """Read one client until it leaves, goes idle, or the grace period is over."""
        config = self.config
        conn = Connection.open(config, self.stats, address)
        deadlines = _Deadlines(config.idle_timeout)
        with client:
            try:
                self.stdout.write(conn.opened())
                while True:
                    if deadlines.grace is None and self.signals.first is not None:
                        self.stop_accepting(active=1)  # the current client goes on
                        deadlines.grace = time.monotonic() + config.grace
                    timeout = deadlines.timeout()
                    # The timeout bounds the echo's sendall too (a client that does not read).
                    client.settimeout(None if timeout is None else max(timeout, 0.001))
                    if not self.signals.wait([client], timeout):
                        if (reason := deadlines.expired()) is not None:
                            conn.reason = reason
                            break
                        continue  # a signal: start the grace period
                    data = client.recv(config.receive_size)
                    if not data:
                        break
                    self.stdout.write(conn.feed(data))
                    if config.echo:
                        client.sendall(data)
                    deadlines.received()
            except TimeoutError as exc:  # the echo did not go out in time, or ETIMEDOUT
                conn.reason = deadlines.expired() or lost_reason(exc)
            except (StdoutClosed, StdoutError):
                raise
            except Exception as exc:
                conn.reason = lost_reason(exc)
            except Forced:
                conn.reason = "server aborted"
                raise
            finally:
                self.stdout.write(conn.finish())


@attrs.define
class _Deadlines:
    """The two clocks of a connection: ``--idle-timeout`` (restarted by every receive, once
    its output is written: waiting for stdout is not idle time) and the grace period."""

    idle_timeout: float | None
    idle: float | None = None
    grace: float | None = None

    def __attrs_post_init__(self) -> None:
        self.received()

    def received(self) -> None:
        if self.idle_timeout is not None:
            self.idle = time.monotonic() + self.idle_timeout

    def timeout(self) -> float | None:
        ends = [end for end in (self.idle, self.grace) if end is not None]
        return max(min(ends) - time.monotonic(), 0) if ends else None

    def expired(self) -> str | None:
        now = time.monotonic()
        if self.grace is not None and now >= self.grace:
            return "grace period over"
        if self.idle is not None and now >= self.idle:
            return f"idle for {self.idle_timeout:g} s"
        return None
