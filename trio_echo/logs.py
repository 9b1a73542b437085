"""Diagnostics on stderr: one logger, one extra level, one line per event.

stdout carries client data only; everything about the server itself goes to stderr through the
``trio_echo`` logger.  Levels, from chatty to terse:

* ``debug``: internals (file-descriptor limit, ...);
* ``info``: a line per connection opened and closed (peer, bytes, duration, why);
* ``notice``: the server's life: listening addresses, shutdown, the summary at exit;
* ``warning``/``error``: things going wrong (out of file descriptors, a handler error).

``notice`` sits between ``info`` and ``warning`` so that ``--log-level notice`` keeps the
life-cycle lines while dropping the per-connection ones, which a busy server has thousands of.
"""

from __future__ import annotations

import logging

__all__ = ["LEVELS", "LOGGER", "NOTICE", "setup_logging"]

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

LOGGER = logging.getLogger("trio_echo")


def setup_logging(level: str, tag: str | None = None) -> None:
    """Send the ``trio_echo`` logger (and Trio's) to stderr at ``level``; ``tag`` (``worker 3``)
    goes before every message, so the lines of ``--workers`` say whose they are.

    Each record is one ``write`` of one line, well under the 4 KiB that a pipe writes in one
    piece, so the workers' lines on a shared stderr do not mix inside a line either."""
    prefix = f"{tag}: " if tag else ""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)s {prefix}%(message)s", "%H:%M:%S")
    )
    for name in ("trio_echo", "trio"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(LEVELS[level])
        logger.propagate = False
