"""End-to-end tests: ``python -m trio_echo`` as a real subprocess, real loopback sockets.

What only a real process can show: the command line and its exit statuses, the stderr lines,
signals and the grace period, a closed stdout, a port already in use, memory under
backpressure, thousands of file descriptors.  The helpers live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
from conftest import (
    EVENT_TIMEOUT,
    SERVER_COMMAND,
    STARTUP_TIMEOUT,
    peer_name,
    recv_eof,
    recv_exactly,
    run_cli,
)

from trio_echo.cli import raise_fd_limit

MiB = 1024 * 1024

FAMILIES = (socket.AF_INET, socket.AF_INET6)


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def assert_refused(port: int, family: socket.AddressFamily, timeout: float = 1.0) -> None:
    """Connecting to ``port`` is refused, at the latest ``timeout`` seconds from now.

    The poll only covers the instant between the server logging that it stopped accepting and
    its listeners actually being closed: a connection that slips in then is reset by the
    kernel when the listener closes (callers check that the server never served it).
    """
    deadline = time.monotonic() + timeout
    address = ("127.0.0.1" if family == socket.AF_INET else "::1", port)
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except ConnectionRefusedError:
                return
            except ConnectionResetError:
                pass  # the listener closed during the handshake: try again
        assert time.monotonic() < deadline, f"{address} still accepts connections"


def read_line(fd: int, timeout: float = EVENT_TIMEOUT) -> bytes:
    """Read ``fd`` (a pipe) until it has given at least one whole line; return what was read."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no line on the pipe within {timeout} s, got {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"EOF before a whole line, got {data!r}"
        data += chunk
    return data


# ---- 1. text output --------------------------------------------------------------------------


def test_text_output_names_each_client_and_escapes_control_characters(start_server, connect):
    server = start_server()
    v4 = connect(server.port, socket.AF_INET)
    v6 = connect(server.port, socket.AF_INET6)
    p4, p6 = peer_name(v4), peer_name(v6)
    assert p6.startswith("[::1]:")

    v4.sendall(b"hello from v4\n")
    v6.sendall(b"hello from v6\r\nsecond ")
    v6.sendall(b"line\n")
    # Clear the screen, set the window title, ring the bell, colour: all must come out inert.
    v4.sendall(b"\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m\n")
    expected = [
        f"[{p4}] hello from v4",
        f"[{p6}] hello from v6",
        f"[{p6}] second line",
        f"[{p4}] \\x1b[2J\\x1b]0;pwned\\a\\x1b[31mred\\x1b[0m",
    ]
    server.wait_stdout(lambda out: all(line.encode() + b"\n" in out for line in expected))
    v4.close()
    v6.close()
    assert server.stop() == 0

    out = server.all_stdout()
    assert b"\x1b" not in out
    assert b"\x07" not in out
    lines = out.decode().splitlines()
    assert sorted(lines) == sorted(expected)
    # Each client's lines in the order it sent them.
    assert [line for line in lines if line.startswith(f"[{p4}]")] == [expected[0], expected[3]]
    assert [line for line in lines if line.startswith(f"[{p6}]")] == expected[1:3]
    assert_no_traceback(server.all_stderr())


