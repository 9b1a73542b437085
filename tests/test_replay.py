"""``python -m trio_echo replay``: the player against in-process Trio servers, the command line's
bad input, and the issue's end-to-end test: record a session with one trio_echo, replay it into a
second one, and find the same bytes per connection.

Timing is checked loosely and one way only where it could be flaky: a chunk is never sent before
its (scaled) time, because ``trio.sleep_until`` never wakes early; how late it may be depends on
the machine, so the upper bounds are generous.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio
from conftest import (
    EVENT_TIMEOUT,
    SERVER_COMMAND,
    ServerProcess,
    _PipeReader,
    assert_no_traceback,
    run_command,
)

from trio_echo.replay import play
from trio_echo.replay.capture import Capture, CapturedConnection, Chunk
from trio_echo.replay.play import ConnectionResult, ReplayResult, Target, replay

PEER = "127.0.0.1:1"

# How late a chunk may reach the server after its time: loose, for a loaded CI machine.
LATE = 0.25


def connection(
    label: str,
    start: float,
    chunks: Sequence[tuple[float, bytes]],
    end: float,
    reason: str | None = "closed by client",
) -> CapturedConnection:
    return CapturedConnection(
        label, PEER, start, end, tuple(Chunk(at, data) for at, data in chunks), reason, 1
    )


def capture_of(*connections: CapturedConnection) -> Capture:
    ends = [conn.end for conn in connections]
    return Capture("test", connections, max(ends))


# --------------------------------------------------------------------------------------------
# The player, against Trio servers in this process


@attrs.define
class Seen:
    """What a test server saw of one connection, in trio.current_time()."""

    opened: float
    data: bytearray = attrs.field(factory=bytearray)
    arrivals: list[tuple[float, int]] = attrs.field(factory=list)  # (time, total so far)
    closed: float | None = None


Handler = Callable[[trio.SocketStream, Seen], Awaitable[None]]


async def printer(stream: trio.SocketStream, seen: Seen) -> None:
    """A print server: reads to EOF, then closes."""
    while data := await stream.receive_some(65536):
        seen.data += data
        seen.arrivals.append((trio.current_time(), len(seen.data)))


async def echoer(stream: trio.SocketStream, seen: Seen) -> None:
    while data := await stream.receive_some(65536):
        seen.data += data
        await stream.send_all(data)


def closer_after(size: int) -> Handler:
    """A server that hangs up once it has ``size`` bytes (a --max-bytes of another kind)."""

    async def handler(stream: trio.SocketStream, seen: Seen) -> None:
        while len(seen.data) < size and (data := await stream.receive_some(size)):
            seen.data += data

    return handler


async def holder(stream: trio.SocketStream, seen: Seen) -> None:
    """Reads to EOF, then keeps its side open until the client closes (or the test ends)."""
    await printer(stream, seen)
    await trio.sleep_forever()


async def serving(nursery: trio.Nursery, handler: Handler) -> tuple[Target, list[Seen]]:
    """A server on a free loopback port; what it saw, connection by connection."""
    seen: list[Seen] = []

    async def serve_one(stream: trio.SocketStream) -> None:
        record = Seen(trio.current_time())
        seen.append(record)
        try:
            await handler(stream, record)
        finally:
            record.closed = trio.current_time()

    listeners = await nursery.start(trio.serve_tcp, serve_one, 0, "127.0.0.1")
    return Target("127.0.0.1", listeners[0].socket.getsockname()[1]), seen


async def play_it(capture: Capture, target: Target, speed: float = 1.0) -> ReplayResult:
    reported: list[ConnectionResult] = []
    with trio.fail_after(EVENT_TIMEOUT):
        result = await replay(capture, target, speed, reported.append)
    assert sorted(reported, key=id) == sorted(result.results, key=id)
    return result


async def test_each_connection_sends_its_bytes_at_their_times_overlapping(
    nursery: trio.Nursery,
) -> None:
    target, seen = await serving(nursery, printer)
    first = connection("#1", 0.0, [(0.0, b"one\n"), (0.15, b"\x00\xff two\r\n")], 0.2)
    second = connection("#2", 0.05, [(0.1, b"three")], 0.1)
    start = trio.current_time()
    result = await play_it(capture_of(first, second), target)
    assert not result.failed
    assert (result.sent, result.received) == (first.size + second.size, 0)
    a, b = sorted(seen, key=lambda s: s.opened)
    assert (bytes(a.data), bytes(b.data)) == (b"one\n\x00\xff two\r\n", b"three")
    # On time, never early: each open and chunk at start + its offset, or a little later.
    assert 0 <= a.opened - start < LATE
    assert 0.05 <= b.opened - start < 0.05 + LATE
    assert [n for _, n in a.arrivals] == [4, 13]
    assert 0.15 <= a.arrivals[1][0] - start < 0.15 + LATE
    assert 0.1 <= b.arrivals[0][0] - start < 0.1 + LATE
    # They overlapped as captured: #2 came and went while #1 was open.
    assert a.closed is not None
    assert b.closed is not None
    assert a.opened < b.opened < b.closed < a.closed
    assert 0.2 <= a.closed - start < 0.2 + LATE


async def test_speed_scales_every_wait_and_inf_removes_them(nursery: trio.Nursery) -> None:
    target, seen = await serving(nursery, printer)
    slow = connection("#1", 0.0, [(0.0, b"a\n"), (1.0, b"b\n")], 1.0)
    start = trio.current_time()
    await play_it(capture_of(slow), target, speed=10)
    assert 0.1 <= trio.current_time() - start < 0.1 + LATE
    assert 0.1 <= seen[0].arrivals[-1][0] - seen[0].arrivals[0][0] < 0.1 + LATE
    start = trio.current_time()
    result = await play_it(capture_of(slow), target, speed=float("inf"))
    assert trio.current_time() - start < LATE
    assert bytes(seen[1].data) == b"a\nb\n"
    assert not result.failed


async def test_an_echo_is_read_and_counted_not_left_to_clog_the_connection(
    nursery: trio.Nursery,
) -> None:
    target, seen = await serving(nursery, echoer)
    big = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffers hold
    result = await play_it(capture_of(connection("#1", 0, [(0, big)], 0)), target)
    assert not result.failed
    assert (result.sent, result.received, len(seen[0].data)) == (len(big), len(big), len(big))


async def test_a_server_closing_early_fails_that_connection_only(nursery: trio.Nursery) -> None:
    target, _ = await serving(nursery, closer_after(5))
    cut = connection("#1", 0, [(0, b"12345"), (0.05, b"6789\n"), (60, b"never sent")], 61)
    whole = connection("#2", 0, [(0.02, b"1234")], 0.1)
    start = trio.current_time()
    result = await play_it(capture_of(cut, whole), target)
    assert trio.current_time() - start < LATE  # #1 was stopped at once, not at 60 s
    errors = {r.connection.label: r.error for r in result.results}
    assert errors["#2"] is None
    assert errors["#1"] is not None
    assert errors["#1"].startswith("the server ")
    assert result.failed[0].sent < cut.size


async def test_a_refused_connection_is_one_error(nursery: trio.Nursery) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nobody listens there
    result = await play_it(
        capture_of(connection("#1", 0, [(0, b"x")], 0)), Target("127.0.0.1", port)
    )
    (failed,) = result.failed
    assert failed.error == f"cannot connect to 127.0.0.1:{port}: Connection refused"


async def test_a_server_that_keeps_half_open_connections_is_left_after_close_wait(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(play, "CLOSE_WAIT", 0.05)
    target, seen = await serving(nursery, holder)
    result = await play_it(capture_of(connection("#1", 0, [(0, b"x\n")], 0)), target)
    assert not result.failed
    assert bytes(seen[0].data) == b"x\n"


async def test_a_connection_the_server_had_ended_is_hung_up_on_time(nursery: trio.Nursery) -> None:
    # The captured server ended it (an idle timeout): no EOF and no waiting, a hang-up at 0.1 s.
    target, seen = await serving(nursery, holder)
    start = trio.current_time()
    idle = connection("#1", 0, [(0, b"x\n")], 0.1, reason="idle for 0.1 s")
    result = await play_it(capture_of(idle), target)
    assert not result.failed
    assert 0.1 <= trio.current_time() - start < 0.1 + LATE
    assert bytes(seen[0].data) == b"x\n"


# --------------------------------------------------------------------------------------------
# The command line: bad input is one line, exit 2, and nothing sent


REPLAY = (*SERVER_COMMAND, "replay")
STRICT_REPLAY = (sys.executable, "-X", "dev", "-W", "error", "-m", "trio_echo", "replay")

GOOD_CAPTURE = (
    b'{"time": "2026-12-02T02:00:00.000000+00:00", "event": "open", "conn": 1, "peer": "a"}\n'
    b'{"time": "2026-12-02T02:00:00.100000+00:00", "event": "data", "conn": 1, "peer": "a", '
    b'"data": "hi", "eol": "\\n"}\n'
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that accepts nothing: whoever connects waits in its backlog."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.setblocking(False)
        yield sock


def assert_nobody_connected(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


BAD_FLAGS = {
    "no --to": ([], "the following arguments are required: --to"),
    "no port": (["--to", "127.0.0.1"], "expected HOST:PORT"),
    "no host": (["--to", ":9000"], "expected HOST:PORT"),
    "port 0": (["--to", "127.0.0.1:0"], "the port must be 1-65535"),
    "port too big": (["--to", "127.0.0.1:65536"], "the port must be 1-65535"),
    "port by name": (["--to", "127.0.0.1:http"], "expected a port number after ':'"),
    "IPv6 without brackets": (["--to", "::1:9000"], "an IPv6 address goes in brackets"),
    "not IPv6 in brackets": (["--to", "[localhost]:9000"], "is not an IPv6 address"),
    "speed 0": (["--speed", "0"], "must be greater than 0"),
    "negative speed": (["--speed", "-2"], "must be greater than 0"),
    "speed nan": (["--speed", "nan"], "must be greater than 0"),
    "speed word": (["--speed", "fast"], "expected a positive number (or inf)"),
}


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_a_bad_flag_is_one_line_and_exit_2(
    tmp_path: Path, listener: socket.socket, flags: list[str], expected: str
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(GOOD_CAPTURE)
    port = listener.getsockname()[1]
    to = [] if "--to" in flags or flags == [] else ["--to", f"127.0.0.1:{port}"]
    result = run_command([*REPLAY, str(capture), *to, *flags])
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("trio-echo replay: error: ")
    assert expected in result.stderr
    assert_nobody_connected(listener)


BAD_FILES = {
    "missing": (None, "cannot read {path}: No such file or directory"),
    "truncated": (GOOD_CAPTURE[:-20], "{path}:2: the last line has no newline"),
    "bad last line": (GOOD_CAPTURE + b"{\n", "{path}:3: not JSON"),
    "a log, not jsonl": (b"02:15:28.523 INFO open #1 127.0.0.1:52826\n", "{path}:1: not JSON"),
    "empty": (b"", "{path}: no records to replay"),
}


@pytest.mark.parametrize(("content", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_capture_is_refused_before_anything_is_sent(
    tmp_path: Path, listener: socket.socket, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "capture.jsonl"
    if content is not None:
        path.write_bytes(content)
    port = listener.getsockname()[1]
    result = run_command([*STRICT_REPLAY, str(path), "--to", f"127.0.0.1:{port}"])
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"trio-echo replay: error: {expected.format(path=path)}\n"
    assert_nobody_connected(listener)


def test_help() -> None:
    result = run_command([*REPLAY, "--help"])
    assert result.returncode == 0
    assert "--to HOST:PORT" in result.stdout
    assert "--speed X" in result.stdout


def test_a_refused_target_is_a_line_per_connection_and_exit_1(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(GOOD_CAPTURE + GOOD_CAPTURE.replace(b'"conn": 1', b'"conn": 2'))
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = run_command([*STRICT_REPLAY, str(capture), "--to", f"127.0.0.1:{port}"])
    assert result.returncode == 1, result.stderr
    assert_no_traceback(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    for conn, line in zip((1, 2), sorted(lines[:2]), strict=True):
        assert line == (
            f"trio-echo replay: connection #{conn} from a (capture line {2 * conn - 1}): "
            f"cannot connect to 127.0.0.1:{port}: Connection refused"
        )
    assert lines[2].startswith("trio-echo replay: replayed 0 of 2 connections")
    assert lines[2].endswith("; 2 failed")


# --------------------------------------------------------------------------------------------
# End to end: record a session with one trio_echo, replay it into another


class RecordingServer(ServerProcess):
    """``python -m trio_echo --format jsonl --port 0 ARGS > FILE``, as a user records a capture:
    stdout is the file itself (stderr is read by a thread, as for every test server)."""

    def __init__(self, args: Sequence[str], capture: Path) -> None:
        with capture.open("wb") as out:
            self.proc = subprocess.Popen(
                [*SERVER_COMMAND, "--format", "jsonl", "--port", "0", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
            )
        assert self.proc.stderr is not None
        self._stderr = _PipeReader(self.proc.stderr, "server stderr")
        self._stdout = None
        self.port = 0
        self.addresses = []
        self.capture = capture

    def wait_closed(self, count: int) -> None:
        """Wait until ``count`` connections in all have been logged as closed."""
        self._stderr.wait_for(lambda data: data.count(b" INFO close #") >= count, EVENT_TIMEOUT)

    def finish(self) -> list[dict[str, object]]:
        """Stop it gracefully (SIGTERM, exit 0); its capture's records."""
        assert self.stop() == 0, self.stderr
        assert_no_traceback(self.all_stderr())
        return [json.loads(line) for line in self.capture.read_bytes().splitlines()]


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Callable[..., RecordingServer]]:
    with contextlib.ExitStack() as cleanup:

        def start(name: str, *args: str) -> RecordingServer:
            server = RecordingServer(args, tmp_path / name)
            cleanup.callback(server.close)
            server.wait_listening()
            return server

        yield start


