"""``--metrics HOST:PORT``: the scrape endpoint, a task in the server's own Trio nursery.

HTTP/1.1 reduced to what a scraper does: ``GET /metrics`` (or ``HEAD``), one request per
connection (``Connection: close``; Prometheus simply connects again at the next scrape), the
page rendered from a fresh snapshot.  Anything else gets a short status line: 404 for another
path, 405 for another method, 400 for what is not HTTP, 431 for a head over
``MAX_HEAD_BYTES``.  A request must arrive within ``REQUEST_TIMEOUT``, so a client that
connects and says nothing holds nothing for long; at most ``MAX_SCRAPES`` are answered at
once.  Like the server's own handler, every error stays with its one connection.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from trio_echo.logs import LOGGER, NOTICE
from trio_echo.metrics.exposition import content_type, families, render, wants_openmetrics
from trio_echo.metrics.snapshot import Snapshot
from trio_echo.net.bind import bind_sockets, describe_addresses, warn_if_exposed

__all__ = ["MAX_HEAD_BYTES", "MAX_SCRAPES", "REQUEST_TIMEOUT", "answer", "serve_metrics"]

# A scraper's request head is a few hundred bytes.
MAX_HEAD_BYTES = 8192

# Time for a request to arrive and its answer to be taken.
REQUEST_TIMEOUT = 10.0

# Requests answered at once; more wait to be accepted (the kernel's backlog holds them).
MAX_SCRAPES = 8

Page = Callable[[], Awaitable[Snapshot]]


def _response(status: str, body: bytes, kind: str, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\nCache-Control: no-store\r\n\r\n"
    ).encode()
    return header if head else header + body


def _plain(status: str, text: str) -> bytes:
    return _response(status, text.encode() + b"\n", "text/plain; charset=utf-8")


async def answer(page: Page, request: bytes) -> bytes:
    """The response to one request head (``request``, up to its blank line)."""
    try:
        lines = request.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return _plain("400 Bad Request", "not an HTTP request")
    if not version.startswith("HTTP/1."):
        return _plain("505 HTTP Version Not Supported", "HTTP/1.x only")
    if method not in ("GET", "HEAD"):
        return _plain("405 Method Not Allowed", "GET /metrics")
    if target.split("?", 1)[0] != "/metrics":
        return _plain("404 Not Found", "the metrics are at /metrics")
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept += value
    openmetrics = wants_openmetrics(accept)
    body = render(families(await page()), openmetrics=openmetrics)
    return _response("200 OK", body, content_type(openmetrics), head=method == "HEAD")


async def _linger(stream: trio.abc.Stream) -> None:
    """After an answer sent before the request was read whole: say we are done, and read
    what is left (within ``REQUEST_TIMEOUT``), so that closing does not reset the connection
    and destroy the answer on its way (the kernel resets a socket closed with unread data)."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    while await stream.receive_some(65536):
        pass


async def _serve_one(page: Page, limiter: trio.CapacityLimiter, stream: trio.abc.Stream) -> None:
    async with limiter:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                request = b""
                while b"\r\n\r\n" not in request:
                    if len(request) > MAX_HEAD_BYTES:
                        await stream.send_all(
                            _plain("431 Request Header Fields Too Large", "head too large")
                        )
                        await _linger(stream)
                        return
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                await stream.send_all(await answer(page, request.split(b"\r\n\r\n", 1)[0]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away: nothing to tell it
        except Exception as exc:  # one scrape's failure never stops the server
            LOGGER.warning("metrics: request failed: %r", exc)
        finally:
            await trio.aclose_forcefully(stream)


async def serve_metrics(
    host: str,
    port: int,
    page: Page,
    *,
    task_status: trio.TaskStatus[list[tuple[object, ...]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``page`` (a fresh snapshot per scrape) at ``http://host:port/metrics`` until
    cancelled; reports the bound addresses once listening.  A port in use is a
    :class:`~trio_echo.net.bind.ListenError`, like the server's own."""
    sockets: list[socket.socket] = await trio.to_thread.run_sync(
        partial(bind_sockets, (host,), port, warn=False)
    )
    addresses = [sock.getsockname() for sock in sockets]
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
    warn_if_exposed(
        addresses,
        what="metrics ",
        risk="other machines can read the server's counters",
        remedy="--metrics 127.0.0.1:PORT keeps them local",
    )
    LOGGER.log(NOTICE, "metrics at %s", ", ".join(f"http://{a}/metrics" for a in _urls(addresses)))
    limiter = trio.CapacityLimiter(MAX_SCRAPES)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, partial(_serve_one, page, limiter), listeners)
        task_status.started(addresses)


def _urls(addresses: list[tuple[object, ...]]) -> list[str]:
    return describe_addresses(addresses).split(", ")
