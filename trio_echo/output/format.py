"""Turning untrusted bytes from a client into output lines that are safe to print.

Everything here is pure and synchronous: a :class:`LineAssembler` per connection takes the bytes
as ``receive_some`` hands them over, in whatever pieces the network chose, and returns finished
output (whole lines only) for the stdout writer.  Nothing in this module does I/O, so it is tested
exhaustively without sockets, and every concurrency model of the lab shares it.

Cleaning unsafe characters for a terminal is :mod:`trio_echo.output.clean`; this module
assembles lines and formats them.  The line formats (see :class:`OutputFormat`):

* ``text``: ``[peer] line`` per received line, cleaned for a terminal (:func:`clean`);
* ``raw``: the bytes exactly as received (no assembler at all);
* ``jsonl``: one JSON object per line piece, plus ``open``/``close`` events.

(``hex``, rows of 16 bytes rather than lines, is :mod:`trio_echo.output.hexdump`; the receive
time of ``--timestamps`` is :mod:`trio_echo.output.stamps`.)

Line assembly rules (identical in text and jsonl mode):

* A line ends at ``\\n``; a ``\\r`` right before it belongs to the terminator, not the data.
* A line longer than ``max_line`` bytes is cut into pieces of at most ``max_line`` bytes, never
  inside a UTF-8 character; every piece after the first is marked as a continuation.  Memory per
  connection is therefore bounded by ``max_line`` plus one receive, whatever the client sends.
* The pieces depend only on the bytes, never on how the network split them: feeding a stream in
  any chunks gives the same output as feeding it whole (a hypothesis property test checks this).
* At EOF a last line without a newline is still printed.

Speed: text mode is the default, and a client can send gigabytes per second, so the common case
-- a receive full of printable ASCII lines -- costs two C passes over the bytes and no Python
loop at all: ``translate`` deleting the safe bytes proves there is nothing to escape, and one
``replace`` puts the peer prefix on every line.  Other clean text costs a few more C passes (see
:func:`trio_echo.output.clean.clean_unsafe`); only invalid UTF-8 goes through ``str.translate``.
``tools/bench_output.py`` measures all of this.
"""

from __future__ import annotations

import datetime
import enum
import json
from collections.abc import Callable

from trio_echo.output.clean import (
    SAFE_ASCII,
    SAFE_SCAN,
    clean,
    clean_bytes,
    clean_unsafe,
    fold_crlf,
)

__all__ = [
    "DEFAULT_MAX_LINE",
    "Formatter",
    "JsonlFormatter",
    "LineAssembler",
    "OutputFormat",
    "Tally",
    "TextFormatter",
    "clean",
    "format_peer",
]

# A line longer than this is printed in pieces: it bounds the memory a client can make us hold
# for one line, and 64 KiB is still far longer than any line a human wants to read in one go.
DEFAULT_MAX_LINE = 64 * 1024

# UTF-8 continuation bytes look like 0b10xxxxxx; a character is at most 4 bytes, so backing off
# at most 3 bytes from a cut point always reaches the start of a character (or proves garbage).
_MAX_UTF8_BACKOFF = 3


class OutputFormat(enum.Enum):
    """How received data is written to stdout."""

    TEXT = "text"
    RAW = "raw"
    JSONL = "jsonl"
    # hexdump -C's layout, a row per 16 bytes: trio_echo.output.hexdump.
    HEX = "hex"


def format_peer(address: object) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, ``str()`` for anything else."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return str(address) if address else "unknown"


def _cut_point(data: bytes, start: int, max_line: int) -> int:
    """Where to end a piece of at most ``max_line`` bytes that begins at ``data[start]``.

    Requires ``len(data) - start > max_line``.  Backs off to the start of a UTF-8 character so
    that a character is never split between two pieces; garbage (continuation bytes only) is
    cut at ``max_line`` anyway.
    """
    limit = start + max_line
    cut = limit
    while cut > limit - _MAX_UTF8_BACKOFF and data[cut] & 0xC0 == 0x80:
        cut -= 1
    if data[cut] & 0xC0 == 0x80:
        return limit
    return cut


