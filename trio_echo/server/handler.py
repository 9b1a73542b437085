"""The connection handler: one ``async def`` that serves one client over any Trio stream.

:func:`trio.serve_listeners` calls :meth:`Handler.__call__` in a task of its own for every
stream a listener accepts: our :class:`~trio_echo.server.stream.LeanSocketStream`, a
``trio.SocketStream``, an in-memory stream in a test.  The handler reads the client until it
leaves, prints what it sends (through the output queue) and echoes it with ``--echo``.

Every error is contained here: one client's reset or garbage ends only its own task (Trio's
``serve_listeners`` would let an exception crash the server).  The ``finally`` always prints
what was already read and closes the stream.

With ``--proxy-protocol`` the handler first reads the client's PROXY header, and with
``--tls-cert`` it shakes hands (``trio.SSLStream`` over the client's stream): both in the
client's own task, under their own timeouts, so that a client slow to do either holds only its
own slot, never the accepting of everybody else.  A client that fails either is counted out
with one ``refused`` line and nothing on stdout.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.logs import LOGGER
from trio_echo.net.proxy_protocol import HEADER_TIMEOUT, ProxyHeader, ProxyProtocolError, parse
from trio_echo.net.tls import CLOSE_TIMEOUT, describe_ssl_error
from trio_echo.output.format import OutputFormat
from trio_echo.output.queue import OutputQueue
from trio_echo.server.listener import peer_address
from trio_echo.server.shutdown import Registry
from trio_echo.server.stream import LeanSocketStream
from trio_echo.server.wrappers import LimitedStream, PrefixedStream
from trio_echo.stats import ServerStats

__all__ = ["STREAMING_FACTOR", "Handler"]

# How much more a streaming --raw client's receives take: the fixed costs of a receive (the
# scheduler trip, the queue) are paid per 256 KiB instead of per 64 KiB.  Raw bytes only:
# text is formatted in a few passes over each receive, faster while they fit in the CPU's
# cache (4x made 64-byte lines 11-21 % slower, docs/performance.md).  Bounded: it bounds the
# unprinted bytes a handler holds at once.
STREAMING_FACTOR = 4


class _Refused(Exception):
    """A client that could not be set up (no valid PROXY header, a failed TLS handshake):
    what and why, for its ``refused`` line, and the metrics' reason (``kind``)."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what, detail)
        self.what = what
        self.detail = detail
        self.kind = "tls" if "TLS" in what else "proxy"


