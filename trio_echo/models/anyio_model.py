"""The ``anyio-trio`` model: the server in anyio's idiom, on anyio's trio backend.

The bound sockets (:func:`trio_echo.net.bind.bind_sockets`) become anyio ``SocketListener``\\ s
in one ``MultiListener``, whose ``serve(handler, task_group)`` starts a handler per client in
the connections task group; a handler takes any anyio ``ByteStream``.  Shutdown is cancel
scopes, as in the trio model: the first SIGINT/SIGTERM (``anyio.open_signal_receiver``) cancels
the accepting scope (the listeners close) and puts a deadline of now + grace on the
connections' scope; a second one cancels everything.  Stdout is written by one task through a
byte budget, so that a slow stdout slows the clients.  ``--max-connections`` is not supported.

Each write is ``anyio.to_thread.run_sync(..., abandon_on_cancel=True)``: on the trio backend a
write stuck on a stalled stdout is abandoned at a forced exit (Trio's worker threads are
daemons).  On anyio's asyncio backend the worker threads are joined at exit instead, and a
stalled stdout does not push back on the clients yet: anyio-asyncio is left for later (issue 13).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from functools import partial

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.stapled import MultiListener

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.lifecycle import (
    MIN_DRAIN_TIMEOUT,
    STOP_SIGNALS,
    Outcome,
    log_forced,
    log_listening,
    log_stopping,
)
from trio_echo.models._common import lost_reason
from trio_echo.net.bind import bind_sockets
from trio_echo.output.stdout import WRITE_BATCH_BYTES, write_batch
from trio_echo.stats import ServerStats

__all__ = ["run_trio"]


class _Stdout:
    """One writer task behind a byte budget: ``put`` waits while it is spent."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd, self._limit, self._used = fd, limit, 0
        self._send, self._receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._room = anyio.Event()
        self.failed = False
        self.done = anyio.Event()

    async def put(self, data: bytes) -> None:
        try:
            while self._used and self._used + len(data) > self._limit and not self.failed:
                if self._room.is_set():
                    self._room = anyio.Event()
                await self._room.wait()
        finally:  # even when cancelled: the bytes were read from the client
            self.put_nowait(data)

    def put_nowait(self, data: bytes) -> None:
        if data and not self.failed:
            self._used += len(data)
            self._send.send_nowait(data)

    def close(self) -> None:
        self._send.close()

    def release(self) -> None:
        """At the very end: whatever was left unwritten is dropped."""
        self._send.close()
        self._receive.close()

    async def run(self) -> None:
        """Write whatever is waiting, a batch per ``writev``, until ``close`` and drained."""
        try:
            async for item in self._receive:
                batch, size = [item], len(item)
                while size < WRITE_BATCH_BYTES:
                    try:
                        item = self._receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    batch.append(item)
                    size += len(item)
                await anyio.to_thread.run_sync(write_batch, self._fd, batch, abandon_on_cancel=True)
                self._used -= size
                self._room.set()
            self.done.set()
        except BaseException:
            self.failed = True  # wake the handlers waiting for room: their output is dropped
            self._room.set()
            raise


class _Server:
    def __init__(self, config: Config, stdout_fd: int = 1) -> None:
        self.config = config
        self.stats = ServerStats()
        self.stdout = None if config.quiet else _Stdout(stdout_fd, config.queue_bytes)
        self.accepting = anyio.CancelScope()
        self.closed = anyio.Event()  # the listeners are closed
        self.stopped_by: int | None = None
        self.forced_by: int | None = None
        self.closing = "server stopped"  # the close reason of a cancelled handler

    async def watch(self, signals: AsyncIterator[int], everything: anyio.CancelScope) -> None:
        async for signum in signals:
            if self.stopped_by is None:
                self.stopped_by = signum
                self.closing = "grace period over"
                self.accepting.cancel()
            else:
                log_forced(signum)
                self.forced_by = signum
                self.closing = "server aborted"
                everything.cancel()
                return

    async def accept(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], tg: anyio.abc.TaskGroup
    ) -> None:
        try:
            with self.accepting:
                await listener.serve(self.handle, tg)
        finally:
            with anyio.CancelScope(shield=True):  # close every listener, even when cancelled
                await listener.aclose()
            self.closed.set()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        config = self.config
        address = stream.extra(anyio.abc.SocketAttribute.remote_address, "unknown")
        conn = Connection.open(config, self.stats, address)
        try:
            async with stream:
                await self.print(conn.opened())
                while True:
                    try:
                        with anyio.fail_after(config.idle_timeout):
                            data = await stream.receive(config.receive_size)
                    except anyio.EndOfStream:
                        break
                    await self.print(conn.feed(data))
                    if config.echo:
                        await stream.send(data)
        except anyio.get_cancelled_exc_class():
            conn.reason = self.closing
            raise
        except Exception as exc:
            if isinstance(exc, anyio.BrokenResourceError) and exc.__cause__ is not None:
                exc = exc.__cause__  # type: ignore[assignment]
            conn.reason = lost_reason(exc, config.idle_timeout)
        finally:
            last = conn.finish()
            if self.stdout is not None:
                self.stdout.put_nowait(last)

    async def print(self, data: bytes) -> None:
        if self.stdout is not None and data:
            await self.stdout.put(data)

    async def serve(self) -> Outcome:
        config, stdout = self.config, self.stdout
        drain_timeout = max(config.grace, MIN_DRAIN_TIMEOUT)
        drain = anyio.CancelScope()
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            sockets = await anyio.to_thread.run_sync(bind_sockets, config.hosts, config.port)
            try:
                addresses = [sock.getsockname() for sock in sockets]
                listener = MultiListener(
                    [await anyio.abc.SocketListener.from_socket(sock) for sock in sockets]
                )
            except BaseException:
                for sock in sockets:
                    sock.close()
                raise
            try:
                async with anyio.create_task_group() as everything:
                    everything.start_soon(self.watch, signals, everything.cancel_scope)
                    if stdout is not None:
                        everything.start_soon(stdout.run)
                    async with anyio.create_task_group() as connections:
                        connections.start_soon(self.accept, listener, connections)
                        log_listening(addresses, config)
                        await self.closed.wait()
                        if self.stopped_by is not None:
                            log_stopping(self.stopped_by, config.grace, self.stats.active)
                        connections.cancel_scope.deadline = anyio.current_time() + config.grace
                    # Every client is gone; stdout gets as long to take the rest as they got.
                    if stdout is not None:
                        stdout.close()
                        with anyio.move_on_after(drain_timeout) as drain:
                            await stdout.done.wait()
                    everything.cancel_scope.cancel()  # the signal watcher, a stalled writer
            finally:
                if stdout is not None:
                    stdout.release()
        if self.forced_by is not None:
            return Outcome.forced(self.forced_by, self.stats)
        if drain.cancelled_caught:
            return Outcome.drain_failed(drain_timeout, self.stats)
        return Outcome.stopped(self.stats)


async def _main(config: Config) -> Outcome:
    return await _Server(config).serve()


def run_trio(config: Config) -> Outcome:
    return anyio.run(partial(_main, config), backend="trio")
