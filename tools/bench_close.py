"""What closing a connection costs under ``trio.serve_listeners``, per connection.

``serve_listeners`` runs every handler as ``try: await handler(stream) finally: await
trio.aclose_forcefully(stream)``.  ``aclose_forcefully`` calls ``aclose()`` inside a cancelled
scope, and Trio's contract makes every ``aclose`` a checkpoint, so each connection's end raises
and catches one ``Cancelled`` (two scheduler trips and two cancel scopes).  This measures that,
against a plain ``close()`` and a plain checkpoint, for our stream and for Trio's, so that
docs/performance.md can say what the Trio-native shape costs at the end of ten thousand
connections::

    python tools/bench_close.py            # 5,000 streams each
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Awaitable, Callable

import trio

from trio_echo.server.stream import LeanSocketStream


def _streams(count: int, make: Callable[[socket.socket], trio.abc.Stream]) -> list[trio.abc.Stream]:
    streams = []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.close()
        streams.append(make(ours))
    return streams


async def _per_stream(
    streams: list[trio.abc.Stream], step: Callable[[trio.abc.Stream], Awaitable[None]]
) -> float:
    start = time.perf_counter()
    for stream in streams:
        await step(stream)
    return (time.perf_counter() - start) / len(streams) * 1e6


async def _checkpoint(_: trio.abc.Stream) -> None:
    await trio.lowlevel.checkpoint()


async def _close(stream: trio.abc.Stream) -> None:
    assert isinstance(stream, LeanSocketStream)
    stream.close()


async def main(count: int) -> None:
    def trio_stream(sock: socket.socket) -> trio.abc.Stream:
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    rows = []
    ours = _streams(count, LeanSocketStream)
    rows.append(("a checkpoint (one scheduler trip)", await _per_stream(ours, _checkpoint)))
    rows.append(("LeanSocketStream.close() (the close(2) itself)", await _per_stream(ours, _close)))
    rows.append(
        (
            "aclose_forcefully(closed LeanSocketStream)",
            await _per_stream(ours, trio.aclose_forcefully),
        )
    )
    fresh = _streams(count, LeanSocketStream)
    rows.append(
        (
            "aclose_forcefully(open LeanSocketStream)",
            await _per_stream(fresh, trio.aclose_forcefully),
        )
    )
    theirs = _streams(count, trio_stream)
    rows.append(
        (
            "aclose_forcefully(open trio.SocketStream)",
            await _per_stream(theirs, trio.aclose_forcefully),
        )
    )
    for what, micros in rows:
        print(f"{what:50} {micros:6.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="streams per row")
    trio.run(main, parser.parse_args().count)
