"""End-to-end tests of the default (trio) model in depth: ``python -m trio_echo`` as a real
subprocess, real loopback sockets.

What only a real process can show: the command line and its exit statuses, misbehaving clients,
a restart on the same port, memory under backpressure, thousands of file descriptors, ``nc``
clients.  What every model must do alike (output modes, signals and the grace period, a closed
or stalled stdout, a port already in use, the idle timeout, the connection limit) is tested
once, on every model that supports it, trio included, in ``test_models.py``.  The helpers live
in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
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
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    EVENT_TIMEOUT,
    FAMILIES,
    SERVER_COMMAND,
    assert_no_traceback,
    peer_name,
    recv_eof,
    recv_exactly,
    run_cli,
    run_command,
)

from trio_echo.cli.failures import raise_fd_limit

MiB = 1024 * 1024


# ---- 1. misbehaving clients ------------------------------------------------------------------


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


# ---- 2. restart on the same port -------------------------------------------------------------


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


# ---- 3. start-up errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--host", ""],
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
    result = run_command(
        [*_no_network_prefix(), *SERVER_COMMAND, "--host", "no.such.host.invalid", "--port", "0"]
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


# ---- 4. backpressure -------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tree_rss(pid: int) -> int:
    """The largest RSS among ``pid`` and its children (``--workers``: each worker's too)."""
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(child) for child in f.read().split()]
    sizes = [rss_bytes(pid)]
    for child in children:
        with contextlib.suppress(OSError, AssertionError):
            sizes.append(rss_bytes(child))
    return max(sizes)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_backpressure_keeps_memory_flat_while_stdout_stalls(start_server, connect, workers):
    """Also through a --workers supervisor: its queue, the pipe and the worker's queue are all
    bounded, so a stalled stdout stalls the client with every process's memory flat."""
    total = 512 * MiB
    rss_limit = 150 * 1000 * 1000
    deadline = time.monotonic() + 120
    server = start_server("--raw", "--log-level", "notice", "--workers", workers, read_stdout=False)
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
            max_rss = max(max_rss, tree_rss(server.pid))
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
                max_rss = max(max_rss, tree_rss(server.pid))
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


# ---- 5. thousands of clients -----------------------------------------------------------------


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


# ---- 6. nc clients, as in the original article -----------------------------------------------


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


# ---- 7. --help -------------------------------------------------------------------------------


def test_help_mentions_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    for flag in (
        "--host", "--port", "--echo", "--quiet", "--raw", "--format", "--grace",
        "--idle-timeout", "--max-connections", "--log-level", "--max-line",
    ):  # fmt: skip
        assert re.search(rf"^\s+{flag}\b", result.stdout, re.M), f"{flag} not described"


# ---- the README's embedding example ------------------------------------------------------------


def test_readme_embedding_example_runs(tmp_path):
    """The ``python`` block of the README runs as written: it starts the server in-process on a
    free port, shuts it down gracefully and exits 0."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1, "expected exactly one python example in the README"
    script = tmp_path / "embed.py"
    script.write_text(blocks[0])
    result = run_command([sys.executable, str(script)])
    assert result.returncode == 0, result.stderr
    listening = r"listening on \[\('127\.0\.0\.1', (\d+)\), \('::1', (\d+), 0, 0\)\]"
    match = re.match(listening, result.stdout)
    assert match, result.stdout
    assert match[1] == match[2]  # one port on both addresses
    assert_no_traceback(result.stderr)


def test_grace_period_end_closes_waiting_and_stuck_clients_alike(start_server, connect):
    # At the end of the grace period, a handler waiting for its client is ended by an end of
    # stream (SHUT_RD), and one stuck elsewhere -- here writing an echo to a client that never
    # reads -- by cancelling its own scope.  Both clients are closed, what the waiting one
    # sent is printed, and the server exits 0 right after the grace period.
    grace = 0.5
    server = start_server("--echo", "--grace", str(grace))
    waiting = connect(server.port)
    waiting.sendall(b"a whole line\nand half a line")
    server.wait_stdout(b"] a whole line\n")
    stuck = connect(server.port)
    stuck.setblocking(False)
    block = b"y" * 65536 + b"\n"
    with contextlib.suppress(BlockingIOError):
        while select.select([], [stuck], [], 0.5)[1]:  # until the echo fills both directions
            stuck.send(block)
    signalled = server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    assert time.monotonic() - signalled < grace + 1.0
    assert recv_eof(waiting) == b"a whole line\nand half a line"  # its echo, then EOF
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert len(re.findall(r"close #\d+ .*\(grace period over\)", stderr)) == 2, stderr
    assert b"] and half a line\n" in server.all_stdout()
