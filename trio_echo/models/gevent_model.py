"""The ``gevent`` model: ``gevent.server.StreamServer``, a greenlet per client, no monkey-patching.

Greenlets look like threads -- blocking ``recv`` and ``sendall`` in a plain function -- but switch
at every wait, in one thread, on gevent's hub.  The process is not monkey-patched: the sockets
are gevent's own (``gevent.socket``, the listeners made from the shared bound ones), signals
come through ``gevent.signal_handler``, and the handler greenlets live in a ``pool.Pool``,
which also gives ``--max-connections``: while the pool is full, the servers stop accepting and
new clients wait in the kernel's backlog.

Stdout: one writer greenlet behind a byte budget (a handler waits in ``put`` while it is spent:
its client is not read, TCP slows it down).  Each batch is written in the hub's threadpool
(``threadpool.apply``), not with ``gevent.os.nb_write``, which would need stdout in
non-blocking mode -- a flag of the open file description, shared with the shell and with
stderr on a terminal.  A write stuck on a stalled stdout holds one pool thread, not the hub;
the writer greenlet can be killed, and gevent's pool threads do not keep the process alive.

Shutdown, as ``StreamServer.stop(timeout)`` does it but for two listeners sharing one pool:
the first SIGINT/SIGTERM closes the listeners, waits up to ``--grace`` seconds for the pool,
then kills the greenlets left (``GreenletExit`` comes out of their ``recv``, their ``finally``
prints what was read); a second signal kills them at once.
"""

from __future__ import annotations

import socket

# gevent ships no type information (types-gevent is not a dependency): Any to mypy.
import gevent  # type: ignore[import-untyped]
from gevent import event, pool, queue
from gevent import socket as gsocket
from gevent.server import StreamServer  # type: ignore[import-untyped]

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.lifecycle import (
    MIN_DRAIN_TIMEOUT,
    STOP_SIGNALS,
    Outcome,
    forces,
    log_forced,
    log_listening,
    log_stopping,
)
from trio_echo.models._common import lost_reason
from trio_echo.net.bind import bind_sockets
from trio_echo.output.stdout import WRITE_BATCH_BYTES, StdoutClosed, StdoutError, write_batch
from trio_echo.stats import ServerStats