@attrs.define(eq=False)
class Handler:
    """Serves one client per call; shared by every connection of one server."""

    config: Config
    output: OutputQueue | None
    stats: ServerStats
    registry: Registry
    # --tls-cert (None: plain TCP).
    tls: ssl.SSLContext | None = None

    async def __call__(self, stream: trio.abc.Stream) -> None:
        """Serve the client on ``stream`` until it leaves (or the server stops)."""
        config, output, registry = self.config, self.output, self.registry
        registry.admitted -= 1  # started: counted as active from here (or leaving at once)
        if registry.closing:
            # Accepted before shutdown began, but started only after the grace period ended
            # (with --grace 0, the same scheduler batch as the signal): the closer has already
            # looked for handlers to close, so this one closes its client itself rather than
            # serve it without any limit.  A client accepted before the signal is otherwise
            # served within the grace period like every other.
            registry.left()
            await trio.aclose_forcefully(stream)
            return
        setting_up = config.proxy_protocol or self.tls is not None
        conn = Connection.open(
            config,
            self.stats,
            peer_address(stream),
            printing=output is not None,
            announce=not setting_up,
        )
        # The stream serve_listeners gave us, under any wrappers put around it below.
        accepted = stream
        # While set-up runs: what its refused line says if it is cut short from outside.
        refused: _Refused | None = None
        tls: trio.SSLStream[trio.abc.Stream] | None = None
        limited: LimitedStream | None = None
        sending = False
        try:
            with trio.CancelScope() as scope:
                registry.live[conn] = (scope, stream)
                via = ""
                if config.proxy_protocol:
                    refused = _Refused("PROXY header cut short", "")
                    stream, via = await self._after_proxy_header(stream, conn)
                if self.tls is not None:
                    refused = _Refused("TLS handshake cut short", "")
                    stream = tls = await self._shake_hands(stream, conn)
                    conn.announce(f"{tls.version() or 'TLS'}{', ' if via else ''}{via}")
                elif config.proxy_protocol:
                    conn.announce(via)
                refused = None
                if config.max_bytes is not None:
                    stream = limited = LimitedStream(stream, config.max_bytes)
                receive: Callable[[int], Awaitable[bytes | bytearray | int]]
                receive, send, feed = stream.receive_some, stream.send_all, conn.feed
                stats = self.stats
                # Our stream's echo without a second scheduler trip (see its docstring).
                send_nowait = getattr(stream, "send_some_nowait", None)
                size, echo, idle = config.receive_size, config.echo, config.idle_timeout
                # --raw: a receive that fills the buffer means a client streaming faster than
                # we print; from then on, take STREAMING_FACTOR times as much at a time.
                streaming = size
                if config.output_format is OutputFormat.RAW and not echo:
                    streaming *= STREAMING_FACTOR
                printing = output is not None and conn.printing
                # --raw into a pipe: zero-copy splicing where the stream can
                # (output/splice.py); the bytes it moves come back as a count, not bytes.
                splicer = output.splicer if output is not None else None
                splice_some = getattr(stream, "splice_some", None)
                if (
                    splicer is not None
                    and splice_some is not None
                    and config.accelerate
                    and stream is accepted
                    and not echo
                    and config.output_format is OutputFormat.RAW
                ):
                    receive = partial(splice_some, splicer)
                if output is not None:
                    await output.put(conn.opened(), conn)
                if echo and idle is None and not printing and isinstance(stream, LeanSocketStream):
                    # The echo benchmark's hot path (--echo --quiet, our own stream, no
                    # wrapper): the loop below without the branches that cannot apply (issue
                    # 16).  One checkpoint per pass, the receive's.
                    lean_receive, lean_send = stream.receive_some, stream.send_some_nowait
                    while chunk := await lean_receive(size):
                        feed(chunk)
                        sent = lean_send(chunk)
                        if sent != len(chunk):  # the kernel's buffer is full: wait for room
                            stats.bytes_echoed += sent
                            chunk = chunk[sent:]
                            await send(chunk)
                        stats.bytes_echoed += len(chunk)
                else:
                    # The hot path (one pass per request in the echo benchmark): one checkpoint
                    # per pass when the stream is ours, nothing awaited that has nothing to do.
                    while True:
                        if idle is not None:
                            scope.deadline = trio.current_time() + idle
                            data = await receive(size)
                            # Time spent waiting for stdout is not the client being idle.
                            scope.deadline = math.inf
                        else:
                            data = await receive(size)
                        if not data:
                            break
                        if type(data) is not bytes:
                            if type(data) is int:  # spliced straight to stdout
                                conn.spliced(data)
                                if data == size:
                                    size = streaming
                                continue
                            data = bytes(data)  # the Stream ABC allows a bytearray
                        if len(data) == size:
                            size = streaming
                        printed = feed(data)
                        if printed and output is not None:
                            await output.put(printed, conn)
                        if echo:
                            if send_nowait is not None:
                                sent = send_nowait(data)
                                stats.bytes_echoed += sent
                                if sent == len(data):
                                    continue
                                data = data[sent:]  # the kernel's buffer is full: wait below
                            if idle is not None:
                                # A client that does not read its echo is idle too: without
                                # this it would hold its slot forever.
                                sending = True
                                scope.deadline = trio.current_time() + idle
                                await send(data)
                                scope.deadline = math.inf
                                sending = False
                            else:
                                await send(data)
                            stats.bytes_echoed += len(data)
            if scope.cancelled_caught and not registry.closing and refused is None:
                conn.reason = (
                    f"not reading its echo for {idle:g} s" if sending else f"idle for {idle:g} s"
                )
            elif limited is not None and limited.exceeded:
                conn.reason = f"sent more than --max-bytes {config.max_bytes}"
        except _Refused as exc:
            refused = exc
        except trio.BrokenResourceError as exc:
            conn.reason = f"connection lost ({_cause(exc)})"
        except trio.Cancelled:
            conn.reason = registry.cancel_reason()
            raise
        except Exception as exc:
            conn.reason = f"error: {exc!r}"
            LOGGER.warning("connection #%d %s failed: %r", conn.conn_id, conn.peer, exc)
        finally:
            del registry.live[conn]
            if refused is not None:
                conn.abandon(refused.kind, refused.what, refused.detail or registry.cancel_reason())
            else:
                last = conn.finish()
                if output is not None:
                    # put_nowait: this must happen even while the handler is being cancelled.
                    output.put_nowait(last)
            registry.left()
            # A TLS stream says goodbye first.  Then we close the stream ourselves, although
            # serve_listeners closes it again after us: its aclose_forcefully then finds it
            # closed, which costs our stream nothing (see LeanSocketStream.aclose).
            if tls is not None:
                await _close_tls(tls)
            if type(accepted) is LeanSocketStream:
                # Closed without aclose's checkpoint: this task has checkpointed at every
                # receive, and ends right here.  One scheduler trip less per client, at the
                # end of the grace period ten thousand of them in a row (docs/performance.md,
                # round 3).
                accepted.close()
            else:
                await accepted.aclose()

    async def _after_proxy_header(
        self, stream: trio.abc.Stream, conn: Connection
    ) -> tuple[trio.abc.Stream, str]:
        """Read the client's PROXY header, name the client after it; the stream to go on
        with (the bytes that came with the header first) and what the ``open`` line adds.
        Raises :class:`_Refused`."""
        header, rest = await self._proxy_header(stream)
        via = _rename(conn, header)
        return (PrefixedStream(stream, rest) if rest else stream), via

    async def _shake_hands(
        self, stream: trio.abc.Stream, conn: Connection
    ) -> trio.SSLStream[trio.abc.Stream]:
        """TLS over ``stream``, once the handshake is done; raises :class:`_Refused`."""
        assert self.tls is not None
        tls = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=False)
        # Cancelled, not ended, at the end of the grace period (a TLS stream has no
        # end_receiving).
        self.registry.replace_stream(conn, tls)
        try:
            await self._handshake(tls)
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls

    async def _proxy_header(self, stream: trio.abc.Stream) -> tuple[ProxyHeader, bytes]:
        """The client's PROXY header and the bytes received after it, within
        ``HEADER_TIMEOUT``."""
        try:
            with trio.move_on_after(HEADER_TIMEOUT):
                data = b""
                while (header := parse(data)) is None:
                    chunk = await stream.receive_some(self.config.receive_size)
                    if not chunk:
                        why = (
                            self.registry.cancel_reason()
                            if self.registry.closing
                            else "closed by the client"
                        )
                        raise _Refused("no PROXY header", why)
                    data += chunk
                return header, data[header.length :]
            raise _Refused("no PROXY header", f"timeout {HEADER_TIMEOUT:g} s")
        except ProxyProtocolError as exc:
            raise _Refused("bad PROXY header", str(exc)) from None
        except trio.BrokenResourceError as exc:
            raise _Refused("no PROXY header", f"connection lost ({_cause(exc)})") from None

    async def _handshake(self, tls: trio.SSLStream[trio.abc.Stream]) -> None:
        """Shake hands within ``--tls-handshake-timeout``; raises :class:`_Refused`."""
        timeout = self.config.tls_handshake_timeout
        with trio.move_on_after(timeout):
            began = trio.current_time()
            try:
                await tls.do_handshake()
                self.stats.handshakes.observe(trio.current_time() - began)
            except trio.BrokenResourceError as exc:
                raise _Refused("TLS handshake failed", _handshake_problem(exc)) from None
            except Exception as exc:
                LOGGER.warning("TLS handshake error: %r", exc)
                raise _Refused("TLS handshake failed", f"error: {exc!r}") from None
            return
        raise _Refused("no TLS handshake", f"--tls-handshake-timeout {timeout:g}")