class Tally:
    """The lines formatted for output, counted by every connection's formatter into one
    ``Tally`` per server (``ServerStats.printed``: the metrics' ``printed_lines``).

    Counted where the lines are formatted, at the cost of one addition per block: counting
    the newlines in the written output instead would be a second pass over every byte
    (``bytes.count`` runs at about 2 GB/s here, which would cost a third of text mode's
    throughput).  A formatter without a server's tally counts into one of its own."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines = 0


class Formatter:
    """Turns line pieces into output bytes; one instance per connection."""

    def __init__(self, tally: Tally | None = None) -> None:
        self.tally = Tally() if tally is None else tally

    def block(self, block: bytes) -> bytes:
        """Format ``block``: one or more complete lines, each ending in ``\\n`` (or ``\\r\\n``),
        none longer than the line limit, the first not a continuation.  The hot path."""
        raise NotImplementedError

    def piece(self, content: bytes, eol: bytes, continued: bool) -> bytes:
        """Format one line or piece of a line: ``eol`` is its terminator (``b""`` for a piece
        cut at the line limit or a last line at EOF); ``continued`` marks a piece that goes on
        from the previous one."""
        raise NotImplementedError

    def opened(self) -> bytes:
        """Output for the connection being opened (only jsonl prints events on stdout)."""
        return b""

    def closed(self, received: int, duration: float, reason: str) -> bytes:
        """Output for the connection being closed."""
        return b""


class TextFormatter(Formatter):
    """``[peer] line`` per line; continuation pieces are marked ``[peer]+ line``."""

    def __init__(
        self,
        peer: str,
        tally: Tally | None = None,
        scan: Callable[[bytes], bool] | None = SAFE_SCAN,
    ) -> None:
        super().__init__(tally)
        # The fast safety test (clean.SAFE_SCAN), or None: bytes.translate alone.
        self._scan = scan
        # Everything in bytes: a block of printable ASCII, the common case, is never decoded.
        self._prefix = f"[{peer}] ".encode()
        self._continued_prefix = f"[{peer}]+ ".encode()
        self._newline_prefix = b"\n" + self._prefix

    def block(self, block: bytes) -> bytes:
        # A handful of C passes over the whole block, never a Python loop per line or per byte;
        # for printable ASCII: one safety test (the C scan, else a translate) and one replace
        # (the prefixes).
        scan = self._scan
        unsafe = b"" if scan is not None and scan(block) else block.translate(None, SAFE_ASCII)
        if unsafe:
            if b"\r" in unsafe:
                block = fold_crlf(block)
                if b"\r" not in block:
                    unsafe = unsafe.replace(b"\r", b"")  # they were all CRLF terminators
            if unsafe:
                # Lines never run into one another: \n is ASCII, so it is never part of a UTF-8
                # character nor of an invalid sequence, and clean() leaves it alone.
                block = clean_unsafe(block, unsafe)
        # The block ends in \n, so this gives every line its prefix plus one too many at the
        # end, dropped through a memoryview: one copy less than slicing it off.
        prefixed = block.replace(b"\n", self._newline_prefix)
        # Each newline grew by the prefix: the line count without a pass of its own.
        self.tally.lines += (len(prefixed) - len(block)) // len(self._prefix)
        return b"".join((self._prefix, memoryview(prefixed)[: -len(self._prefix)]))

    def piece(self, content: bytes, eol: bytes, continued: bool) -> bytes:
        prefix = self._continued_prefix if continued else self._prefix
        self.tally.lines += 1
        return b"".join((prefix, clean_bytes(content), b"\n"))


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def _dumps(obj: dict[str, object]) -> bytes:
    # ensure_ascii escapes everything outside printable ASCII (C0, DEL, C1, all non-ASCII), so
    # the line is safe for a terminal as it stands.
    return (json.dumps(obj, ensure_ascii=True) + "\n").encode()


class JsonlFormatter(Formatter):
    """One JSON object per line piece and per open/close event, for ``jq`` and log pipelines.

    ``data`` is the line without its terminator, ``eol`` the terminator (``"\\n"``, ``"\\r\\n"``
    or ``""`` for a piece cut at the line limit or a last line at EOF), so concatenating
    ``data + eol`` over a connection gives back exactly what the client sent.  A line that is not
    valid UTF-8 has ``data`` with U+FFFD replacements, plus ``data_b64`` with the exact bytes.
    """

    def __init__(
        self,
        conn_id: int,
        peer: str,
        now: Callable[[], str] = _utc_now,
        *,
        worker: int | None = None,
        tally: Tally | None = None,
    ) -> None:
        super().__init__(tally)
        # With --workers every worker numbers its own connections: "worker" makes the pair unique.
        self._base: dict[str, object] = {"conn": conn_id, "peer": peer}
        if worker is not None:
            self._base = {"worker": worker, **self._base}
        self._now = now

    def _event(self, event: str, **fields: object) -> bytes:
        return _dumps({"time": self._now(), "event": event, **self._base, **fields})

    def _data(self, stamp: str, content: bytes, eol: bytes, continued: bool) -> bytes:
        fields: dict[str, object] = {"time": stamp, "event": "data", **self._base}
        try:
            fields["data"] = content.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            fields["data"] = content.decode("utf-8", "replace")
            fields["data_b64"] = base64.b64encode(content).decode("ascii")
        fields["eol"] = eol.decode("ascii")
        if continued:
            fields["continued"] = True
        return _dumps(fields)

    def block(self, block: bytes) -> bytes:
        stamp = self._now()
        out = []
        for line in block[:-1].split(b"\n"):
            if line.endswith(b"\r"):
                out.append(self._data(stamp, line[:-1], b"\r\n", False))
            else:
                out.append(self._data(stamp, line, b"\n", False))
        self.tally.lines += len(out)
        return b"".join(out)

    def piece(self, content: bytes, eol: bytes, continued: bool) -> bytes:
        self.tally.lines += 1
        return self._data(self._now(), content, eol, continued)

    def opened(self) -> bytes:
        return self._event("open")

    def closed(self, received: int, duration: float, reason: str) -> bytes:
        return self._event("close", bytes=received, duration=round(duration, 6), reason=reason)


class LineAssembler:
    """Per-connection line assembly: bytes in, formatted whole output lines out.

    The common case -- a receive full of complete lines of sane length -- goes to the formatter
    as a single block.  Partial lines wait in ``_pending`` (never more than ``max_line`` + one
    ``\\r``), long lines are cut into pieces.
    """

    def __init__(self, formatter: Formatter, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 4:
            raise ValueError("max_line must be at least 4 bytes (one UTF-8 character)")
        self.formatter = formatter
        self._max_line = max_line
        self._pending = b""
        # True when the last thing we printed was a piece cut at the limit: the next one goes on.
        self._continued = False

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes from the client; return the output for every finished line."""
        if self._pending:
            data = self._pending + data  # a memcpy: cheap next to the formatting passes
            self._pending = b""
        out: list[bytes] = []
        start = 0  # where the next line begins
        if self._continued:
            # The first line goes on from a piece cut at the limit: the slow path.
            first = data.find(b"\n")
            if first < 0:
                return self._hold(data)
            out.append(self._line(data[: first + 1]))
            start = first + 1
        last = data.rfind(b"\n", start)
        if last >= 0:
            self._complete_lines(data, start, last + 1, out)
            start = last + 1
        held = self._hold(data[start:])
        if held:
            out.append(held)
        # join() returns a lone bytes item as it is: no copy for the common single block.
        return b"".join(out)

    def _complete_lines(self, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        """Format the complete lines ``data[start:end]`` (``end`` just after a newline).

        Runs of lines no longer than the limit go to the formatter as one block; only a line
        that is too long takes the slow path.  Rather than measuring every line, look for the
        last newline within ``max_line + 1`` bytes (a memrchr): if there is one, every line up
        to it is short enough, and the walk moves on by up to ``max_line + 1`` bytes at once,
        a whole receive in one or two steps with the default limit.  If there is none, the
        line there is too long (or exactly at the limit with a CRLF: the slow path gets that
        right too).
        """
        window = self._max_line + 1
        # With a small limit the walk would take a step per line or so: "all lines short
        # enough", as usual, is checked at C speed first (conservatively: a CR counts).
        if end - start > 8 * window and max(map(len, data[start : end - 1].split(b"\n"))) < window:
            out.append(self.formatter.block(data[start:end]))
            return
        block_start = start
        while end - start > window:
            newline = data.rfind(b"\n", start, start + window)
            if newline >= 0:
                start = newline + 1
                continue
            if start > block_start:
                out.append(self.formatter.block(data[block_start:start]))
            newline = data.find(b"\n", start + window)  # there is one: data[end - 1]
            out.append(self._line(data[start : newline + 1]))
            start = block_start = newline + 1
        # At most max_line + 1 bytes are left: their lines are all short enough.
        if end > block_start:
            out.append(self.formatter.block(data[block_start:end]))

    def finish(self) -> bytes:
        """The client is gone: return the output for a last line without a newline."""
        data, self._pending = self._pending, b""
        if not data:
            return b""
        return self._pieces(data, b"")

    def _line(self, line: bytes) -> bytes:
        """Format one complete line (ending in ``\\n``) of any length."""
        if line.endswith(b"\r\n"):
            return self._pieces(line[:-2], b"\r\n")
        return self._pieces(line[:-1], b"\n")

    def _cut(self, data: bytes, end: int) -> tuple[list[bytes], int]:
        """Format pieces of ``max_line`` bytes off the front of ``data`` while more than
        ``max_line`` bytes remain before ``end``; return them and where the rest starts.

        Walks an offset instead of re-slicing the rest after every piece, so that one large
        receive costs time linear in its size even with a tiny ``max_line``.
        """
        out = []
        start = 0
        while end - start > self._max_line:
            cut = _cut_point(data, start, self._max_line)
            out.append(self.formatter.piece(data[start:cut], b"", self._continued))
            self._continued = True
            start = cut
        return out, start

    def _pieces(self, content: bytes, eol: bytes) -> bytes:
        """Cut ``content`` (a whole line, or the rest of one) into pieces and format them."""
        out, start = self._cut(content, len(content))
        out.append(self.formatter.piece(content[start:], eol, self._continued))
        self._continued = False
        return b"".join(out)

    def _hold(self, partial: bytes) -> bytes:
        """Keep a partial line, printing pieces of it once it is certainly too long.

        A trailing ``\\r`` does not count towards the length: it may turn out to be half of a
        CRLF terminator, and the pieces must not depend on whether the ``\\n`` came in the same
        receive.
        """
        out, start = self._cut(partial, len(partial) - partial.endswith(b"\r"))
        self._pending = partial[start:]
        return b"".join(out)
