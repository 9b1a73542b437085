"""``python -m trio_echo.bench.bare``: the reference the bench compares the trio model with.

The naive server any Trio user would write first: :func:`trio.serve_tcp` and a handler that
loops on ``receive_some``.  No logging per connection, no statistics, no line assembly, no
graceful shutdown: only what it takes to echo (``--echo``), to copy every chunk to stdout with a
plain blocking ``os.write`` (``--raw``), or to discard what it reads.  Whatever the trio model
does on top of this costs something; the bench reports the trio model's figures as a ratio to
this one's, measured in the same run (``bench --models trio,trio-bare``).

It is not a model of the CLI (``python -m trio_echo --model``): it exists for the bench only.  It
prints the same ``NOTICE listening on ...`` line the bench's :class:`~.server.ServerProcess`
waits for, and exits 0 on SIGTERM or SIGINT (cancelling every handler at once: no grace).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

__all__ = ["BARE", "main"]

# The bench's entry for it: its name in ``bench --models`` and what it cannot do.
BARE = "trio-bare"
SUMMARY = (
    "reference: a bare trio.serve_tcp handler (receive_some; send_all with --echo, os.write to "
    "stdout with --raw, else discard): what the trio model is compared with"
)
# Server flags the bench may pass that it has no equivalent for.
UNSUPPORTED = frozenset({"--format", "--grace", "--max-connections", "--idle-timeout"})
WHY_UNSUPPORTED = "the bare reference only echoes, copies raw bytes or discards them"

CHUNK = 65536


def _write_all(data: bytes) -> None:
    """Blocking ``os.write`` to stdout until every byte is out."""
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def make_handler(echo: bool, raw: bool) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """The connection handler for :func:`trio.serve_tcp` (which closes the stream after it)."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(CHUNK):
                if echo:
                    await stream.send_all(data)
                if raw:
                    _write_all(data)
        except trio.BrokenResourceError:
            pass  # the client reset the connection: nothing to do but forget it

    return handler


def _describe(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(host: str, port: int, echo: bool, raw: bool) -> None:
    """Serve until SIGTERM or SIGINT, then cancel everything and return."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await nursery.start(
                functools.partial(trio.serve_tcp, make_handler(echo, raw), port, host=host)
            )
            bound = ", ".join(_describe(listener) for listener in listeners)
            mode = ", ".join(["bare", *(["echo"] if echo else []), "raw" if raw else "discard"])
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            print(f"{stamp} NOTICE listening on {bound} ({mode})", file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_echo.bench.bare", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--echo", action="store_true", help="send every chunk back")
    parser.add_argument("--raw", action="store_true", help="copy every chunk to stdout")
    parser.add_argument("--quiet", action="store_true", help="accepted; it never prints anyway")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and soft < hard:
        # Ten thousand clients need ten thousand descriptors (the trio model raises it too).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    trio.run(serve, args.host, args.port, args.echo, args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
