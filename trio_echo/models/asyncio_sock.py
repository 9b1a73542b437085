"""The ``asyncio-sock`` model: the article's asyncio server, with its gaps filled.

As in the article, raw non-blocking sockets and the loop's socket coroutines:
``loop.sock_accept`` in an accept loop per listener, ``loop.sock_recv`` in a task per client.
Unlike it, no task is fire-and-forget: the accept loops are kept here, the handlers in the
:class:`~trio_echo.models._aio.Lab`'s set, and every socket is closed by a ``with`` block.

Shutdown: the first signal cancels the accept loops (their ``with`` closes the listeners at
once), waits up to ``--grace`` seconds for the handlers, then cancels them: ``CancelledError``
comes out of ``sock_recv`` and the ``with`` closes the client.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from trio_echo.config import Config
from trio_echo.lifecycle import Outcome
from trio_echo.models._aio import Lab
from trio_echo.models._common import ACCEPT_RETRY_SLEEP, out_of_capacity
from trio_echo.net.bind import bind_sockets


async def serve(config: Config) -> Outcome:
    async with Lab(config) as lab:
        listeners = bind_sockets(config.hosts, config.port)  # nothing else runs yet
        # --max-connections: no accept without a free slot, so the clients beyond the limit
        # wait in the kernel's listen backlog (start_server cannot do this).
        slots = asyncio.Semaphore(config.max_connections or sys.maxsize)
        accepting = [asyncio.create_task(accept_loop(lab, sock, slots)) for sock in listeners]
        try:
            lab.listening([sock.getsockname() for sock in listeners])
            await lab.wait_for_signal()
        finally:
            for task in accepting:
                task.cancel()
            await asyncio.gather(*accepting, return_exceptions=True)
        return await lab.shutdown()


async def accept_loop(lab: Lab, listener: socket.socket, slots: asyncio.Semaphore) -> None:
    loop = asyncio.get_running_loop()
    with listener:
        listener.setblocking(False)
        while True:
            async with slots:  # wait for a free slot, but do not keep it while accepting:
                pass  # that would starve the other listeners
            try:
                client, address = await loop.sock_accept(listener)
            except OSError as exc:
                if not out_of_capacity(exc):
                    raise
                await asyncio.sleep(ACCEPT_RETRY_SLEEP)  # out of file descriptors: wait
                continue
            try:  # another listener took the last slot meanwhile: hold this client, unread
                await slots.acquire()
            except BaseException:
                client.close()
                raise
            task = lab.spawn(handle(lab, client, address))
            task.add_done_callback(lambda _: slots.release())


async def handle(lab: Lab, client: socket.socket, address: object) -> None:
    loop = asyncio.get_running_loop()
    with client:
        async with lab.connection(address) as conn:
            while data := await lab.receive(loop.sock_recv(client, lab.config.receive_size)):
                await lab.print(conn.feed(data))
                if lab.config.echo:
                    await loop.sock_sendall(client, data)


def run(config: Config) -> Outcome:
    return asyncio.run(serve(config))