class _Stdout:
    """A byte budget in front of one writer greenlet; a failure is kept in :attr:`error` (a
    greenlet that dies of an exception gets a traceback printed by the hub)."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd, self._limit, self._used = fd, limit, 0
        self._queue: queue.Queue[bytes | None] = queue.Queue()  # bounded by _limit
        self._room = event.Event()
        self.error: StdoutClosed | StdoutError | None = None
        self.done = event.Event()  # all written, or failed

    def put(self, data: bytes) -> None:
        try:
            while self._used and self._used + len(data) > self._limit and self.error is None:
                self._room.clear()
                self._room.wait()
        finally:  # even when killed: the bytes were read from the client
            self.put_nowait(data)

    def put_nowait(self, data: bytes) -> None:
        if data and self.error is None:
            self._used += len(data)
            self._queue.put(data)

    def close(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        threadpool = gevent.get_hub().threadpool
        try:
            while (item := self._queue.get()) is not None:
                batch, size = [item], len(item)
                while size < WRITE_BATCH_BYTES and not self._queue.empty():
                    if (item := self._queue.get()) is None:
                        self._queue.put(None)  # seen again by the outer loop
                        break
                    batch.append(item)
                    size += len(item)
                if error := threadpool.apply(_write, (self._fd, batch)):
                    self.error = error
                    break
                self._used -= size
                self._room.set()
        finally:
            self._room.set()  # after an error: wake the handlers, their output is dropped
            self.done.set()


def _write(fd: int, batch: list[bytes]) -> StdoutClosed | StdoutError | None:
    """Write ``batch`` (in a pool thread); the error is returned, since gevent's threadpool
    prints a traceback for a task that raises."""
    try:
        write_batch(fd, batch)
    except (StdoutClosed, StdoutError) as exc:
        return exc
    return None


class _Server:
    def __init__(self, config: Config, stdout: _Stdout | None) -> None:
        self.config = config
        self.stdout = stdout
        self.stats = ServerStats()
        self.pool = pool.Pool(config.max_connections)
        self.stopped = event.AsyncResult()  # the first signal
        self.forced = event.AsyncResult()  # the second
        self.closing = "server stopped"  # the close reason of a killed handler

    def on_signal(self, signum: int) -> None:
        if not self.stopped.ready():
            self.stopped.set(signum)
        elif forces(signum) and not self.forced.ready():
            log_forced(signum)
            self.forced.set(signum)

    def handle(self, client: gsocket.socket, address: object) -> None:
        config = self.config
        conn = Connection.open(config, self.stats, address)
        client.settimeout(config.idle_timeout)  # None: wait for ever (cooperatively)
        try:
            self.print(conn.opened())
            while data := client.recv(config.receive_size):
                self.print(conn.feed(data))
                if config.echo:
                    client.sendall(data)
        except gevent.GreenletExit:  # killed by the shutdown
            conn.reason = self.closing
        except Exception as exc:
            conn.reason = lost_reason(exc, config.idle_timeout)
        finally:
            client.close()
            last = conn.finish()
            if self.stdout is not None:
                self.stdout.put_nowait(last)

    def print(self, data: bytes) -> None:
        if self.stdout is not None and data:
            self.stdout.put(data)

    def wait(self, *events: object, timeout: float | None) -> None:
        """Until one of ``events`` (anything gevent can wait for), a second signal, stdout
        failing, or ``timeout``."""
        failing = [] if self.stdout is None else [self.stdout.done]
        gevent.wait([*events, self.forced, *failing], count=1, timeout=timeout)

    def kill_handlers(self, reason: str) -> None:
        self.closing = reason
        self.pool.kill(block=True, timeout=MIN_DRAIN_TIMEOUT)

    def shutdown(self) -> Outcome:
        """The listeners are closed: the grace period, then kill the handlers, then drain."""
        config, stdout = self.config, self.stdout
        log_stopping(self.stopped.get(), config.grace, self.stats.active)
        joiner = gevent.spawn(self.pool.join)  # a greenlet is waitable too
        self.wait(joiner, timeout=config.grace)
        joiner.kill()
        self.kill_handlers("server aborted" if self.forced.ready() else "grace period over")
        if self.forced.ready():
            return Outcome.forced(self.forced.get(), self.stats)
        if stdout is not None:
            if stdout.error is None:
                stdout.close()
                drain_timeout = max(config.grace, MIN_DRAIN_TIMEOUT)
                self.wait(timeout=drain_timeout)
                if self.forced.ready():
                    return Outcome.forced(self.forced.get(), self.stats)
                if not stdout.done.is_set():
                    return Outcome.drain_failed(drain_timeout, self.stats)
            if stdout.error is not None:
                raise stdout.error
        return Outcome.stopped(self.stats)


def run(config: Config, stdout_fd: int = 1) -> Outcome:
    stdout = None if config.quiet else _Stdout(stdout_fd, config.queue_bytes)
    server = _Server(config, stdout)
    bound = bind_sockets(config.hosts, config.port)
    addresses = [sock.getsockname() for sock in bound]
    # gevent's sockets on the same descriptors: their waits switch greenlets instead of blocking.
    listeners = [_cooperative(sock) for sock in bound]
    servers = [StreamServer(sock, server.handle, spawn=server.pool) for sock in listeners]
    handlers = [gevent.signal_handler(signum, server.on_signal, signum) for signum in STOP_SIGNALS]
    writer = None if stdout is None else gevent.spawn(stdout.run)
    try:
        for stream_server in servers:
            stream_server.start()
        log_listening(addresses, config)
        server.wait(server.stopped, timeout=None)
        for stream_server in servers:
            stream_server.close()  # stop accepting at once; connections go on
        if stdout is not None and stdout.error is not None:
            raise stdout.error
        return server.shutdown()
    finally:
        for handler in handlers:
            handler.cancel()
        for stream_server in servers:
            stream_server.close()
        for sock in listeners:
            sock.close()
        server.kill_handlers(server.closing)  # after an error: no greenlet outlives run()
        if writer is not None:
            writer.kill(block=False)  # a write stuck on a stalled stdout is abandoned


def _cooperative(sock: socket.socket) -> gsocket.socket:
    return gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
