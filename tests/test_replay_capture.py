"""Unit and property tests for :mod:`trio_echo.replay.capture`: the server's jsonl output back
into each connection's bytes and times, and every bad capture refused with its line number.

Captures are made by the server's own formatter and line assembler (``JsonlFormatter``,
``LineAssembler``) with a fake clock, so these tests check the parser against the real format,
not against a copy of it.  Pure and fast: no sockets, no Trio.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_echo.output.format import JsonlFormatter, LineAssembler
from trio_echo.replay.capture import Capture, CaptureError, parse_capture, read_capture

BASE = datetime.datetime(2026, 12, 2, 2, 0, tzinfo=datetime.timezone.utc)
PEER = "127.0.0.1:53422"


def stamp(seconds: float) -> str:
    """The server's time stamp for ``seconds`` after BASE."""
    moment = BASE + datetime.timedelta(seconds=seconds)
    return moment.isoformat(timespec="microseconds")


class Recorder:
    """One captured connection, recorded the way the server records it (same classes)."""

    def __init__(self, conn_id: int, max_line: int = 64, worker: int | None = None) -> None:
        self.now = 0.0
        self.sent = b""
        self.formatter = JsonlFormatter(conn_id, PEER, lambda: stamp(self.now), worker=worker)
        self.assembler = LineAssembler(self.formatter, max_line)

    def open(self, at: float) -> bytes:
        self.now = at
        return self.formatter.opened()

    def send(self, at: float, data: bytes) -> bytes:
        self.now = at
        self.sent += data
        return self.assembler.feed(data)

    def close(self, at: float, reason: str = "closed by client") -> bytes:
        self.now = at
        return self.assembler.finish() + self.formatter.closed(len(self.sent), at, reason)


def parse(lines: bytes | Sequence[bytes], name: str = "cap.jsonl") -> Capture:
    data = lines if isinstance(lines, bytes) else b"".join(lines)
    return parse_capture(io.BytesIO(data), name)


def sent_by(capture: Capture) -> list[bytes]:
    return [b"".join(chunk.data for chunk in conn.chunks) for conn in capture.connections]


def record(event: str, at: float = 0.0, conn: int = 1, **fields: object) -> bytes:
    body = {"time": stamp(at), "event": event, "conn": conn, "peer": PEER, **fields}
    return (json.dumps(body) + "\n").encode()


# --------------------------------------------------------------------------------------------
# Records back into bytes and times


# Binary, invalid UTF-8, a multi-byte character across the --max-line cut, CRLF, a lone CR,
# a long line in pieces, and a last line without a newline.
TRICKY = [
    b"hello\n",
    bytes(range(256)),
    b"\xff\xfe not utf-8 \xc3\n",
    "é€😀".encode() * 30 + b"\r\n",
    b"a\rb\r\n\r\n\n",
    b"x" * 200 + b"\n",
    b"the end without a newline\r",
]


def test_every_byte_comes_back_with_its_times() -> None:
    rec = Recorder(3, max_line=16)
    lines = [rec.open(1.0)]
    for i, data in enumerate(TRICKY):
        lines.append(rec.send(1.5 + i, data))
    lines.append(rec.close(9.0))
    capture = parse(lines)
    (conn,) = capture.connections
    assert b"".join(chunk.data for chunk in conn.chunks) == b"".join(TRICKY)
    assert (conn.label, conn.peer, conn.line, conn.reason) == ("#3", PEER, 1, "closed by client")
    assert conn.closed_by_client
    # The capture starts at its first record: the open at 1.0 s.
    assert (conn.start, conn.end, capture.duration) == (0.0, 8.0, 8.0)
    # A chunk per time stamp, at that time: each send's completed lines (the last line's
    # bytes come with the close, when the server printed them).
    offsets = [chunk.offset for chunk in conn.chunks]
    assert offsets == sorted(set(offsets))
    assert offsets[0] == 0.5
    assert offsets[-1] == 8.0
    # The last line came out in --max-line pieces as it arrived; its rest came with the close.
    assert conn.chunks[-1].data == b"a newline\r"
    assert conn.size == capture.size == len(b"".join(TRICKY))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=80), max_size=8),
    st.integers(min_value=4, max_value=40),
)
def test_any_bytes_in_any_pieces_come_back_exactly(chunks: list[bytes], max_line: int) -> None:
    rec = Recorder(1, max_line=max_line)
    lines = [rec.open(0.0)]
    lines += [rec.send(0.001 * (i + 1), data) for i, data in enumerate(chunks)]
    lines.append(rec.close(1.0))
    assert sent_by(parse(lines)) == [b"".join(chunks)]


