"""Unix domain sockets end to end: ``python -m trio_echo --unix`` with real clients (OpenBSD
``nc -U``, ``socat``, ``ncat -U``, Python), byte-exact accounting, the file's mode from the first
moment, a stale file replaced, the file removed on every way out, the abstract namespace,
``--workers``, TLS and the PROXY protocol over the socket."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import time

import pytest
from conftest import (
    EVENT_TIMEOUT,
    LISTENING_RE,
    STARTUP_TIMEOUT,
    ServerProcess,
    assert_no_traceback,
    recv_eof,
    recv_exactly,
)
from unix_helpers import (
    ME,
    linux_only,
    peer_of,
    run_client,
    sock_dir,
    unix_connect,
    unix_server,
)

__all__ = ["sock_dir", "unix_connect", "unix_server"]  # fixtures

# ---- end to end -------------------------------------------------------------------------------


@linux_only
def test_real_clients_echo_and_lines_named_by_their_pid(sock_dir: str, unix_server) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(path, "--echo")
    assert f"listening on unix:{path} (echo and print, text)" in server.stderr
    clients = [
        argv
        for argv in (
            ["nc", "-N", "-U", path],
            ["socat", "-", f"UNIX-CONNECT:{path}"],
            ["ncat", "-U", path],
        )
        if shutil.which(argv[0])
    ]
    if not clients:
        pytest.skip("none of nc, socat, ncat is installed")
    for argv in clients:
        data = f"hello from {argv[0]}\nsecond line\n".encode()
        pid, echoed = run_client(argv, data)
        assert echoed == data
        server.wait_stdout(f"[{peer_of(pid)}] hello from {argv[0]}\n".encode())
        server.wait_stderr(rf"close #\d+ {re.escape(peer_of(pid))}: {len(data)} bytes")
    assert server.stop() == 0
    assert not os.path.exists(path)
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert f"served {len(clients)} connections" in stderr


def test_graceful_shutdown_prints_every_line_and_removes_the_file(
    sock_dir: str, unix_server, unix_connect
) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(path, "--grace", "5")
    client = unix_connect(path)
    client.sendall(b"before\n")
    server.wait_stdout(b"] before\n")
    server.send_signal(signal.SIGTERM)
    server.wait_stderr("SIGTERM: stopped accepting; waiting up to 5 s for 1 client")
    # Accepting stopped: the file went with the listening socket.
    assert not os.path.exists(path)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late,
        pytest.raises(FileNotFoundError),
    ):
        late.connect(path)
    late_lines = b"during the grace period\nand a last line without newline"
    client.sendall(late_lines)
    client.shutdown(socket.SHUT_WR)
    assert recv_eof(client) == b""
    assert server.wait() == 0
    out = server.all_stdout().decode()
    peer = ME
    assert out == (
        f"[{peer}] before\n[{peer}] during the grace period\n"
        f"[{peer}] and a last line without newline\n"
    )
    stderr = server.all_stderr()
    received = len(b"before\n" + late_lines)
    assert f"served 1 connection, {received} bytes received" in stderr
    assert_no_traceback(stderr)


def test_forced_exit_removes_the_file(sock_dir: str, unix_server, unix_connect) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(path)
    client = unix_connect(path)
    client.sendall(b"x\n")
    server.wait_stdout(b"] x\n")
    server.send_signal(signal.SIGTERM)
    server.wait_stderr("stopped accepting")
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM
    assert not os.path.exists(path)
    assert recv_eof(client) == b""
    assert os.listdir(sock_dir) == []


def test_a_stale_file_left_by_a_killed_server_is_replaced(sock_dir: str, unix_server) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    killed = unix_server(path, "--unix-mode", "600")
    killed.proc.kill()
    killed.wait()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # SIGKILL: nobody could remove it
    server = unix_server(path, "--echo")
    server.wait_stderr(rf"replaced unix:{re.escape(path)}: a socket file nothing listened on")
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(EVENT_TIMEOUT)
        client.connect(path)
        client.sendall(b"again\n")
        assert recv_exactly(client, 6) == b"again\n"
    assert server.stop() == 0
    assert os.listdir(sock_dir) == []


def test_the_mode_is_in_force_from_the_first_moment(sock_dir: str, unix_connect) -> None:
    """Watch for the file from before the server starts: every sight of it has the mode asked
    for, never the umask's (which would be looser: 755)."""
    path = os.path.join(sock_dir, "echo.sock")
    server = ServerProcess(
        ["--unix", path, "--unix-mode", "600"], preexec_fn=lambda: os.umask(0o022)
    )
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not LISTENING_RE.search(server.stderr):
            assert time.monotonic() < deadline, server.stderr
            with contextlib.suppress(FileNotFoundError):
                seen.add(stat.S_IMODE(os.lstat(path).st_mode))
            for name in os.listdir(sock_dir):  # and nothing looser next to it, ever
                if name != "echo.sock":
                    with contextlib.suppress(FileNotFoundError):
                        assert stat.S_IMODE(os.lstat(os.path.join(sock_dir, name)).st_mode) == 0o700
        assert seen <= {0o600}
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert os.listdir(sock_dir) == ["echo.sock"]
        with unix_connect(path) as client:
            client.sendall(b"ok\n")
        server.wait_stdout(b"] ok\n")
        assert server.stop() == 0
    finally:
        server.close()


