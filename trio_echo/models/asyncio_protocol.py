"""The ``asyncio-protocol`` model (and ``uvloop-protocol``): asyncio's fastest form, callbacks.

``loop.create_server`` makes an :class:`EchoProtocol` per client; a ``BufferedProtocol`` is
handed a buffer of ours to read into (``get_buffer``/``buffer_updated``), so no coroutine
runs and no ``bytes`` is allocated per read but the one we keep.  The echo is
``transport.write``.  With no ``await`` to block on, backpressure is flow control, done by
hand: the protocol stops reading (``pause_reading``) while stdout's byte budget is spent, until
the writer frees some, and while the client does not read its echo (the transport calls
``pause_writing`` above its high-water mark, ``resume_writing`` once drained).

Shutdown, the :class:`~trio_echo.models._aio.Lab`'s as for the other asyncio models: the first
signal runs ``server.close()`` (the listeners close; connections go on), the clients get
``--grace`` seconds to finish, then ``transport.abort()`` ends the rest; a second signal aborts
them all at once.  Each connection is a future in the Lab's set, completed by
``connection_lost``, where the last partial line and the close line are printed.
``--max-connections`` is not supported: ``create_server`` accepts whatever comes.
``uvloop-protocol`` runs the same code on uvloop's event loop.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.lifecycle import Outcome
from trio_echo.models._aio import Lab, run_on_asyncio, run_on_uvloop
from trio_echo.models._common import lost_reason
from trio_echo.net.bind import BACKLOG, bind_sockets

# Why the protocol stopped reading: stdout is full, or the client does not read its echo.
_STDOUT, _ECHO = "stdout", "echo"


class EchoProtocol(asyncio.BufferedProtocol):
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.buffer = memoryview(bytearray(lab.config.receive_size))
        self.paused: set[str] = set()
        self.idle: asyncio.TimerHandle | None = None
        self.ending: str | None = None  # why we closed it, if we did

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        self.conn = Connection.open(
            self.lab.config, self.lab.stats, self.transport.get_extra_info("peername")
        )
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lab.track(self.lost, stop=self.abort)
        self.output(self.conn.opened())
        self.rearm()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(self.buffer[:nbytes])
        self.output(self.conn.feed(data))
        if self.lab.config.echo:
            self.transport.write(data)
        self.rearm()

    def eof_received(self) -> bool:
        return False  # the transport closes itself once the echo is flushed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.ending is not None:
            self.conn.reason = self.ending
        elif exc is not None:
            self.conn.reason = lost_reason(exc)
        self.lab.print_nowait(self.conn.finish())
        self.lost.set_result(None)

    # ---- flow control ---------------------------------------------------------------------------

    def output(self, data: bytes) -> None:
        """Print ``data``; if that spent stdout's budget, read no more until the writer frees
        some (the bytes already read are printed anyway: one buffer over budget at most)."""
        self.lab.print_nowait(data)
        stdout = self.lab.stdout
        if stdout is not None and stdout.full and _STDOUT not in self.paused:
            self.pause(_STDOUT)
            stdout.when_room(functools.partial(self.resume, _STDOUT))

    def pause_writing(self) -> None:
        self.pause(_ECHO)

    def resume_writing(self) -> None:
        self.resume(_ECHO)

    def pause(self, why: str) -> None:
        if not self.paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused.add(why)
        if why == _STDOUT and self.idle is not None:
            self.idle.cancel()  # waiting for stdout is not idle time; for the echo, it is

    def resume(self, why: str) -> None:
        self.paused.discard(why)
        if not self.paused and not self.transport.is_closing():
            self.transport.resume_reading()
        self.rearm()

    # ---- ending ---------------------------------------------------------------------------------

    def rearm(self) -> None:
        """Restart the ``--idle-timeout`` timer."""
        timeout = self.lab.config.idle_timeout
        if timeout is None or self.transport.is_closing() or _STDOUT in self.paused:
            return
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(timeout, self.timed_out, timeout)

    def timed_out(self, timeout: float) -> None:
        self.ending = f"idle for {timeout:g} s"
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # an echo the client does not read: no use waiting
        else:
            self.transport.close()

    def abort(self) -> None:
        """The shutdown's end of this connection: at once, whatever is left to echo."""
        self.ending = self.lab.closing
        self.transport.abort()


async def serve(config: Config) -> Outcome:
    loop = asyncio.get_running_loop()
    async with Lab(config) as lab:
        sockets = bind_sockets(config.hosts, config.port)  # blocking, but nothing else runs yet
        protocol = functools.partial(EchoProtocol, lab)
        servers: list[Any] = [
            await loop.create_server(protocol, sock=sock, backlog=BACKLOG) for sock in sockets
        ]
        try:
            lab.listening([sock.getsockname() for sock in sockets])
            await lab.wait_for_signal()
        finally:
            for server in servers:
                server.close()  # stop accepting; connections go on
        return await lab.shutdown()


def run(config: Config) -> Outcome:
    return run_on_asyncio(serve(config))


def run_uvloop(config: Config) -> Outcome:
    return run_on_uvloop(serve(config))
