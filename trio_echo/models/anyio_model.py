"""The ``anyio-trio`` and ``anyio-asyncio`` models: the server in anyio's idiom, on each backend.

The bound sockets (:func:`trio_echo.net.bind.bind_sockets`) become anyio ``SocketListener``\\ s
in one ``MultiListener``, whose ``serve(handler, task_group)`` starts a handler per client in
the connections task group; a handler takes any anyio ``ByteStream``.  Shutdown is cancel
scopes, as in the trio model: the first SIGINT/SIGTERM (``anyio.open_signal_receiver``) cancels
the accepting scope (the listeners close) and puts a deadline of now + grace on the
connections' scope; a second one cancels everything.  Stdout is written by one task through a
byte budget, so that a slow stdout slows the clients.  ``--max-connections`` is not supported.

The same code runs on both backends but for two things the asyncio backend needs (each
explained where it is done): its socket stream reads ahead without bound unless paused
(:func:`_reading_only_in_receive`), and its worker threads would keep the process alive on a
stalled stdout (:func:`_write_in_daemon_thread`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
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
    forces,
    log_forced,
    log_listening,
    log_stopping,
)
from trio_echo.models._common import lost_reason
from trio_echo.net.bind import bind_sockets
from trio_echo.output.stdout import WRITE_BATCH_BYTES, write_batch
from trio_echo.stats import ServerStats

__all__ = ["run_asyncio", "run_trio"]


# Writes a batch to stdout off the event loop; abandoned at a forced exit (see below).
_Write = Callable[[int, list[bytes]], Awaitable[None]]


async def _write_in_worker(fd: int, batch: list[bytes]) -> None:
    """anyio's idiom: a worker thread (on the trio backend a daemon, abandoned if stuck)."""
    await anyio.to_thread.run_sync(write_batch, fd, batch, abandon_on_cancel=True)


async def _write_in_daemon_thread(fd: int, batch: list[bytes]) -> None:
    """A daemon thread per batch, for the asyncio backend.

    There ``to_thread``'s workers are not daemons: a write stuck on a stalled stdout, even
    abandoned, would keep the stopped server's interpreter from exiting.  The thread reports
    back through ``from_thread`` with the loop's token; if the run is over, nobody waits.
    """
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    failure: list[Exception] = []

    def work() -> None:
        try:
            write_batch(fd, batch)
        except Exception as exc:
            failure.append(exc)
        with contextlib.suppress(RuntimeError):  # RunFinishedError: the loop is gone
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=work, name="stdout write", daemon=True).start()
    await done.wait()
    if failure:
        raise failure[0]


class _Stdout:
    """One writer task behind a byte budget: ``put`` waits while it is spent."""

    def __init__(self, fd: int, limit: int, write: _Write) -> None:
        self._fd, self._limit, self._used, self._write = fd, limit, 0, write
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
                await self._write(self._fd, batch)
                self._used -= size
                self._room.set()
            self.done.set()
        except BaseException:
            self.failed = True  # wake the handlers waiting for room: their output is dropped
            self._room.set()
            raise


def _reading_only_in_receive(
    stream: anyio.abc.SocketStream,
) -> Callable[[int], Awaitable[bytes]]:
    """``stream.receive``, made to keep anyio's asyncio backend from reading ahead without end.

    That backend's stream is an ``asyncio.Protocol`` that appends whatever its transport reads to
    an unbounded deque; ``receive`` pauses the transport only after it had to wait for data.
    But the transport starts reading at once, and a ``receive`` that finds data queued does not
    pause it: so while the handler waits for room on stdout, the transport reads everything the
    client sends -- no backpressure, the memory grows with the client's speed (GiBs on loopback).
    Pausing after every ``receive`` keeps the transport reading only inside one, as anyio means
    to.  Its transport is private (``_transport``): found by name, and the trio backend's
    stream, which reads only when asked, has none.
    """
    transport = getattr(stream, "_transport", None)
    if transport is None:
        return stream.receive
    transport.pause_reading()

    async def receive(max_bytes: int) -> bytes:
        try:
            return await stream.receive(max_bytes)
        finally:
            transport.pause_reading()

    return receive


class _Server:
    def __init__(self, config: Config, write: _Write, stdout_fd: int = 1) -> None:
        self.config = config
        self.stats = ServerStats()
        self.stdout = None if config.quiet else _Stdout(stdout_fd, config.queue_bytes, write)
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
            elif forces(signum):
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
        receive = _reading_only_in_receive(stream)
        try:
            async with stream:
                await self.print(conn.opened())
                while True:
                    try:
                        with anyio.fail_after(config.idle_timeout):
                            data = await receive(config.receive_size)
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


async def _main(config: Config, write: _Write) -> Outcome:
    return await _Server(config, write).serve()


def run_trio(config: Config) -> Outcome:
    return anyio.run(partial(_main, config, _write_in_worker), backend="trio")


def run_asyncio(config: Config) -> Outcome:
    return anyio.run(partial(_main, config, _write_in_daemon_thread), backend="asyncio")