def test_misbehaving_clients_never_disturb_a_good_one(start_server, connect):
    server = start_server("--echo")
    good = connect(server.port)
    good_peer = peer_name(good)
    sent = []

    def good_round_trip(i: int) -> None:
        line = f"good line {i}\n".encode()
        good.sendall(line)
        assert recv_exactly(good, len(line)) == line
        sent.append(line)

    good_round_trip(0)

    # A client that resets mid-line (SO_LINGER 0 turns close() into an RST).
    resetter = connect(server.port)
    resetter.sendall(b"half a li")
    recv_exactly(resetter, 9)
    resetter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetter.close()
    server.wait_stderr(r"connection lost \(connection reset by peer\)")
    good_round_trip(1)

    # A client that half-closes: it still gets its echo, then EOF.
    half = connect(server.port, socket.AF_INET6)
    half.sendall(b"then I stop sending\n")
    half.shutdown(socket.SHUT_WR)
    assert recv_eof(half) == b"then I stop sending\n"
    good_round_trip(2)

    # A client that sends 1 MiB of garbage: every byte value, no newline for long stretches.
    garbage = connect(server.port)
    junk = random.Random(7).randbytes(1 << 20)
    pump = threading.Thread(target=garbage.sendall, args=(junk,))
    pump.start()
    assert len(recv_exactly(garbage, len(junk), timeout=30)) == len(junk)
    pump.join()
    garbage.close()
    good_round_trip(3)

    good.close()
    assert server.stop() == 0
    out = server.all_stdout()
    assert b"\x1b" not in out
    assert b"\x00" not in out
    good_lines = [line for line in out.decode().splitlines() if line.startswith(f"[{good_peer}] ")]
    assert good_lines == [f"[{good_peer}] " + line.decode().rstrip("\n") for line in sent]
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert "served 4 connections" in stderr


# ---- 2. output modes -------------------------------------------------------------------------


def test_echo_sends_every_byte_back_and_still_prints(start_server, connect):
    server = start_server("--echo")
    assert "(echo and print, text)" in server.stderr
    client = connect(server.port)
    # Several MiB, more than the socket buffers hold: a client that only sent would deadlock
    # with the server blocked echoing to it, so send from a thread while this one receives.
    payload = bytes(range(256)) * (16 * 1024) + b"\nlast line\n"
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    try:
        assert recv_exactly(client, len(payload)) == payload
    finally:
        sender.join(EVENT_TIMEOUT)
    server.wait_stdout(f"[{peer_name(client)}] last line\n".encode())


def test_quiet_prints_nothing_but_logs_connections(start_server, connect):
    server = start_server("--quiet")
    assert "(print, quiet)" in server.stderr
    client = connect(server.port)
    peer = peer_name(client)
    client.sendall(b"secret\nmore secret\n")
    client.close()
    server.wait_stderr(rf"close #1 {re.escape(peer)}: 19 bytes in .* \(closed by client\)")
    assert server.stop() == 0
    assert server.all_stdout() == b""
    stderr = server.all_stderr()
    assert f"open #1 {peer}" in stderr
    assert "secret" not in stderr


def test_raw_writes_the_bytes_exactly(start_server, connect):
    server = start_server("--raw")
    client = connect(server.port)
    # Every byte value, CRLF, invalid UTF-8, an escape sequence, and no final newline.
    payload = b"line one\r\n" + bytes(range(256)) + b"\xff\xfe\x1b[31m\n" + b"no newline at the end"
    client.sendall(payload)
    client.close()
    server.wait_stderr(r"close #1 .*\(closed by client\)")
    assert server.stop() == 0
    assert server.all_stdout() == payload


def test_jsonl_gives_open_data_and_close_events(start_server, connect):
    server = start_server("--format", "jsonl")
    client = connect(server.port, socket.AF_INET6)
    peer = peer_name(client)
    payload = b"one\ntwo\r\n\xffbad\ntail"
    client.sendall(payload)
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0

    events = [json.loads(line) for line in server.all_stdout().splitlines()]
    assert [e["event"] for e in events] == ["open", "data", "data", "data", "data", "close"]
    assert all(e["conn"] == 1 and e["peer"] == peer and e["time"] for e in events)
    assert [(e["data"], e["eol"]) for e in events[1:5]] == [
        ("one", "\n"),
        ("two", "\r\n"),
        ("\ufffdbad", "\n"),
        ("tail", ""),
    ]
    assert events[3]["data_b64"] == "/2JhZA=="  # b"\xffbad", exactly
    assert events[-1]["bytes"] == len(payload)
    assert events[-1]["reason"] == "closed by client"