async def _close_tls(tls: trio.SSLStream[trio.abc.Stream]) -> None:
    """Close a TLS stream with a ``close_notify`` first, so that the client can tell our end of
    the stream from an attacker's truncation.

    Shielded and bounded: this runs in cancelled ``finally`` blocks too, and a client that does
    not read must not hold us (``SSLStream.aclose`` closes the socket when cut short)."""
    with trio.CancelScope(deadline=trio.current_time() + CLOSE_TIMEOUT, shield=True):
        try:
            await tls.aclose()
        except Exception:  # whatever went wrong, the socket must close
            await trio.aclose_forcefully(tls)


def _rename(conn: Connection, header: ProxyHeader) -> str:
    """Name the client after the header's source; return what its ``open`` line adds:
    ``open #3 203.0.113.7:51234 (via 127.0.0.1:53422)``."""
    if header.source is None:
        return "PROXY LOCAL" if header.local else "PROXY without an address"
    balancer = conn.peer
    conn.rename(header.source)
    return f"via {balancer}"


def _handshake_problem(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return describe_ssl_error(cause, handshake=True)
    if isinstance(cause, OSError):
        return (cause.strerror or str(cause)).lower()
    # The client closed the connection before its handshake was done.
    return str(exc) or "closed by the client"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return describe_ssl_error(cause, handshake=False)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__
