"""The ``threads`` model: a thread per connection, blocking calls everywhere.

The main thread accepts (``select`` on the listeners and the signals' self-pipe) and starts a
thread per client; each thread reads its socket and writes stdout under one lock, so a slow
stdout blocks the writing threads and TCP pushes back on their clients.

Shutdown: a blocked ``recv`` cannot be cancelled, but it can be woken from outside.  The first
signal closes the listeners and waits up to ``--grace`` seconds for the threads to end; then
``shutdown(SHUT_RDWR)`` on every remaining client makes its ``recv`` (or ``sendall``) return,
and the threads are joined.  A second signal does the same at once.  ``daemon=True`` is only a
safety net for a thread stuck writing to a stalled stdout, which no signal can unblock: the
server gives up on it (exit status 1, as trio) instead of hanging at interpreter exit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import attrs

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.lifecycle import MIN_DRAIN_TIMEOUT, Outcome, log_forced, log_listening, log_stopping
from trio_echo.logs import LOGGER
from trio_echo.models._common import BlockingStdout, Forced, StopSignals, accept, lost_reason
from trio_echo.net.bind import bind_sockets
from trio_echo.output.stdout import StdoutClosed, StdoutError
from trio_echo.stats import ServerStats


def run(config: Config, stdout_fd: int = 1) -> Outcome:
    stdout = BlockingStdout(stdout_fd)
    with StopSignals() as signals:
        server = _Server(config, stdout, signals)
        listeners = bind_sockets(config.hosts, config.port)
        try:
            for listener in listeners:
                listener.setblocking(False)
            log_listening([sock.getsockname() for sock in listeners], config)
            server.accept_until_signal(listeners)
            _close_all(listeners)  # stop accepting at once
            if stdout.error is not None:
                raise stdout.error
            assert signals.first is not None
            log_stopping(signals.first, config.grace, server.stats.active)
            deadline = time.monotonic() + config.grace
            while server.clients and stdout.error is None and time.monotonic() < deadline:
                signals.wait([], deadline - time.monotonic())  # woken as each thread ends
            server.close_clients("grace period over")
            drain_timeout = max(config.grace, MIN_DRAIN_TIMEOUT)
            if not server.join(drain_timeout):
                return Outcome.drain_failed(drain_timeout, server.stats)
            if stdout.error is not None:
                raise stdout.error
            return Outcome.stopped(server.stats)
        except Forced as forced:
            log_forced(forced.signum)
            server.close_clients("server aborted")
            server.join(MIN_DRAIN_TIMEOUT)
            return Outcome.forced(forced.signum, server.stats)
        except BaseException:  # stdout closed, or a bug: no thread outlives run() either
            server.close_clients("server stopped")
            server.join(MIN_DRAIN_TIMEOUT)
            raise
        finally:
            _close_all(listeners)


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


@attrs.define(eq=False)
class _Server:
    config: Config
    stdout: BlockingStdout
    signals: StopSignals
    stats: ServerStats = attrs.field(factory=ServerStats)
    # The live connections; ``lock`` guards it, the stats, and closing versus shutting down a
    # client socket (so that shutdown() never hits a descriptor number reused by another).
    clients: dict[threading.Thread, socket.socket] = attrs.field(factory=dict)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    closing: str | None = None  # why the server is closing the connections, once it is

    def accept_until_signal(self, listeners: list[socket.socket]) -> None:
        limit = self.config.max_connections
        while self.signals.first is None and self.stdout.error is None:
            # At --max-connections, stop watching the listeners: new clients wait in the
            # backlog until a thread ends (which wakes us).
            room = limit is None or self.stats.active < limit
            for listener in self.signals.wait(listeners if room else []):
                if (accepted := accept(listener)) is not None:
                    self.start(*accepted)
                if limit is not None and self.stats.active >= limit:
                    break

    def start(self, client: socket.socket, address: object) -> None:
        client.settimeout(self.config.idle_timeout)  # None: blocking
        with self.lock:
            conn = Connection.open(self.config, self.stats, address)
            thread = threading.Thread(
                target=self.serve, args=(client, conn), name=f"conn #{conn.conn_id}", daemon=True
            )
            self.clients[thread] = client
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": turn this client away
            LOGGER.error("cannot start a thread for connection #%d: %s", conn.conn_id, exc)
            with self.lock:
                del self.clients[thread]
                client.close()
                conn.reason = f"error: {exc}"
                conn.finish()

    def serve(self, client: socket.socket, conn: Connection) -> None:
        """One client's thread: read until EOF (or until the server shuts the socket down)."""
        try:
            self.stdout.write(conn.opened())
            while data := client.recv(self.config.receive_size):
                with self.lock:
                    output = conn.feed(data)
                self.stdout.write(output)
                if self.config.echo:
                    client.sendall(data)
        except (StdoutClosed, StdoutError):
            conn.reason = "server stopped"
        except Exception as exc:
            conn.reason = lost_reason(exc, self.config.idle_timeout)
        finally:
            with self.lock:
                if self.closing is not None:  # our shutdown() ended the recv, not the client
                    conn.reason = self.closing
                client.close()
                last = conn.finish()
            with contextlib.suppress(StdoutClosed, StdoutError):  # the main thread reports it
                self.stdout.write(last)
            with self.lock:
                del self.clients[threading.current_thread()]
            self.signals.poke()

    def close_clients(self, reason: str) -> None:
        """Wake every client thread: its recv returns EOF, its sendall fails."""
        with self.lock:
            self.closing = reason
            for client in self.clients.values():
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> bool:
        """Join the client threads within ``timeout``; ``False`` if some are stuck on stdout."""
        deadline = time.monotonic() + timeout
        with self.lock:
            threads = list(self.clients)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        return not any(thread.is_alive() for thread in threads)
