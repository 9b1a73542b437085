"""Plumbing shared by the asyncio models (``asyncio``, ``uvloop``, ``asyncio-sock``,
``asyncio-protocol``, ``uvloop-protocol``).

:class:`Lab` is what the asyncio servers have in common, so that their own files show only how
they accept and read: the signal handlers (``loop.add_signal_handler``), the stdout writer task,
the set of handlers (no fire-and-forget: every one is tracked and awaited), and the shutdown
sequence -- ``asyncio.wait(handlers, timeout=grace)``, then stop what is left.  A handler is a
task (cancelled to stop it) or, for the protocol models, a future that the connection's
``connection_lost`` completes, with its own way to stop (``transport.abort()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

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
from trio_echo.output.stdout import WRITE_BATCH_BYTES, write_all
from trio_echo.stats import ServerStats

__all__ = ["AsyncStdout", "Lab"]


async def _write_in_daemon_thread(fd: int, data: bytes) -> None:
    """A blocking ``write`` off the event loop.

    Not ``asyncio.to_thread``: its executor's threads are joined when the loop closes and again
    at interpreter exit, so a write stuck on a stalled stdout would keep a stopped server alive
    forever.  A daemon thread per batch can be abandoned (trio's writer does the same).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: Exception | None) -> None:
        if done.done():  # abandoned: the writer task was cancelled
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def work() -> None:
        error: Exception | None = None
        try:
            write_all(fd, data)
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name="stdout write", daemon=True).start()
    await done


async def _first(futures: set[asyncio.Future[Any]], timeout: float | None = None) -> None:
    """Wait until one of ``futures`` is done, or ``timeout``."""
    await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


