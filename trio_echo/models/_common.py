"""Plumbing the lab's models share, so that each model file shows only its concurrency.

* :class:`Connection`: one client's bookkeeping -- id, counters, output formatting, the
  ``open``/``close`` lines -- identical in every model (the trio model has its own in
  ``server.py``, with the same words).
* The blocking models' tools (``sync``, ``threads``): :class:`BlockingStdout`, a locked stdout
  whose slow reader blocks the writing thread (the backpressure), and :class:`StopSignals`,
  SIGINT/SIGTERM through the self-pipe trick.
* The log lines and outcomes every model reports alike.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
import types

from trio_echo.lifecycle import STOP_SIGNALS, forces
from trio_echo.logs import LOGGER

# accept(2) errors that mean "out of descriptors or memory", and the pause before retrying:
# the trio model's, so that every model survives running out of file descriptors alike.
from trio_echo.net.bind import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY_SLEEP
from trio_echo.output.stdout import StdoutClosed, StdoutError, write_all

__all__ = [
    "ACCEPT_RETRY_SLEEP",
    "BlockingStdout",
    "Forced",
    "StopSignals",
    "accept",
    "lost_reason",
    "out_of_capacity",
]


def lost_reason(
    exc: BaseException,
    idle_timeout: float | None = None,
    timeouts: tuple[type[BaseException], ...] = (TimeoutError,),
) -> str:
    """The close reason for an exception that ended a connection: an idle timeout (one of
    ``timeouts`` of our own, without an errno, unlike the kernel's ETIMEDOUT), a lost
    connection (``connection lost (connection reset by peer)``), or a bug (logged).

    The asyncio models pass ``asyncio.TimeoutError`` too (a class of its own on Python 3.10);
    the blocking models do not, so that they never import asyncio."""
    if isinstance(exc, timeouts) and getattr(exc, "errno", None) is None and idle_timeout:
        return f"idle for {idle_timeout:g} s"
    if isinstance(exc, OSError):
        return f"connection lost ({(exc.strerror or str(exc) or type(exc).__name__).lower()})"
    LOGGER.warning("a connection failed: %r", exc)
    return f"error: {exc!r}"


def out_of_capacity(exc: BaseException) -> bool:
    """Is ``exc`` an accept(2) error to wait out (out of descriptors or memory)?  Logs it."""
    if not isinstance(exc, OSError) or exc.errno not in ACCEPT_CAPACITY_ERRNOS:
        return False
    LOGGER.error("accept failed: %s; pausing accepts", os.strerror(exc.errno or 0))
    return True


def accept(listener: socket.socket) -> tuple[socket.socket, object] | None:
    """``listener.accept()`` for a listener that ``select`` said is ready (and that is
    non-blocking, in case the client left meanwhile): ``None`` if there was nobody after all,
    or if the process is out of descriptors (then after a short pause)."""
    try:
        return listener.accept()
    except BlockingIOError:
        return None
    except OSError as exc:
        if not out_of_capacity(exc):
            raise
        time.sleep(ACCEPT_RETRY_SLEEP)
        return None


class BlockingStdout:
    """stdout for the blocking models: one lock, one blocking ``write`` per call.

    The lock keeps lines of different clients whole.  A slow reader blocks the writing thread,
    which then stops reading its socket, so the kernel's buffers fill and TCP slows the client
    down: backpressure without a queue.  The first failure (EPIPE...) is raised to its writer
    and kept in :attr:`error` for the main thread; later writes are dropped.
    """

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.error: StdoutClosed | StdoutError | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self.error is not None:
                return
            try:
                write_all(self._fd, data)
            except (StdoutClosed, StdoutError) as exc:
                self.error = exc
                raise


class Forced(BaseException):
    """A second stop signal: raised by the signal handler wherever the main thread is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM for the blocking models, with the self-pipe trick.

    The first signal is only recorded (:attr:`first`): an exception raised at a random point of
    the main thread could lose bytes already read.  ``signal.set_wakeup_fd`` writes a byte to a
    socket pair, so :meth:`wait` -- the main thread's only blocking call -- wakes up at once,
    even when the kernel delivered the signal to another thread.  The second signal raises
    :class:`Forced` from the handler: the exit is immediate, wherever the main thread is
    (even stuck writing to a stalled stdout).  Other threads wake the main one with :meth:`poke`.
    """

    def __init__(self) -> None:
        self.first: int | None = None
        self.forced = False
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._old_handlers: dict[int, object] = {}
        self._old_wakeup_fd = -1

    def __enter__(self) -> StopSignals:
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._old_wakeup_fd)
        self._wake_r.close()
        self._wake_w.close()

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        if self.first is None:
            self.first = signum
        elif not self.forced and forces(signum):  # a third must not interrupt the forced exit
            self.forced = True
            raise Forced(signum)

    def poke(self) -> None:
        """Wake the main thread from :meth:`wait` (callable from any thread)."""
        # Full: it will wake anyway.  Closed: the main thread has gone.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def wait(
        self, sockets: list[socket.socket], timeout: float | None = None
    ) -> list[socket.socket]:
        """Block until one of ``sockets`` is readable, a signal comes, a poke, or ``timeout``;
        return the readable sockets.  The Python-level signal handler has run by the time this
        returns (CPython runs pending handlers right after a C call returns)."""
        ready, _, _ = select.select([self._wake_r, *sockets], [], [], timeout)
        if self._wake_r in ready:
            while True:
                try:
                    if not self._wake_r.recv(4096):
                        break
                except BlockingIOError:
                    break
            ready.remove(self._wake_r)
        return ready
