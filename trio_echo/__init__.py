"""trio_echo: a TCP server that prints (or echoes) what its clients send, built on Trio.

Embedding it::

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(trio_echo.serve, trio_echo.Config(port=0))
        ...                      # handle.addresses, handle.port, handle.stats
        handle.shutdown()        # the same graceful sequence as SIGTERM
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config
from .listen import ListenError
from .output import OutputFormat
from .server import ServerHandle, serve
from .stats import ServerStats
from .writer import OutputQueue, open_output_queue, write_stdout

__all__ = [
    "Config",
    "ListenError",
    "OutputFormat",
    "OutputQueue",
    "ServerHandle",
    "ServerStats",
    "__version__",
    "open_output_queue",
    "serve",
    "write_stdout",
]
