"""trio_echo: a TCP server that prints (or echoes) what its clients send, built on Trio.

Embedding it::

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(trio_echo.serve, trio_echo.Config(port=0))
        ...                      # handle.addresses, handle.port, handle.stats
        handle.shutdown()        # the same graceful sequence as SIGTERM

The names below are imported when first used, so that ``python -m trio_echo --model sync`` (or
``threads``) never imports Trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from trio_echo.config import Config
    from trio_echo.net.bind import ListenError
    from trio_echo.output.format import OutputFormat
    from trio_echo.output.queue import OutputQueue, open_output_queue
    from trio_echo.output.stamps import Timestamps
    from trio_echo.output.writer import write_stdout
    from trio_echo.server.serve import ServerHandle, serve
    from trio_echo.stats import ServerStats

# Each public name, and the module that defines it.
_EXPORTS = {
    "Config": "trio_echo.config",
    "ListenError": "trio_echo.net.bind",
    "OutputFormat": "trio_echo.output.format",
    "OutputQueue": "trio_echo.output.queue",
    "ServerHandle": "trio_echo.server.serve",
    "ServerStats": "trio_echo.stats",
    "Timestamps": "trio_echo.output.stamps",
    "open_output_queue": "trio_echo.output.queue",
    "serve": "trio_echo.server.serve",
    "write_stdout": "trio_echo.output.writer",
}

__all__ = [
    "Config",
    "ListenError",
    "OutputFormat",
    "OutputQueue",
    "ServerHandle",
    "ServerStats",
    "Timestamps",
    "__version__",
    "open_output_queue",
    "serve",
    "write_stdout",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_echo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