# ---- 3. graceful shutdown --------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_an_idle_server_at_once(start_server, connect, signum):
    server = start_server()
    client = connect(server.port)
    client.sendall(b"hello\n")
    client.close()
    server.wait_stderr(r"close #1 ")

    sent = server.send_signal(signum)
    assert server.wait() == 0
    assert time.monotonic() - sent < 1.0
    stderr = server.all_stderr()
    assert f"{signal.Signals(signum).name}: stopped accepting" in stderr
    assert re.search(r"NOTICE stopped: served 1 connection, 6 bytes received", stderr), stderr
    assert_no_traceback(stderr)


def test_grace_period_refuses_new_clients_and_serves_connected_ones(start_server, connect):
    server = start_server("--grace", "5")
    client = connect(server.port)
    peer = peer_name(client)
    client.sendall(b"before the signal\n")
    server.wait_stdout(f"[{peer}] before the signal\n".encode())

    sent = server.send_signal(signal.SIGTERM)
    server.wait_stderr(r"SIGTERM: stopped accepting; waiting up to 5 s for 1 client \(")
    for family in FAMILIES:
        assert_refused(server.port, family)

    client.sendall(b"during the grace period\n")
    server.wait_stdout(f"[{peer}] during the grace period\n".encode())
    assert server.proc.poll() is None, "the server left before its client did"
    assert "open #2" not in server.stderr, "a connection was accepted after the signal"

    client.close()
    assert server.wait() == 0
    assert time.monotonic() - sent < 4.0, "the server waited for the grace period to end"
    stderr = server.all_stderr()
    assert re.search(rf"close #1 {re.escape(peer)}: .*\(closed by client\)", stderr), stderr
    assert "stopped: served 1 connection," in stderr
    assert_no_traceback(stderr)


def test_grace_period_over_closes_remaining_clients(start_server, connect):
    server = start_server("--grace", "0.5")
    client = connect(server.port)
    peer = peer_name(client)
    client.sendall(b"first\n")
    server.wait_stdout(f"[{peer}] first\n".encode())
    client.sendall(b"a partial line")  # no newline yet: must still be printed at the end

    sent = server.send_signal(signal.SIGTERM)
    assert recv_eof(client) == b""
    closed_after = time.monotonic() - sent
    assert 0.4 <= closed_after < 1.5, f"closed {closed_after:.3f} s after the signal"
    assert server.wait() == 0

    assert server.all_stdout().decode().splitlines() == [
        f"[{peer}] first",
        f"[{peer}] a partial line",
    ]
    stderr = server.all_stderr()
    assert re.search(rf"close #1 {re.escape(peer)}: .*\(grace period over\)", stderr), stderr
    assert "stopped: served 1 connection," in stderr
    assert_no_traceback(stderr)


@pytest.mark.parametrize(
    ("signum", "status"),
    [
        pytest.param(signal.SIGINT, 130, id="SIGINT-130"),
        pytest.param(signal.SIGTERM, 143, id="SIGTERM-143"),
    ],
)
def test_second_signal_forces_exit(start_server, connect, signum, status):
    name = signal.Signals(signum).name
    server = start_server("--grace", "5")
    client = connect(server.port)
    client.sendall(b"hello\n")
    server.wait_stdout(b"] hello\n")

    server.send_signal(signum)
    # Trio coalesces a signal that arrives twice before it is handled: wait for the first.
    server.wait_stderr(rf"{name}: stopped accepting")
    sent = server.send_signal(signum)
    assert server.wait() == status
    assert time.monotonic() - sent < 1.0
    assert recv_eof(client) == b""
    stderr = server.all_stderr()
    assert f"{name} again: closing every connection now" in stderr
    assert "forced exit: served 1 connection," in stderr
    assert_no_traceback(stderr)


# ---- 4. restart on the same port -------------------------------------------------------------