def bytes_per_connection(records: list[dict[str, object]]) -> dict[int, bytes]:
    """Each connection's bytes, read from the records independently of the code under test."""
    sent: dict[int, bytes] = {}
    for record in records:
        conn = record["conn"]
        assert isinstance(conn, int)
        sent.setdefault(conn, b"")
        if record["event"] == "data":
            exact = record.get("data_b64")
            data = (
                base64.b64decode(exact) if isinstance(exact, str) else str(record["data"]).encode()
            )
            sent[conn] += data + str(record["eol"]).encode()
        elif record["event"] == "close":
            assert record["bytes"] == len(sent[conn])  # every byte has its record
    return sent


def replay_cli(capture: Path, to: str, *flags: str) -> list[str]:
    """Run the replay (under -X dev -W error); its stderr lines, once it succeeded."""
    result = run_command([*STRICT_REPLAY, str(capture), "--to", to, *flags])
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


# What four concurrent clients send: binary and invalid UTF-8, lines longer than --max-line
# (64) with multi-byte characters across the cuts, CRLF, lone CRs, a last line without a
# newline, and a client that sends nothing at all.
SESSION = {
    "binary": [b"hello\n", b"bin:" + bytes(range(256)), b"\n\xff\xfe\xc3(\r\n", b"no newline"],
    "long": [b"L" * 100, "é€😀".encode() * 20 + b"\r", b"\n", b"x" * 300 + b"\n", b"\xf0\x9f"],
    "chatty": [
        f"line {i} ".encode() + b"." * (i % 7) + (b"\n" if i % 3 else b"") for i in range(60)
    ],
    "silent": [],
}


