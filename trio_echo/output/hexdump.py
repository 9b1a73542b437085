"""``--format hex``: what a client sends, in the layout of ``hexdump -C``, a row per 16 bytes.

::

    [127.0.0.1:53422] 00000000  16 03 01 00 05 68 65 6c  6c 6f 20 50 49 4e 47 0d  |.....hello PING.|
    [127.0.0.1:53422] 00000010  0a 47 45 54                                       |.GET|
    [127.0.0.1:53422] 00000010              20 2f 20 48  54 54 50 2f 31 2e 31 0d  |     / HTTP/1.1.|
    [127.0.0.1:53422] 00000020  0a                                                |.|
    [127.0.0.1:53422] 00000021

Each row: the peer (and the receive time with ``--timestamps``), the offset of the row within
the connection (so a connection's 17th byte is at ``00000010`` whichever read brought it), 16
bytes in two groups of 8, and the ASCII column between ``|``, where anything but printable ASCII
(0x20-0x7e) is a dot: the output is safe for a terminal by construction, whatever the client
sends.  When the connection ends, its length on a row of its own, as ``hexdump -C`` ends.

**A read ends its row.**  ``hexdump -C`` reads a file to the end and holds a short last row
until then; a server cannot: a client that sends a 5-byte request and waits for the answer
would never see it printed.  So every read is printed as soon as it arrives, its last row short
if it must be, and the next read goes on *in the columns where the bytes belong*: its first
row repeats the row's offset and leaves blank the cells that the earlier read filled (the
``00000010`` rows above: ``\\n GET`` ended one read, `` / HTTP/1.1\\r\\n`` was the next).
What this buys a user debugging a protocol: nothing is ever held back, a byte's column is
always its offset modulo 16, and the read boundaries -- often the protocol's message
boundaries -- show.  Merging the rows that share an offset gives exactly ``hexdump -C``'s
rows (the tests check this against the real ``hexdump``).

Two differences from ``hexdump -C`` by design: identical rows are never folded into ``*``
(a live stream is printed as it comes, as ``hexdump -Cv`` prints), and offsets are those of the
connection, counted from 0 for every client.  With ``--echo`` nothing changes: what is printed
is what arrived.
"""

from __future__ import annotations

import array
import sys

from trio_echo.output.format import Formatter, Tally
from trio_echo.output.stamps import ReceiveClock

__all__ = ["ROW_BYTES", "HexDumper", "hex_rows"]

# Bytes per row, in two groups of 8: hexdump -C's layout, which the eye (and muscle memory)
# of anyone who has read a binary protocol expects.
ROW_BYTES = 16

# The ASCII column: printable ASCII as it is, everything else (controls, DEL, 8-bit) a dot.
_ASCII = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))

# A cell of the hex columns with no byte in it.
_BLANK = "  "

# Where things are in a row (after the prefix): the offset, the first hex digit of byte j (a
# space more after the 8th byte), the ASCII column; and the row's length with its newline.
_HEX_AT = [10 + 3 * j + (j >= 8) for j in range(ROW_BYTES)]
_TEXT_AT = 61
_ROW = 79
# An array type code of 32-bit unsigned integers, for the offsets ("I" on every common platform).
_U32 = next(code for code in "ILH" if array.array(code).itemsize == 4)
# The offsets that fit the template's 8 digits.
_MAX_TEMPLATE_OFFSET = 0xFFFFFFFF
# A row with nothing in it, for the whole rows to be written into.
_EMPTY_ROW = b"00000000" + b" " * (_TEXT_AT - 9) + b"|" + b" " * ROW_BYTES + b"|\n"


def _row(offset: int, column: int, chunk: bytes) -> bytes:
    """One row (without the prefix): ``chunk`` placed from ``column`` of the row at ``offset``
    (a multiple of 16); cells before and after it are blank."""
    cells = [_BLANK] * column + chunk.hex(" ").split(" ")
    cells += [_BLANK] * (ROW_BYTES - len(cells))
    text = " " * column + chunk.translate(_ASCII).decode("ascii")
    return f"{offset:08x}  {' '.join(cells[:8])}  {' '.join(cells[8:])}  |{text}|\n".encode()