def tcp_states(port: int) -> set[str]:
    """The states (hex codes, ``06`` is TIME_WAIT) of the IPv4/IPv6 sockets on local ``port``."""
    states = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    states.add(fields[3])
    return states


TIME_WAIT = "06"


def test_restart_on_the_same_port_right_after_exit(start_server, connect):
    first = start_server("--grace", "0")
    port = first.port
    client = connect(port)
    client.sendall(b"hello\n")
    first.wait_stdout(b"] hello\n")
    # The server closes first (grace 0), so the TIME_WAIT is on its side, on `port`.
    assert first.stop() == 0
    assert recv_eof(client) == b""
    client.close()
    if os.path.exists("/proc/net/tcp"):
        deadline = time.monotonic() + EVENT_TIMEOUT
        while TIME_WAIT not in tcp_states(port):
            assert time.monotonic() < deadline, f"no TIME_WAIT on port {port}"
            time.sleep(0.01)  # the poll interval

    second = start_server(port=port)
    assert second.port == port
    client = connect(port, socket.AF_INET6)
    client.sendall(b"hello again\n")
    second.wait_stdout(f"[{peer_name(client)}] hello again\n".encode())


# ---- 5. start-up errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "args"),
    [
        pytest.param(socket.AF_INET, ["--host", "127.0.0.1"], id="ipv4-only"),
        # The default hosts: 127.0.0.1 binds, then ::1 fails; the error must name ::1.
        pytest.param(socket.AF_INET6, [], id="default-hosts-ipv6-taken"),
    ],
)
def test_port_in_use_is_one_line_and_status_1(family, args):
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(*args, "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    assert lines[0].startswith(f"trio-echo: error: cannot listen on {host} port {port}:")
    assert "address already in use" in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "abc"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--grace", "-1"],
        ["--grace", "nan"],
        ["--idle-timeout", "0"],
        ["--max-connections", "x"],
        ["--max-connections", "0"],
        ["--format", "xml"],
        ["--raw", "--format", "jsonl"],
        ["--log-level", "loud"],
        ["--no-such-flag"],
    ],
    ids=" ".join,
)
def test_bad_flag_is_a_usage_error(args):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-echo: error: ")
    assert args[0] in lines[0]  # names the culprit


