"""Unit and property tests of ``--format hex`` (:mod:`trio_echo.output.hexdump`) and of the
receive times of ``--timestamps`` (:mod:`trio_echo.output.stamps`): no sockets, no server.

The hex layout is checked against the real ``hexdump -Cv`` where it is installed (and against a
golden copy of its output everywhere): whatever the reads, merging the rows that share an
offset must give exactly its rows.
"""

from __future__ import annotations

import calendar
import itertools
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.output import hexdump
from trio_echo.output.format import JsonlFormatter, LineAssembler, OutputFormat
from trio_echo.output.hexdump import HexDumper
from trio_echo.output.stamps import (
    ReceiveClock,
    StampedLineAssembler,
    StampedTextFormatter,
    Timestamps,
)
from trio_echo.stats import ServerStats

PEER = "127.0.0.1:53422"
PREFIX = f"[{PEER}] "
HEXDUMP = shutil.which("hexdump")

# One row of ours, without the prefix: offset, 16 cells of 2 characters (blank or a byte),
# the ASCII column.
ROW_RE = re.compile(
    r"^(?P<offset>[0-9a-f]{8})  (?P<cells>.{23})  (?P<cells2>.{23})  \|(?P<text>.*)\|$"
)

# `printf 'Hello, world!\n\x00\x01\x02\x7f\x80\xff\tbinary and text, more than one row' |
# hexdump -C`: what the hexdump of util-linux prints, for the machines without it.
GOLDEN_INPUT = b"Hello, world!\n\x00\x01\x02\x7f\x80\xff\tbinary and text, more than one row"
GOLDEN = """\
00000000  48 65 6c 6c 6f 2c 20 77  6f 72 6c 64 21 0a 00 01  |Hello, world!...|
00000010  02 7f 80 ff 09 62 69 6e  61 72 79 20 61 6e 64 20  |.....binary and |
00000020  74 65 78 74 2c 20 6d 6f  72 65 20 74 68 61 6e 20  |text, more than |
00000030  6f 6e 65 20 72 6f 77                              |one row|
00000037
"""


def dump(reads: list[bytes], clock: ReceiveClock | None = None) -> list[str]:
    """Our output for a connection that brought ``reads``, as lines."""
    dumper = HexDumper(PEER, clock)
    out = b"".join(dumper.feed(read) for read in reads) + dumper.finish()
    return out.decode().splitlines()


def merged(lines: list[str]) -> str:
    """Our rows (prefix checked and dropped) merged by offset into ``hexdump -C``'s layout.

    Each byte is taken from the one row whose cell for it is filled, its ASCII character from
    the same row's column; the last line, the length, is kept as it is."""
    rows: dict[int, list[tuple[str, str] | None]] = {}
    for line in lines[:-1]:
        assert line.startswith(PREFIX), line
        match = ROW_RE.match(line[len(PREFIX) :])
        assert match, line
        cells = [match["cells"][i : i + 2] for i in range(0, 23, 3)]
        cells += [match["cells2"][i : i + 2] for i in range(0, 23, 3)]
        row = rows.setdefault(int(match["offset"], 16), [None] * 16)
        for i, cell in enumerate(cells):
            if cell != "  ":
                assert row[i] is None, f"byte {i} of row {match['offset']} printed twice"
                row[i] = (cell, match["text"][i])
    out = []
    for offset, row in sorted(rows.items()):
        filled = [cell for cell in row if cell is not None]
        assert row[: len(filled)] == filled, f"a gap in row {offset:08x}"
        hexes = [cell for cell, _ in filled] + ["  "] * (16 - len(filled))
        text = "".join(char for _, char in filled)
        out.append(f"{offset:08x}  {' '.join(hexes[:8])}  {' '.join(hexes[8:])}  |{text}|")
    assert lines[-1].startswith(PREFIX)
    return "".join(f"{row}\n" for row in [*out, lines[-1][len(PREFIX) :]])


def hexdump_c(data: bytes) -> str:
    """``hexdump -Cv`` of ``data`` (``-v``: no ``*`` for repeated rows, as we print them)."""
    assert HEXDUMP is not None
    result = subprocess.run(
        [HEXDUMP, "-Cv"], input=data, capture_output=True, check=True, timeout=10
    )
    return result.stdout.decode()


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# ---- the layout --------------------------------------------------------------------------------


def test_one_read_is_hexdump_c_with_the_peer_in_front():
    lines = dump([GOLDEN_INPUT])
    assert [line.removeprefix(PREFIX) for line in lines] == GOLDEN.splitlines()
    assert all(line.startswith(PREFIX) for line in lines)