# The idle timeout's exceptions (distinct classes on Python 3.10).
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class AsyncStdout:
    """A byte budget in front of one writer task (the asyncio twin of ``writer.OutputQueue``).

    ``put`` waits while the budget is spent -- the handler stops reading, TCP pushes back.  If
    the handler is cancelled meanwhile, its bytes are queued anyway: they were read from the
    client and must be printed.  A ``None`` item tells the writer to finish.
    """

    def __init__(self, fd: int = 1, limit: int = 8 * 1024 * 1024) -> None:
        self._fd = fd
        self._limit = limit
        self._used = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # bounded by _limit
        self._room = asyncio.Event()
        self._room_callbacks: list[Callable[[], object]] = []
        self.failed = False

    async def put(self, data: bytes) -> None:
        try:
            while self._used and self._used + len(data) > self._limit and not self.failed:
                self._room.clear()
                await self._room.wait()
        finally:  # even when cancelled
            self.put_nowait(data)

    def put_nowait(self, data: bytes) -> None:
        if data and not self.failed:
            self._used += len(data)
            self._queue.put_nowait(data)

    @property
    def full(self) -> bool:
        """Is the budget spent?  (For callers that cannot wait in :meth:`put`.)"""
        return self._used >= self._limit and not self.failed

    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (once) when the writer has freed some of the budget, or failed."""
        self._room_callbacks.append(callback)

    def _freed(self) -> None:
        self._room.set()
        callbacks, self._room_callbacks = self._room_callbacks, []
        for callback in callbacks:
            callback()

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """The writer task: one ``write`` per batch of whatever is waiting, until ``close``."""
        try:
            while (item := await self._queue.get()) is not None:
                batch, size = [item], len(item)
                while not self._queue.empty() and size < WRITE_BATCH_BYTES:
                    if (item := self._queue.get_nowait()) is None:
                        self._queue.put_nowait(None)  # seen again by the outer loop
                        break
                    batch.append(item)
                    size += len(item)
                data = b"".join(batch)
                await _write_in_daemon_thread(self._fd, data)
                self._used -= len(data)
                self._freed()
        except BaseException:
            self.failed = True  # wake the handlers waiting for room: their output is dropped
            self._freed()
            raise


class Lab:
    """Signals, stdout, stats and handler tasks of one asyncio server; use ``async with``."""

    def __init__(self, config: Config, stdout_fd: int = 1) -> None:
        self.config = config
        self.stats = ServerStats()
        self.stdout = None if config.quiet else AsyncStdout(stdout_fd, config.queue_bytes)
        self.handlers: set[asyncio.Future[Any]] = set()
        self._stoppers: dict[asyncio.Future[Any], Callable[[], object]] = {}
        self.closing = "server stopped"  # the close reason of a cancelled handler
        self._loop = asyncio.get_running_loop()
        self._stop: asyncio.Future[int] = self._loop.create_future()
        self._force: asyncio.Future[int] = self._loop.create_future()
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lab:
        for signum in STOP_SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        if self.stdout is not None:
            self._writer = asyncio.create_task(self.stdout.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Whatever happened (an error included), no task outlives the server."""
        await self._cancel_handlers(self.closing)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for signum in STOP_SIGNALS:
            self._loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if not self._stop.done():
            self._stop.set_result(signum)
        elif forces(signum) and not self._force.done():
            log_forced(signum)
            self._force.set_result(signum)

    def listening(self, addresses: list[tuple[object, ...]]) -> None:
        log_listening(addresses, self.config)

    def spawn(self, handler: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a handler task and keep it: the set is what the shutdown waits for."""
        task = asyncio.create_task(handler)
        self.track(task)
        return task

    def track(self, handler: asyncio.Future[Any], stop: Callable[[], object] | None = None) -> None:
        """Keep ``handler`` until it is done; ``stop`` ends it at the shutdown (default: cancel)."""
        self.handlers.add(handler)
        if stop is not None:
            self._stoppers[handler] = stop
        handler.add_done_callback(self._untrack)

    def _untrack(self, handler: asyncio.Future[Any]) -> None:
        self.handlers.discard(handler)
        self._stoppers.pop(handler, None)

    @contextlib.asynccontextmanager
    async def connection(self, address: object) -> AsyncIterator[Connection]:
        """A handler's client: tracked, counted, logged; its errors stay inside it."""
        task = asyncio.current_task()
        assert task is not None
        self.track(task)
        conn = Connection.open(self.config, self.stats, address)
        try:
            await self.print(conn.opened())
            yield conn
        except asyncio.CancelledError:
            conn.reason = self.closing
            raise
        except Exception as exc:
            conn.reason = lost_reason(exc, self.config.idle_timeout, _TIMEOUTS)
        finally:
            last = conn.finish()
            if self.stdout is not None:
                self.stdout.put_nowait(last)

    async def print(self, data: bytes) -> None:
        if self.stdout is not None and data:
            await self.stdout.put(data)

    def print_nowait(self, data: bytes) -> None:
        """Queue ``data`` past the budget (see :attr:`AsyncStdout.full` to push back)."""
        if self.stdout is not None:
            self.stdout.put_nowait(data)

    async def receive(self, read: Awaitable[bytes]) -> bytes:
        """``await read``, bounded by ``--idle-timeout`` (the wait for stdout is not idle time)."""
        if self.config.idle_timeout is None:
            return await read
        return await asyncio.wait_for(read, self.config.idle_timeout)

    async def wait_for_signal(self) -> None:
        """Until the first SIGINT/SIGTERM; raises ``StdoutClosed`` if stdout fails first."""
        await _first({self._stop, *self._writer_set()})
        self._raise_writer_error()

    async def shutdown(self) -> Outcome:
        """The listeners are closed: give the handlers the grace period, then cancel them."""
        # One turn of the loop: handlers of clients accepted just before the close register.
        await asyncio.sleep(0)
        log_stopping(self._stop.result(), self.config.grace, self.stats.active)
        deadline = self._loop.time() + self.config.grace
        interrupts = {self._force, *self._writer_set()}
        while self.handlers and not any(f.done() for f in interrupts):
            if (remaining := deadline - self._loop.time()) <= 0:
                break
            await _first({*self.handlers, *interrupts}, remaining)
        await self._cancel_handlers("server aborted" if self._force.done() else "grace period over")
        if self._force.done():
            return self._forced()
        self._raise_writer_error()
        if self._writer is not None and self.stdout is not None:
            self.stdout.close()
            drain_timeout = max(self.config.grace, MIN_DRAIN_TIMEOUT)
            await _first({self._writer, self._force}, drain_timeout)
            if self._force.done():
                return self._forced()
            if not self._writer.done():
                return Outcome.drain_failed(drain_timeout, self.stats)
            self._raise_writer_error()
        return Outcome.stopped(self.stats)

    async def _cancel_handlers(self, reason: str) -> None:
        self.closing = reason
        for handler in list(self.handlers):
            self._stoppers.get(handler, handler.cancel)()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    def _writer_set(self) -> set[asyncio.Future[Any]]:
        return set() if self._writer is None else {self._writer}

    def _forced(self) -> Outcome:
        return Outcome.forced(self._force.result(), self.stats)

    def _raise_writer_error(self) -> None:
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self._writer.result()  # raises StdoutClosed / StdoutError


def run_on_asyncio(main: Coroutine[Any, Any, Outcome]) -> Outcome:
    """Run an asyncio model's ``serve(config)`` on the stdlib event loop."""
    return asyncio.run(main)


def run_on_uvloop(main: Coroutine[Any, Any, Outcome]) -> Outcome:
    """The same on uvloop (imported by name: an optional dependency, untyped here)."""
    uvloop = importlib.import_module("uvloop")
    outcome: Outcome = uvloop.run(main)
    return outcome