def test_concurrent_connections_are_told_apart_and_ordered_by_start() -> None:
    a, b, c = Recorder(1), Recorder(2), Recorder(1, worker=2)
    lines = [
        a.open(0.0),
        b.open(0.2),
        c.open(0.1),
        a.send(0.3, b"from a\n"),
        b.send(0.4, b"from b\n"),
        c.send(0.5, b"from worker 2\n"),
        a.send(0.6, b"a again\n"),
        b.close(0.7),
        a.close(0.8, reason="idle for 1 s"),
        c.close(0.9),
    ]
    capture = parse(lines)
    assert [conn.label for conn in capture.connections] == ["#1", "#1 (worker 2)", "#2"]
    assert sent_by(capture) == [b"from a\na again\n", b"from worker 2\n", b"from b\n"]
    first = capture.connections[0]
    assert [(chunk.offset, chunk.data) for chunk in first.chunks] == [
        (0.3, b"from a\n"),
        (0.6, b"a again\n"),
    ]
    # The server ended it: a replay hangs up then instead of half-closing.
    assert first.reason == "idle for 1 s"
    assert not first.closed_by_client
    assert [conn.start for conn in capture.connections] == [0.0, 0.1, 0.2]


def test_a_restarted_server_appending_to_the_file_reuses_numbers() -> None:
    first, second = Recorder(1), Recorder(1)
    lines = [
        first.open(0.0),
        first.send(0.1, b"before\n"),
        first.close(0.2),
        second.open(5.0),
        second.send(5.1, b"after\n"),
        second.close(5.2),
    ]
    capture = parse(lines)
    assert sent_by(capture) == [b"before\n", b"after\n"]
    assert [conn.start for conn in capture.connections] == [0.0, 5.0]


def test_records_of_one_time_stamp_are_one_chunk() -> None:
    rec = Recorder(1)
    lines = [rec.open(0.0), rec.send(0.5, b"one\ntwo\r\nthree\n"), rec.close(0.6)]
    assert len(lines[1].splitlines()) == 3  # three records...
    (conn,) = parse(lines).connections
    assert [(c.offset, c.data) for c in conn.chunks] == [(0.5, b"one\ntwo\r\nthree\n")]  # one send


def test_a_partial_capture_is_replayed_as_far_as_it_goes() -> None:
    # No open for #1 (the capture was filtered or started late), no close for #2 (cut short
    # at a line boundary): #1 starts at its first record, #2 lasts to the capture's end.
    lines = [
        record("data", 0.1, conn=1, data="late", eol="\n"),
        record("open", 0.2, conn=2),
        record("data", 0.3, conn=2, data="cut", eol=""),
        record("close", 0.4, conn=1, bytes=5, reason="closed by client"),
        record("data", 1.0, conn=3, data="", eol="\n"),
    ]
    capture = parse(lines)
    one, two, three = capture.connections
    assert (one.start, one.end, one.reason) == (0.0, 0.3, "closed by client")
    assert (two.start, two.end, two.reason) == (0.1, 0.9, None)
    assert (three.start, three.end, three.label) == (0.9, 0.9, "#3")
    assert two.closed_by_client  # still open when the capture ended: the replay half-closes
    assert sent_by(capture) == [b"late\n", b"cut", b"\n"]
    assert capture.duration == 0.9


def test_time_never_goes_back_within_a_connection() -> None:
    # The wall clock stepped back during the capture: records stay in file order, each at
    # the time of the one before it at the earliest.  The capture starts at its earliest time.
    lines = [
        record("open", 1.0),
        record("data", 2.0, data="a", eol="\n"),
        record("data", 1.5, data="b", eol="\n"),
        record("close", 0.5, bytes=4),
    ]
    (conn,) = parse(lines).connections
    assert conn.start == 0.5
    assert [(c.offset, c.data) for c in conn.chunks] == [(1.5, b"a\nb\n")]  # b joins a
    assert conn.end == 1.5


def test_unknown_fields_are_ignored_and_z_times_read() -> None:
    line = json.dumps(
        {
            "time": "2026-12-02T02:00:00Z",
            "event": "data",
            "conn": 1,
            "data": "x",
            "eol": "",
            "future": [1, 2],
        }
    )
    capture = parse([record("open", conn=2), line.encode() + b"\n", b"\n"])  # blank: nothing
    assert [conn.peer for conn in capture.connections] == [PEER, "unknown"]  # file order
    assert sent_by(capture) == [b"", b"x"]


