"""The ``trio-stock`` model: the ``trio`` model's server and handler on Trio's own listeners.

The sockets are bound as every model binds them (:func:`trio_echo.net.bind.bind_sockets`) and
each is served by a stock ``trio.SocketListener`` giving ``trio.SocketStream``\\ s -- what
``trio.serve_tcp``/``trio.open_tcp_listeners`` give -- in place of our batched-accept listener
and fast stream.  Everything else (the shutdown, the output, ``--allow``/``--deny``,
``--max-connections``, TLS, the PROXY header) is the ``trio`` model's, so that a bench shows
what our listener and stream gain at equal features.  No ``--workers`` and no ``--fd``.
"""

from __future__ import annotations

import trio

from trio_echo.config import Config
from trio_echo.lifecycle import Outcome
from trio_echo.net.bind import bind_sockets
from trio_echo.server import app
from trio_echo.server.serve import Listener


async def _stock_listeners(config: Config) -> list[Listener]:
    sockets = await trio.to_thread.run_sync(bind_sockets, config.hosts, config.port)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]


def run(config: Config) -> Outcome:
    return trio.run(lambda: app.run(config, listeners=lambda: _stock_listeners(config)))