@pytest.mark.skipif(HEXDUMP is None, reason="hexdump is not installed")
def test_the_golden_copy_is_what_hexdump_prints_here():
    assert hexdump_c(GOLDEN_INPUT) == GOLDEN


def test_a_read_ends_its_row_and_the_next_goes_on_in_its_columns():
    # A 5-byte request the client waits on must be printed now, not when 11 more bytes come.
    lines = dump([b"PING\n", b"PONG? and a longer tail\r\n"])
    assert lines == [
        f"{PREFIX}00000000  50 49 4e 47 0a                                    |PING.|",
        f"{PREFIX}00000000                 50 4f 4e  47 3f 20 61 6e 64 20 61  |     PONG? and a|",
        f"{PREFIX}00000010  20 6c 6f 6e 67 65 72 20  74 61 69 6c 0d 0a        | longer tail..|",
        f"{PREFIX}0000001e",
    ]
    assert merged(lines) == "".join(
        line.removeprefix(PREFIX) + "\n" for line in dump([b"PING\nPONG? and a longer tail\r\n"])
    )


def test_offsets_run_across_reads():
    # The 17th byte is at 0x10 whichever read brought it; a read of exactly one row.
    lines = dump([b"a" * 16, b"b" * 16, b"c"])
    assert [line.removeprefix(PREFIX)[:8] for line in lines] == [
        "00000000",
        "00000010",
        "00000020",
        "00000021",
    ]


def test_non_printables_are_dots_and_nothing_unsafe_reaches_the_terminal():
    data = bytes(range(256))
    text = "".join(dump([data]))
    assert all(0x20 <= ord(char) < 0x7F for char in text), "only printable ASCII is printed"
    # The column starts at a fixed place (a client's "|" is printable, so no splitting on it).
    columns = [line[len(PREFIX) + 61 : -1] for line in dump([data])[:-1]]
    expected = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)
    assert "".join(columns) == expected


def test_an_empty_connection_prints_nothing_as_hexdump_of_an_empty_file():
    assert dump([]) == []


@pytest.mark.skipif(HEXDUMP is None, reason="hexdump is not installed")
@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12),
)
def test_merged_rows_are_hexdump_c_however_the_reads_split(data, cuts):
    lines = dump(splits(data, cuts))
    assert merged(lines) == hexdump_c(data)
    # Every read starts a row of its own and is printed whole: the rows carry every byte once.
    assert len(lines) - 1 == sum(
        (len(read) + (offset % 16) + 15) // 16 for offset, read in _offsets(splits(data, cuts))
    )


def _offsets(reads: list[bytes]) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    for read in reads:
        out.append((offset, read))
        offset += len(read)
    return out


def test_a_large_read_takes_the_bulk_path_and_agrees_with_the_row_path(monkeypatch):
    data = bytes(range(256)) * 300 + b"tail"
    in_one = dump([data])
    byte_by_byte = merged(dump([data[i : i + 1] for i in range(0, 200)] + [data[200:]]))
    assert merged(in_one) == byte_by_byte
    # The whole rows of a read are written into a template, column by column; formatted one
    # by one (as past 4 GiB) they are the same.
    monkeypatch.setattr(hexdump, "_MAX_TEMPLATE_OFFSET", -1)
    assert dump([data]) == in_one


def test_offsets_past_4_gib_grow_a_digit_as_hexdump_does():
    dumper = HexDumper(PEER)
    dumper.offset = 0xFFFFFFF8
    rows = (dumper.feed(b"x" * 40) + dumper.finish()).decode().splitlines()
    assert [row.removeprefix(PREFIX).split("  ")[0] for row in rows] == [
        "fffffff0",
        "100000000",
        "100000010",
        "100000020",
    ]


# ---- receive times -----------------------------------------------------------------------------


def utc_ns(*when: int, ns: int = 0) -> int:
    return calendar.timegm((*when, 0, 0, 0)) * 1_000_000_000 + ns


