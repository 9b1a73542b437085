"""The ``asyncio`` model (and ``uvloop``): the article's final form, modernised with streams.

``asyncio.start_server`` accepts and starts a task per client; each handler reads with
``reader.read`` and echoes with ``writer.write`` + ``drain`` (which waits while the client does
not read: backpressure on the echo).  Instead of the article's fire-and-forget tasks, every
handler registers in the :class:`~trio_echo.models._aio.Lab`'s set of tasks, so the shutdown
can wait for them.

Shutdown: ``loop.add_signal_handler``; the first signal runs ``server.close()`` (the listeners
close at once; live connections are untouched), ``asyncio.wait(handlers, timeout=grace)``, then
cancels the rest: ``CancelledError`` comes out of their ``await``, their ``finally`` prints what
was read and closes the transport.  ``--max-connections`` is not supported: ``start_server``
accepts whatever comes.  ``uvloop`` runs the same code on uvloop's event loop.
"""

from __future__ import annotations

import asyncio
import functools

from trio_echo.config import Config
from trio_echo.lifecycle import Outcome
from trio_echo.models._aio import Lab, run_on_asyncio, run_on_uvloop
from trio_echo.net.bind import BACKLOG, bind_sockets


async def serve(config: Config) -> Outcome:
    async with Lab(config) as lab:
        # Blocking (name lookup, bind) but nothing else runs on the loop yet.
        sockets = bind_sockets(config.hosts, config.port)
        # backlog: start_server calls listen() again, with 100 unless told otherwise.
        servers = [
            await asyncio.start_server(functools.partial(handle, lab), sock=sock, backlog=BACKLOG)
            for sock in sockets
        ]
        try:
            lab.listening([sock.getsockname() for sock in sockets])
            await lab.wait_for_signal()
        finally:
            for server in servers:
                server.close()  # stop accepting; connections go on
        return await lab.shutdown()


async def handle(lab: Lab, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with lab.connection(writer.get_extra_info("peername")) as conn:
            while data := await lab.receive(reader.read(lab.config.receive_size)):
                await lab.print(conn.feed(data))
                if lab.config.echo:
                    writer.write(data)
                    await writer.drain()
    except asyncio.CancelledError:
        # Our own shutdown cancelled us, and it awaits us: end normally, because on Python 3.11
        # start_server's done-callback calls task.exception() on a cancelled task and logs
        # the CancelledError that raises as a traceback.
        pass
    finally:
        writer.close()


def run(config: Config) -> Outcome:
    return run_on_asyncio(serve(config))


def run_uvloop(config: Config) -> Outcome:
    return run_on_uvloop(serve(config))
