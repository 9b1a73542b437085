"""The issue's end-to-end test of ``python -m trio_echo replay``: record a session with one
trio_echo (``--format jsonl > FILE``), replay the file into a second one, and find the same bytes
per connection; and ``--speed``, measured in the second server's own capture.

Timing bounds are one-sided where it matters: nothing arrives before its scaled time; how late
it may be is generous, for a loaded machine.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from conftest import (
    EVENT_TIMEOUT,
    SERVER_COMMAND,
    ServerProcess,
    _PipeReader,
    assert_no_traceback,
    run_command,
)

STRICT_REPLAY = (sys.executable, "-X", "dev", "-W", "error", "-m", "trio_echo", "replay")

# How late something may reach the server after its time: loose, for a loaded CI machine.
LATE = 0.25


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