def test_jsonl_keeps_every_byte_of_every_client(sock_dir: str, unix_server, unix_connect) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(path, "--format", "jsonl", "--max-line", "100")
    rng = random.Random(14)
    sent: dict[bytes, bytes] = {}
    clients = []
    for k in range(6):
        tag = b"client %d\n" % k
        data = tag + rng.randbytes(rng.randrange(1, 20000))
        sent[tag] = data
        client = unix_connect(path)
        clients.append(client)
        for start in range(0, len(data), 997):
            client.sendall(data[start : start + 997])
    for client in clients:
        client.close()
    total = sum(map(len, sent.values()))
    server.wait_stderr(r"close #6 ")
    assert server.stop() == 0
    got: dict[int, bytes] = {}
    for line in server.all_stdout().splitlines():
        record = json.loads(line)
        assert record["peer"] == ME
        if record["event"] == "data":
            data = (
                base64.b64decode(record["data_b64"])
                if "data_b64" in record
                else (record["data"].encode())
            )
            got[record["conn"]] = got.get(record["conn"], b"") + data + record["eol"].encode()
    assert sorted(got.values()) == sorted(sent.values())
    assert f"{total} bytes received" in server.all_stderr()


@pytest.mark.stress  # a second each: `nox -s stress`
def test_limits_apply_to_unix_clients(sock_dir: str, unix_server, unix_connect) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(
        path, "--max-bytes", "10", "--idle-timeout", "0.5", "--max-connections", "2"
    )
    greedy = unix_connect(path)
    greedy.sendall(b"0123456789abcdefghij\n")
    # Closed with bytes unread: a Unix socket's peer then sees a reset, as TCP's would.
    with contextlib.suppress(ConnectionResetError):
        assert recv_eof(greedy) == b""
    server.wait_stderr(r"close #1 .*: 10 bytes .*\(sent more than --max-bytes 10\)")
    silent = unix_connect(path)
    server.wait_stderr(r"close #2 .*\(idle for 0.5 s\)")
    assert recv_eof(silent) == b""
    assert server.stop() == 0
    assert server.all_stdout().endswith(b"] 0123456789\n")


@pytest.mark.stress  # a second each: `nox -s stress`
def test_workers_share_the_socket(sock_dir: str, unix_server, unix_connect) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(path, "--workers", "2", "--echo")
    assert f"listening on unix:{path} (echo and print, text, 2 workers)" in server.stderr
    for k in range(4):
        client = unix_connect(path)
        client.sendall(b"line %d\n" % k)
        assert recv_exactly(client, 7) == b"line %d\n" % k
        client.close()
    server.wait_stdout(lambda out: out.count(b"\n") == 4)
    assert server.stop() == 0
    assert not os.path.exists(path)
    assert "served 4 connections" in server.all_stderr()


@pytest.mark.stress  # a second each: `nox -s stress`
def test_tls_and_proxy_protocol_over_a_unix_socket(
    sock_dir: str, unix_server, unix_connect
) -> None:
    """HAProxy can send to a Unix socket (``server s1 /run/echo.sock send-proxy``); the
    header comes first, in the clear, then the TLS handshake, as over TCP."""
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    pem = os.path.join(sock_dir, "server.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(pem)
    path = os.path.join(sock_dir, "echo.sock")
    server = unix_server(path, "--tls-cert", pem, "--proxy-protocol", "--echo")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    raw = unix_connect(path)
    raw.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n")
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"secret\n")
        assert recv_exactly(tls, 7) == b"secret\n"
    server.wait_stdout(b"[203.0.113.7:51234] secret\n")
    server.wait_stderr(r"open #1 203\.0\.113\.7:51234 \(TLSv1\.\d, via unix")
    assert server.stop() == 0


@linux_only
@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_abstract_namespace_end_to_end(unix_server, unix_connect) -> None:
    name = f"trio-echo-test-{os.getpid()}-{random.randrange(1 << 30)}"
    server = unix_server(f"@{name}", "--echo")
    assert f"listening on unix:@{name} (" in server.stderr
    pid, echoed = run_client(["socat", "-", f"ABSTRACT-CONNECT:{name}"], b"abstract\n")
    assert echoed == b"abstract\n"
    server.wait_stdout(f"[{peer_of(pid)}] abstract\n".encode())
    with unix_connect("\0" + name) as client:
        client.sendall(b"mine\n")
        assert recv_exactly(client, 5) == b"mine\n"
    assert not os.path.exists(f"@{name}")  # no file, here or anywhere
    # Free once the server is gone: the kernel drops the name with the socket.
    assert server.stop() == 0
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late,
        pytest.raises(ConnectionRefusedError),
    ):
        late.connect("\0" + name)