def test_a_recorded_session_replays_into_a_second_server_byte_for_byte(
    recording: Callable[..., RecordingServer], tmp_path: Path
) -> None:
    first = recording("first.jsonl", "--max-line", "64")
    with contextlib.ExitStack() as closing:
        clients = {}
        for i, name in enumerate(SESSION):
            host = "::1" if i % 2 else "127.0.0.1"
            clients[name] = closing.enter_context(
                socket.create_connection((host, first.port), EVENT_TIMEOUT)
            )
        # Interleaved, a piece of each client in turn, as concurrent clients send.
        for turn in range(max(len(pieces) for pieces in SESSION.values())):
            for name, pieces in SESSION.items():
                if turn < len(pieces):
                    clients[name].sendall(pieces[turn])
    first.wait_closed(len(SESSION))
    recorded = bytes_per_connection(first.finish())
    expected = sorted(b"".join(pieces) for pieces in SESSION.values())
    assert sorted(recorded.values()) == expected

    second = recording("second.jsonl")  # default --max-line: other pieces, the same bytes
    lines = replay_cli(first.capture, f"127.0.0.1:{second.port}", "--speed", "10")
    total = sum(map(len, expected))
    assert lines == [lines[0]]
    assert lines[0].startswith(
        f"trio-echo replay: replayed 4 connections to 127.0.0.1:{second.port}: "
        f"{total} of {total} bytes sent, 0 received, in "
    )
    second.wait_closed(len(SESSION))
    assert sorted(bytes_per_connection(second.finish()).values()) == expected


