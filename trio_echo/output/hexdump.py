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

from trio_echo.output.format import Formatter
from trio_echo.output.stamps import ReceiveClock

__all__ = ["ROW_BYTES", "HexDumper", "hex_rows"]

# Bytes per row, in two groups of 8: hexdump -C's layout, which the eye (and muscle memory)
# of anyone who has read a binary protocol expects.
ROW_BYTES = 16

# The ASCII column: printable ASCII as it is, everything else (controls, DEL, 8-bit) a dot.
_ASCII = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))

# A cell of the hex columns with no byte in it.
_BLANK = "  "


def _row(offset: int, column: int, chunk: bytes) -> str:
    """One row (without the peer): ``chunk`` placed from ``column`` of the row at ``offset``
    (a multiple of 16); cells before and after it are blank."""
    cells = [_BLANK] * column + chunk.hex(" ").split(" ")
    cells += [_BLANK] * (ROW_BYTES - len(cells))
    text = " " * column + chunk.translate(_ASCII).decode("ascii")
    return f"{offset:08x}  {' '.join(cells[:8])}  {' '.join(cells[8:])}  |{text}|\n"


def hex_rows(prefix: str, offset: int, data: bytes) -> list[str]:
    """The rows for ``data``, the bytes of a stream from ``offset`` on, each after ``prefix``.

    Whole rows, the bulk of a large read, are cut from one ``hex()`` and one ``translate()``
    of the whole run (a list comprehension, no call per row); only the partial first and last
    rows take :func:`_row`.
    """
    rows = []
    pos = 0
    column = offset % ROW_BYTES
    if column:
        # Going on from a row that an earlier read began: its bytes stay in their columns.
        pos = min(ROW_BYTES - column, len(data))
        rows.append(prefix + _row(offset - column, column, data[:pos]))
    whole = pos + (len(data) - pos) // ROW_BYTES * ROW_BYTES
    if whole > pos:
        run = data[pos:whole]
        hexed = run.hex(" ")
        text = run.translate(_ASCII).decode("ascii")
        base = offset + pos
        rows += [
            f"{prefix}{base + i:08x}  {hexed[3 * i : 3 * i + 23]}  {hexed[3 * i + 24 : 3 * i + 47]}"
            f"  |{text[i : i + ROW_BYTES]}|\n"
            for i in range(0, whole - pos, ROW_BYTES)
        ]
    if whole < len(data):
        rows.append(prefix + _row(offset + whole, 0, data[whole:]))
    return rows


class HexDumper:
    """One connection's hex dump: bytes in, rows out, nothing held (see the module docstring).

    It stands where a :class:`~trio_echo.output.format.LineAssembler` stands for the line
    formats (``feed``, ``finish``, a ``formatter`` for the open/close events, of which hex has
    none on stdout), so every model of the lab prints hex through the same
    :class:`~trio_echo.connection.Connection`.
    """

    def __init__(self, peer: str, clock: ReceiveClock | None = None) -> None:
        self._peer = f"[{peer}] "
        self._clock = clock
        self.formatter = Formatter()  # open and close print nothing on stdout
        self.offset = 0  # bytes of the connection so far: where the next read begins

    def _prefix(self) -> str:
        if self._clock is None:
            return self._peer
        self._clock.mark()
        return self._clock.stamp().decode("ascii") + self._peer

    def feed(self, data: bytes) -> bytes:
        """The rows for the next bytes received, printed now, whole or not."""
        if not data:
            return b""
        rows = hex_rows(self._prefix(), self.offset, data)
        self.offset += len(data)
        return "".join(rows).encode()

    def finish(self) -> bytes:
        """The connection ended: its length on a row of its own (nothing if it sent nothing,
        as ``hexdump -C`` prints nothing for an empty file)."""
        if not self.offset:
            return b""
        return f"{self._prefix()}{self.offset:08x}\n".encode()