def _no_network_prefix() -> list[str]:
    """``unshare --net``: run in an empty network namespace, so that resolving a name fails
    at once without a DNS query leaving this machine (its resolver is not on loopback)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare to isolate the DNS lookup")
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    return [unshare, "--net"]


def test_unknown_host_is_one_line_and_status_1():
    result = subprocess.run(
        [*_no_network_prefix(), *SERVER_COMMAND, "--host", "no.such.host.invalid", "--port", "0"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot resolve host 'no.such.host.invalid'" in lines[0]


def test_invalid_host_name_is_one_line_and_status_1():
    # A label over 63 characters: rejected before any lookup is made.
    result = run_cli("--host", "a" * 70 + ".example", "--port", "0")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-echo: error: invalid host name 'aaaa")


# ---- 6. stdout closed by its reader ----------------------------------------------------------


def test_closed_stdout_stops_the_server_with_one_line(start_server, connect):
    server = start_server(read_stdout=False)
    assert server.proc.stdout is not None
    client = connect(server.port)
    client.sendall(b"first line\n")
    assert read_line(server.proc.stdout.fileno()).startswith(b"[127.0.0.1:")
    server.proc.stdout.close()  # like `| head -1`

    closed = time.monotonic()
    deadline = closed + 3.0
    while server.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the server is going away: that is the point
            client.sendall(b"nobody reads this line\n")
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=0.02)
    assert server.proc.poll() is not None, "the server kept running with nobody reading stdout"
    assert server.proc.returncode == 1
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    mentions = [line for line in stderr.splitlines() if "broken pipe" in line]
    assert mentions == ["trio-echo: error: stdout was closed by its reader (broken pipe)"]
    assert stderr.splitlines()[-1] == mentions[0]


def test_stalled_stdout_does_not_keep_a_stopped_server_alive(start_server, connect):
    # Nobody reads stdout: the client stalls (backpressure), then SIGTERM. The client is closed
    # after the grace period; stdout then gets the grace period (at least 1 s) to take the rest,
    # and the server gives up with one line and status 1 instead of hanging forever.
    server = start_server("--raw", "--grace", "0.5", read_stdout=False)
    client = connect(server.port)
    client.setblocking(False)
    block = b"x" * 65536
    while select.select([], [client], [], 0.5)[1]:  # until the client cannot send any more
        with contextlib.suppress(BlockingIOError):
            client.send(block)
    signalled = server.send_signal(signal.SIGTERM)
    server.wait(timeout=0.5 + 1.0 + EVENT_TIMEOUT)
    elapsed = time.monotonic() - signalled
    assert server.proc.returncode == 1
    assert 1.4 < elapsed < 0.5 + 1.0 + 2.0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert stderr.splitlines()[-1].startswith(
        "trio-echo: error: stdout did not take the last output within 1 s"
    )


# ---- 7. idle timeout -------------------------------------------------------------------------


def test_idle_timeout_closes_silent_clients_only(start_server, connect):
    server = start_server("--idle-timeout", "0.5")
    silent = connect(server.port)
    chatty = connect(server.port, socket.AF_INET6)
    silent_peer, chatty_peer = peer_name(silent), peer_name(chatty)
    started = time.monotonic()

    # The chatty client speaks every 0.2 s for twice the timeout, and keeps its connection;
    # meanwhile the silent one is cut off after about 0.5 s.
    for i in range(6):
        # Pacing, not synchronisation: the client has to stay quiet for a while.
        time.sleep(max(started + 0.2 * i - time.monotonic(), 0))
        chatty.sendall(f"tick {i}\n".encode())
        last_tick = time.monotonic()
        server.wait_stdout(f"[{chatty_peer}] tick {i}\n".encode())
    chatty.settimeout(0.05)
    with pytest.raises(TimeoutError):
        chatty.recv(1)  # still open: no EOF
    assert f"{chatty_peer}: " not in server.stderr

    assert recv_eof(silent) == b""
    server.wait_stderr(
        rf"close #\d+ {re.escape(silent_peer)}: 0 bytes in 0\.[4-9]\d* s \(idle for 0\.5 s\)"
    )

    # Once the chatty client falls silent too, the timer (restarted by every receive) runs out.
    assert recv_eof(chatty) == b""
    silent_for = time.monotonic() - last_tick
    assert 0.4 <= silent_for < 1.5, f"closed {silent_for:.3f} s after its last line"
    server.wait_stderr(rf"close #\d+ {re.escape(chatty_peer)}: 42 bytes .* \(idle for 0\.5 s\)")


# ---- 8. connection limit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "second_family",
    [
        pytest.param(socket.AF_INET, id="same-listener"),
        # The other listener's accept loop may take the client, but must not serve it yet.
        pytest.param(socket.AF_INET6, id="other-listener"),
    ],
)
def test_max_connections_holds_extra_clients_until_a_slot_frees(
    start_server, connect, second_family
):
    server = start_server("--max-connections", "1")
    first = connect(server.port)
    first.sendall(b"first 1\n")
    server.wait_stdout(f"[{peer_name(first)}] first 1\n".encode())

    second = connect(server.port, second_family)  # succeeds: it waits in the listen backlog
    second_peer = peer_name(second)
    second.sendall(b"second 1\n")
    # The first client still gets through; by then the second's line would long be out.
    first.sendall(b"first 2\n")
    server.wait_stdout(f"[{peer_name(first)}] first 2\n".encode())
    # A negative check needs some time: wait 0.3 s for the line that must not come.
    with pytest.raises(AssertionError, match=r"not found before 0\.3 s"):
        server.wait_stdout(b"second 1", timeout=0.3)
    assert "open #2" not in server.stderr

    first.close()
    server.wait_stdout(f"[{second_peer}] second 1\n".encode())
    # stderr is another pipe, read by another thread: wait for it to catch up.
    server.wait_stderr(rf"open #2 {re.escape(second_peer)}$")
    stderr = server.stderr
    assert stderr.index("close #1 ") < stderr.index(f"open #2 {second_peer}")


# ---- 9. backpressure -------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_backpressure_keeps_memory_flat_while_stdout_stalls(start_server, connect):
    total = 512 * MiB
    rss_limit = 150 * 1000 * 1000
    deadline = time.monotonic() + 120
    server = start_server("--raw", "--log-level", "notice", read_stdout=False)
    assert server.proc.stdout is not None
    stdout_fd = server.proc.stdout.fileno()
    client = connect(server.port, timeout=120)

    block = os.urandom(MiB)
    sent = [0]
    sent_crc = [0]
    errors: list[BaseException] = []

    def push() -> None:
        try:
            crc = 0
            for i in range(total // MiB):
                chunk = memoryview(i.to_bytes(8, "big") + block[8:])
                for offset in range(0, MiB, 64 * 1024):
                    client.sendall(chunk[offset : offset + 64 * 1024])
                    sent[0] += 64 * 1024
                crc = zlib.crc32(chunk, crc)
            sent_crc[0] = crc
            client.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    try:
        # Nobody reads stdout: the client must stall, and the server's memory stay flat.
        max_rss = 0
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < 1.0:
            max_rss = max(max_rss, rss_bytes(server.pid))
            if sent[0] != last:
                last, last_change = sent[0], time.monotonic()
            assert pusher.is_alive(), f"the client sent everything unhindered: {errors}"
            assert time.monotonic() < deadline
            time.sleep(0.02)  # the sampling interval of the poll
        assert sent[0] < 64 * MiB, f"{sent[0]} bytes accepted with stdout stalled"
        assert max_rss < rss_limit, f"RSS {max_rss / MiB:.0f} MiB with stdout stalled"

        # Now drain stdout: everything arrives, and memory stays flat while it flows.
        received = 0
        received_crc = 0
        next_sample = 0.0
        while received < total:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {received} of {total} bytes within the deadline"
            ready, _, _ = select.select([stdout_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(stdout_fd, MiB)
            assert chunk, f"EOF after {received} bytes"
            received += len(chunk)
            received_crc = zlib.crc32(chunk, received_crc)
            if time.monotonic() >= next_sample:
                max_rss = max(max_rss, rss_bytes(server.pid))
                next_sample = time.monotonic() + 0.05
        pusher.join(max(deadline - time.monotonic(), 0))
        assert not pusher.is_alive()
        assert not errors, errors
    finally:
        client.close()
        pusher.join(EVENT_TIMEOUT)

    assert max_rss < rss_limit, f"RSS {max_rss / MiB:.0f} MiB while draining"
    assert server.proc.poll() is None
    assert server.stop() == 0
    # Nothing more after the server exits: exactly `total` bytes, and the right ones.
    while extra := os.read(stdout_fd, MiB):
        received += len(extra)
    assert received == total
    assert received_crc == sent_crc[0]
    assert_no_traceback(server.all_stderr())


# ---- 10. thousands of clients ----------------------------------------------------------------


@pytest.fixture
def fd_limit_raised() -> Iterator[int]:
    """This process's soft RLIMIT_NOFILE raised as the server raises its own (to the hard
    limit), for the test; restored after.  Yields the new soft limit."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_fd_limit()
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.mark.slow
def test_2000_simultaneous_clients(start_server, connect, fd_limit_raised):
    clients_wanted = 2000
    if fd_limit_raised != resource.RLIM_INFINITY and fd_limit_raised < clients_wanted + 100:
        pytest.skip(f"the file descriptor limit ({fd_limit_raised}) is too low")
    # --log-level notice: no line per connection.  stderr is still read by the helper's thread.
    server = start_server("--log-level", "notice")
    clients = [connect(server.port, FAMILIES[i % 2]) for i in range(clients_wanted)]
    expected = set()
    for i, client in enumerate(clients):
        client.sendall(f"client {i} says hello\n".encode())
        expected.add(f"[{peer_name(client)}] client {i} says hello")

    # Every line is out while every client is still connected: all were served at once.
    out = server.wait_stdout(lambda out: out.count(b"\n") >= clients_wanted, timeout=60)
    assert set(out.decode().splitlines()) == expected
    for client in clients:
        client.close()
    assert server.stop(timeout=30) == 0
    stderr = server.all_stderr()
    assert f"stopped: served {clients_wanted} connections," in stderr
    assert "accept failed" not in stderr
    assert_no_traceback(stderr)