class FakeTime:
    """A clock the test moves by hand (nanoseconds)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_utc_stamps_are_iso_8601_with_microseconds_and_z():
    wall = FakeTime(utc_ns(2026, 12, 2, 1, 2, 3, ns=456_789_999))
    clock = ReceiveClock(Timestamps.UTC, 0, wall_ns=wall)
    clock.mark()
    assert clock.stamp() == b"2026-12-02T01:02:03.456789Z "
    wall.now = utc_ns(2027, 1, 1, 0, 0, 0, ns=1_000)
    assert clock.stamp() == b"2026-12-02T01:02:03.456789Z ", "the time of the read, not now"
    clock.mark()
    assert clock.stamp() == b"2027-01-01T00:00:00.000001Z "


def test_relative_stamps_count_from_the_origin_on_the_monotonic_clock():
    mono = FakeTime(5_000_000_000 + 12_345_678_999)
    clock = ReceiveClock(Timestamps.RELATIVE, 5_000_000_000, monotonic_ns=mono)
    clock.mark()
    assert clock.stamp() == b"+12.345678 "
    mono.now = 5_000_000_000 + 3600 * 1_000_000_000
    clock.mark()
    assert clock.stamp() == b"+3600.000000 "


def stamped_text(mono: FakeTime, max_line: int = 64) -> StampedLineAssembler:
    clock = ReceiveClock(Timestamps.RELATIVE, 0, monotonic_ns=mono)
    return StampedLineAssembler(StampedTextFormatter(PEER, clock), clock, max_line)


def test_a_text_line_carries_the_time_of_the_read_that_completed_it():
    mono = FakeTime(1_000_000_000)
    lines = stamped_text(mono)
    assert lines.feed(b"GET / HT") == b""  # not a line yet
    mono.now = 2_500_000_000
    assert (
        lines.feed(b"TP/1.1\r\nHost: x\r\n\x1b[2J\n")
        == (
            f"+2.500000 {PREFIX}GET / HTTP/1.1\n"
            f"+2.500000 {PREFIX}Host: x\n"
            f"+2.500000 {PREFIX}\\x1b[2J\n"
        ).encode()
    )
    mono.now = 3_000_000_000
    assert lines.feed(b"no newline") == b""
    mono.now = 4_000_000_000
    # A last line without a newline is completed by the end of the connection.
    assert lines.finish() == f"+4.000000 {PREFIX}no newline\n".encode()


def test_pieces_of_a_long_line_carry_the_time_of_their_own_read():
    mono = FakeTime(1_000_000_000)
    lines = stamped_text(mono, max_line=8)
    assert lines.feed(b"0123456789") == f"+1.000000 {PREFIX}01234567\n".encode()
    mono.now = 2_000_000_000
    assert lines.feed(b"\n") == f"+2.000000 [{PEER}]+ 89\n".encode()


def test_hex_rows_carry_the_time_of_their_read_and_the_length_the_close_time():
    mono = FakeTime(1_000_000_000)
    dumper = HexDumper(PEER, ReceiveClock(Timestamps.RELATIVE, 0, monotonic_ns=mono))
    first = dumper.feed(b"x" * 20).decode().splitlines()
    mono.now = 2_000_000_000
    second = dumper.feed(b"y").decode().splitlines()
    mono.now = 3_000_000_000
    last = dumper.finish().decode()
    assert [line[:10] for line in first] == ["+1.000000 ", "+1.000000 "]
    assert second[0].startswith(f"+2.000000 {PREFIX}00000010 ")
    assert last == f"+3.000000 {PREFIX}00000015\n"


# ---- which assembler a connection gets ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({}, LineAssembler),
        ({"output_format": OutputFormat.HEX}, HexDumper),
        ({"output_format": OutputFormat.HEX, "timestamps": Timestamps.UTC}, HexDumper),
        ({"timestamps": Timestamps.RELATIVE}, StampedLineAssembler),
        ({"output_format": OutputFormat.RAW, "timestamps": Timestamps.UTC}, type(None)),
        ({"output_format": OutputFormat.HEX, "quiet": True}, type(None)),
    ],
)
def test_each_format_gets_its_assembler(fields, kind):
    conn = Connection.open(Config(**fields), ServerStats(), ("127.0.0.1", 53422), announce=False)
    assert type(conn.assembler) is kind


def test_jsonl_keeps_its_own_time_field():
    # An embedder's Config may ask for both (the command line refuses it): jsonl is unchanged.
    config = Config(output_format=OutputFormat.JSONL, timestamps=Timestamps.UTC)
    conn = Connection.open(config, ServerStats(), ("127.0.0.1", 53422), announce=False)
    assert conn.assembler is not None
    assert isinstance(conn.assembler.formatter, JsonlFormatter)


def test_hex_through_a_connection_counts_and_prints():
    config = Config(output_format=OutputFormat.HEX)
    conn = Connection.open(config, ServerStats(), ("::1", 41616), announce=False)
    out = conn.feed(b"hi") + conn.finish()
    assert out.decode().splitlines() == [
        "[[::1]:41616] 00000000  68 69                                             |hi|",
        "[[::1]:41616] 00000002",
    ]
    assert conn.received == 2
