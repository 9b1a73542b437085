"""``python -m trio_echo replay``: the player against Trio servers in this process (real loopback
sockets, real time), and the command line: bad input is one line, exit 2, and nothing is sent.
The record-and-replay test of the issue is tests/test_replay_e2e.py.

Timing is checked loosely and one way only where it could be flaky: a chunk is never sent before
its (scaled) time, because ``trio.sleep_until`` never wakes early; how late it may be depends on
the machine, so the upper bounds are generous.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from conftest import (
    EVENT_TIMEOUT,
    assert_no_traceback,
    run_command,
)

from trio_echo.cli.main import main
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

    listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
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
    assert [n for _, n in a.arrivals] == [4, 12]
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
    assert 0.1 <= seen[0].arrivals[-1][0] - start < 0.1 + LATE
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


def replay_main(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m trio_echo replay ARGS`` in this process (through the real entry point):
    its exit status, stdout and stderr.  Fast, for the many bad-input cases."""
    try:
        status = main(["replay", *args])
    except SystemExit as exc:  # argparse's way out
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_a_bad_flag_is_one_line_and_exit_2(
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(GOOD_CAPTURE)
    port = listener.getsockname()[1]
    to = [] if "--to" in flags or flags == [] else ["--to", f"127.0.0.1:{port}"]
    status, out, err = replay_main(str(capture), *to, *flags, capsys=capsys)
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1, err
    assert err.startswith("trio-echo replay: error: ")
    assert expected in err
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
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    expected: str,
) -> None:
    path = tmp_path / "capture.jsonl"
    if content is not None:
        path.write_bytes(content)
    port = listener.getsockname()[1]
    status, out, err = replay_main(str(path), "--to", f"127.0.0.1:{port}", capsys=capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"trio-echo replay: error: {expected.format(path=path)}")
    assert len(err.splitlines()) == 1, err
    assert_nobody_connected(listener)


def test_bad_input_from_the_command_line_as_typed(tmp_path: Path, listener: socket.socket) -> None:
    # The same, as a user runs it, under -X dev -W error: one line, no traceback, exit 2.
    path = tmp_path / "capture.jsonl"
    path.write_bytes(GOOD_CAPTURE[:-20])
    port = listener.getsockname()[1]
    for args, expected in (
        ([str(path), "--to", f"127.0.0.1:{port}"], f"{path}:2: the last line has no newline"),
        ([str(path), "--to", f"::1:{port}"], "an IPv6 address goes in brackets"),
    ):
        result = run_command([*STRICT_REPLAY, *args])
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert expected in result.stderr
    assert_nobody_connected(listener)


def test_ctrl_c_is_one_line_and_130(tmp_path: Path, listener: socket.socket) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(GOOD_CAPTURE.replace(b"00.100000", b"59.000000"))  # a minute's wait
    port = listener.getsockname()[1]
    command = [*STRICT_REPLAY, str(capture), "--to", f"127.0.0.1:{port}"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        listener.settimeout(EVENT_TIMEOUT)
        client, _ = listener.accept()  # it is replaying: connected, waiting to send
        with client:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=EVENT_TIMEOUT)
    assert proc.returncode == 130
    assert stderr == "trio-echo replay: error: interrupted\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = replay_main("--help", capsys=capsys)
    assert status == 0
    assert "--to HOST:PORT" in out
    assert "--speed X" in out


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


def test_ctrl_c_among_many_connecting_leaks_nothing(
    tmp_path: Path, listener: socket.socket
) -> None:
    """Ctrl-C while hundreds of connections are at every stage of connecting and waiting: each
    closes its socket (under ``-W error`` a leaked one would be a ResourceWarning on stderr)."""
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(
        b"".join(
            GOOD_CAPTURE.replace(b'"conn": 1', b'"conn": %d' % conn).replace(
                b"00.100000", b"59.000000"
            )
            for conn in range(1, 301)
        )
    )
    port = listener.getsockname()[1]
    command = [*STRICT_REPLAY, str(capture), "--to", f"127.0.0.1:{port}", "--speed", "1"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        listener.settimeout(EVENT_TIMEOUT)
        client, _ = listener.accept()  # the first is connected; the rest are on their way
        with client:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=EVENT_TIMEOUT)
    assert proc.returncode == 130
    assert stderr == "trio-echo replay: error: interrupted\n"