# ---- 11. nc clients, as in the original article ----------------------------------------------


def nc_close_flags(nc: str) -> list[str] | None:
    """The flags that make this ``nc`` variant close the connection at EOF on stdin."""
    usage = subprocess.run(
        [nc, "-h"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=5, check=False
    )
    text = usage.stdout + usage.stderr
    if "OpenBSD" in text:
        return ["-N"]
    if "Ncat" in text:
        return ["--send-only"]
    if re.search(r"-q\b", text):
        return ["-q", "0"]  # traditional netcat, busybox
    return None


def test_nc_clients_as_in_the_article(start_server):
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("nc is not installed")
    flags = nc_close_flags(nc)
    if flags is None:
        pytest.skip(f"unknown nc variant at {nc}")
    server = start_server()
    names = "abcd"
    clients = [
        subprocess.Popen(
            [nc, *flags, "127.0.0.1", str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in names
    ]
    try:
        for round_ in (1, 2):
            for name, nc_proc in zip(names, clients, strict=True):
                assert nc_proc.stdin is not None
                nc_proc.stdin.write(f"{name}{round_}\n".encode())
                nc_proc.stdin.flush()
            # Every client is heard while every client is connected.
            for name in names:
                server.wait_stdout(
                    lambda out, line=f"{name}{round_}": re.search(
                        rf"^\[127\.0\.0\.1:\d+\] {line}$".encode(), out, re.M
                    )
                )
        results = [nc_proc.communicate(timeout=EVENT_TIMEOUT) for nc_proc in clients]
    finally:
        for nc_proc in clients:
            if nc_proc.poll() is None:
                nc_proc.kill()
            nc_proc.wait()
            for pipe in (nc_proc.stdin, nc_proc.stderr):
                if pipe is not None:
                    pipe.close()
    assert [nc_proc.returncode for nc_proc in clients] == [0] * len(names), results
    for i in range(1, len(names) + 1):
        server.wait_stderr(rf"close #{i} 127\.0\.0\.1:\d+: 6 bytes in .* \(closed by client\)")
    lines = server.stdout.decode().splitlines()
    assert len(lines) == 2 * len(names)
    # Each nc is one connection, and its two lines come from the same peer.
    for name in names:
        (peer1,) = {line.split()[0] for line in lines if line.endswith(f" {name}1")}
        (peer2,) = {line.split()[0] for line in lines if line.endswith(f" {name}2")}
        assert peer1 == peer2


# ---- 12. --help ------------------------------------------------------------------------------


def test_help_mentions_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    for flag in (
        "--host", "--port", "--echo", "--quiet", "--raw", "--format", "--grace",
        "--idle-timeout", "--max-connections", "--log-level", "--max-line",
    ):  # fmt: skip
        assert re.search(rf"^\s+{flag}\b", result.stdout, re.M), f"{flag} not described"