def timed_capture(path: Path, events: Sequence[tuple[float, int, str, str | None]]) -> None:
    """A capture file: (seconds, conn, event, data) records from a fixed moment."""
    with path.open("w") as out:
        for at, conn, event, data in events:
            record: dict[str, object] = {
                "time": f"2026-12-02T02:00:{at:09.6f}+00:00",
                "event": event,
                "conn": conn,
                "peer": "127.0.0.1:1",
            }
            if data is not None:
                record.update(data=data, eol="\n")
            out.write(json.dumps(record) + "\n")


def replayed_times(records: list[dict[str, object]]) -> dict[tuple[object, ...], float]:
    """(conn, event, data) -> seconds after the first record, in a replayed capture."""
    from datetime import datetime

    times = {
        (r["conn"], r["event"], r.get("data")): datetime.fromisoformat(str(r["time"])).timestamp()
        for r in records
    }
    start = min(times.values())
    return {key: at - start for key, at in times.items()}


def test_speed_scales_the_captured_times_end_to_end(
    recording: Callable[..., RecordingServer], tmp_path: Path
) -> None:
    # Two overlapping connections over 1 s at --speed 10 (about 0.1 s), and over 0.4 s at
    # --speed 1, each played to the same server; its own capture shows when things arrived.
    fast, slow = tmp_path / "fast.jsonl", tmp_path / "slow.jsonl"
    timed_capture(
        fast,
        [
            (0, 1, "open", None),
            (0, 1, "data", "f1"),
            (0.5, 2, "open", None),
            (0.6, 2, "data", "f2"),
            (0.7, 2, "close", None),
            (1.0, 1, "data", "f3"),
            (1.0, 1, "close", None),
        ],
    )
    timed_capture(
        slow,
        [
            (0, 1, "open", None),
            (0, 1, "data", "s1"),
            (0.1, 2, "open", None),
            (0.2, 2, "data", "s2"),
            (0.3, 2, "close", None),
            (0.4, 1, "data", "s3"),
            (0.4, 1, "close", None),
        ],
    )
    second = recording("second.jsonl")
    replay_cli(fast, f"[::1]:{second.port}", "--speed", "10")
    second.wait_closed(2)
    replay_cli(slow, f"127.0.0.1:{second.port}")
    records = second.finish()
    fast_times = replayed_times([r for r in records if r["conn"] in (1, 2)])
    expected = {(2, "open", None): 0.05, (2, "data", "f2"): 0.06, (1, "close", None): 0.1}
    for key, at in expected.items():
        assert at - 0.01 <= fast_times[key] < at + LATE, key
    slow_times = replayed_times([r for r in records if r["conn"] in (3, 4)])
    expected = {(4, "open", None): 0.1, (4, "data", "s2"): 0.2, (3, "data", "s3"): 0.4}
    for key, at in expected.items():
        assert at - 0.01 <= slow_times[key] < at + LATE, key