def _whole_rows(prefix: bytes, offset: int, run: bytes) -> bytes:
    """The rows of ``run``, a whole number of rows from ``offset`` (a multiple of 16).

    No Python work per row: the rows are an empty template repeated, and each column -- a
    digit of the offsets, a hex digit of byte j, its ASCII character -- is written into every
    row at once by a strided slice assignment (``out[start::row_length] = column``), about 60
    C loops for a whole read.  About 20 times faster than formatting row by row, so that a
    client streaming into ``--format hex`` does not hold the event loop for milliseconds per
    read (tests/test_hexdump.py checks that both ways agree).  Past 4 GiB into a connection
    the offsets outgrow their 8 digits, and the rows are formatted one by one.
    """
    if offset + len(run) > _MAX_TEMPLATE_OFFSET:
        return b"".join(
            prefix + _row(offset + i, 0, run[i : i + ROW_BYTES])
            for i in range(0, len(run), ROW_BYTES)
        )
    rows = len(run) // ROW_BYTES
    size = len(prefix) + _ROW
    out = bytearray(prefix + _EMPTY_ROW) * rows
    at = len(prefix)
    # The offsets as big-endian 32-bit integers, then hex: 8 digits each, one C call.
    numbers = array.array(_U32, range(offset, offset + len(run), ROW_BYTES))
    if sys.byteorder == "little":
        numbers.byteswap()
    offsets = numbers.tobytes().hex().encode("ascii")
    for k in range(8):
        out[at + k :: size] = offsets[k::8]
    digits = run.hex().encode("ascii")
    for j, col in enumerate(_HEX_AT):
        out[at + col :: size] = digits[2 * j :: 2 * ROW_BYTES]
        out[at + col + 1 :: size] = digits[2 * j + 1 :: 2 * ROW_BYTES]
    text = run.translate(_ASCII)
    for j in range(ROW_BYTES):
        out[at + _TEXT_AT + j :: size] = text[j::ROW_BYTES]
    return bytes(out)


def hex_rows(prefix: bytes, offset: int, data: bytes) -> bytes:
    """The rows for ``data``, the bytes of a stream from ``offset`` on, each after ``prefix``:
    a partial first row (going on from an earlier read), the whole rows, a partial last row."""
    out: list[bytes] = []
    pos = 0
    column = offset % ROW_BYTES
    if column:
        # Going on from a row that an earlier read began: its bytes stay in their columns.
        pos = min(ROW_BYTES - column, len(data))
        out += (prefix, _row(offset - column, column, data[:pos]))
    whole = pos + (len(data) - pos) // ROW_BYTES * ROW_BYTES
    if whole > pos:
        out.append(_whole_rows(prefix, offset + pos, data[pos:whole]))
    if whole < len(data):
        out += (prefix, _row(offset + whole, 0, data[whole:]))
    return b"".join(out)


class HexDumper:
    """One connection's hex dump: bytes in, rows out, nothing held (see the module docstring).

    It stands where a :class:`~trio_echo.output.format.LineAssembler` stands for the line
    formats (``feed``, ``finish``, a ``formatter`` for the open/close events, of which hex has
    none on stdout), so every model of the lab prints hex through the same
    :class:`~trio_echo.connection.Connection`.
    """

    def __init__(
        self, peer: str, clock: ReceiveClock | None = None, tally: Tally | None = None
    ) -> None:
        self._peer = f"[{peer}] ".encode()
        self._clock = clock
        self.formatter = Formatter(tally)  # open and close print nothing on stdout
        self.tally = self.formatter.tally
        self.offset = 0  # bytes of the connection so far: where the next read begins

    def _prefix(self) -> bytes:
        if self._clock is None:
            return self._peer
        self._clock.mark()
        return self._clock.stamp() + self._peer

    def feed(self, data: bytes) -> bytes:
        """The rows for the next bytes received, printed now, whole or not."""
        if not data:
            return b""
        offset = self.offset
        rows = hex_rows(self._prefix(), offset, data)
        self.offset = end = offset + len(data)
        # The rows this read touched: one per 16-byte row of the stream it reaches into.
        self.tally.lines += (end - 1) // ROW_BYTES - offset // ROW_BYTES + 1
        return rows

    def finish(self) -> bytes:
        """The connection ended: its length on a row of its own (nothing if it sent nothing,
        as ``hexdump -C`` prints nothing for an empty file)."""
        if not self.offset:
            return b""
        self.tally.lines += 1
        return b"%s%08x\n" % (self._prefix(), self.offset)