# --------------------------------------------------------------------------------------------
# Bad captures: one line, FILE:LINE: why


GOOD = record("open", 0.0)

BAD = {
    "stderr mixed in": (
        [GOOD, b"02:15:28.523 INFO open #1 127.0.0.1:52826\n"],
        "cap.jsonl:2: not JSON",
    ),
    "truncated mid-line": (
        [GOOD, record("data", data="x", eol="\n")[:30]],
        "cap.jsonl:2: the last line has no newline",
    ),
    "valid JSON without its newline": (
        [GOOD, record("close", bytes=0).rstrip(b"\n")],
        "cap.jsonl:2: the last line has no newline",
    ),
    "binary file": ([b"\x00\x01\xff\xfe\n"], "cap.jsonl:1: not UTF-8"),
    "a JSON list": ([b"[1, 2]\n"], "cap.jsonl:1: a JSON list, not a record"),
    "unknown event": (
        [GOOD, record("datagram")],
        "cap.jsonl:2: event 'datagram' cannot be replayed",
    ),
    "no conn": ([b'{"time": "2026-12-02T02:00:00Z", "event": "open"}\n'], "cap.jsonl:1: 'conn'"),
    "bad worker": ([record("open", worker="2")], "cap.jsonl:1: 'worker'"),
    "bad time": (
        [GOOD, record("open", conn=2).replace(b"2026-12-02T", b"yesterday ")],
        "cap.jsonl:2: 'time'",
    ),
    "bad eol": ([record("data", data="x", eol="\r")], "cap.jsonl:1: 'eol'"),
    "no data": ([record("data", eol="\n")], "cap.jsonl:1: a data record needs 'data'"),
    "bad base64": ([record("data", data="?", data_b64="!!", eol="")], "cap.jsonl:1: 'data_b64'"),
    "lone surrogate": ([record("data", data="\ud800", eol="")], "cap.jsonl:1: 'data' holds"),
    "missing records": (
        [GOOD, record("data", data="abc", eol="\n"), record("close", bytes=10)],
        "cap.jsonl:3: connection #1 closed after 10 bytes, but its data records hold 4",
    ),
    "data after close": (
        [GOOD, record("close", bytes=0), record("data", data="x", eol="")],
        "cap.jsonl:3: data record for connection #1 after its close",
    ),
    "a --udp capture": (
        [record("data", conn=1, data="a", eol=""), record("data", conn=2, data="b", eol="")],
        "cap.jsonl: data records only, no open or close: a capture of --udp datagrams",
    ),
    "empty": ([], "cap.jsonl: no records to replay"),
    "only blank lines": ([b"\n", b"  \n"], "cap.jsonl: no records to replay"),
}


@pytest.mark.parametrize(("lines", "expected"), BAD.values(), ids=BAD.keys())
def test_a_bad_capture_is_one_line_naming_file_and_line(lines: list[bytes], expected: str) -> None:
    with pytest.raises(CaptureError) as info:
        parse(lines)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_a_bad_line_anywhere_is_found_before_returning() -> None:
    rec = Recorder(1)
    lines = [rec.open(0.0)] + [rec.send(i / 1000, b"line\n") for i in range(1, 500)]
    lines.append(b"not json\n")
    with pytest.raises(CaptureError, match=r"^cap\.jsonl:501: not JSON"):
        parse(lines)


def test_reading_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "capture.jsonl"
    rec = Recorder(1)
    path.write_bytes(rec.open(0.0) + rec.send(0.1, b"\x00\xff\n") + rec.close(0.2))
    assert sent_by(read_capture(path)) == [b"\x00\xff\n"]
    stdin = io.TextIOWrapper(io.BytesIO(path.read_bytes() + b"{"))
    monkeypatch.setattr("sys.stdin", stdin)
    with pytest.raises(CaptureError, match=r"^<stdin>:4: the last line has no newline"):
        read_capture("-")
    with pytest.raises(CaptureError, match=r"^cannot read .*missing\.jsonl: No such file"):
        read_capture(tmp_path / "missing.jsonl")
    with pytest.raises(CaptureError, match=r"^cannot read .*: Is a directory"):
        read_capture(tmp_path)
