"""Exposing the server safely (issue 6): TLS, ``--allow``/``--deny``, ``--max-bytes``, slow
clients, the warning about a non-loopback address, and bad values for every new flag.

End to end through ``python -m trio_echo`` where only a real process shows it (the log lines,
the exit status, other clients unaffected), in process where that is cheaper (the command
line's checks, the access rules, TLS with ``--max-bytes`` and the grace period).  Certificates
come from ``trustme``; every client is on loopback.  Slow clients are paced with short sleeps
(that is their behaviour); waiting for the server is always a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
import trustme
from conftest import (
    EVENT_TIMEOUT,
    LOOPBACKS,
    assert_no_traceback,
    peer_name,
    recv_eof,
    recv_exactly,
    run_cli,
)
from cryptography.hazmat.primitives import serialization

from trio_echo import Config, serve
from trio_echo.cli.options import parse_args
from trio_echo.net.access import AccessPolicy, parse_network
from trio_echo.net.bind import is_loopback
from trio_echo.server.wrappers import LimitedStream

# ---- certificates and clients ------------------------------------------------------------------


@attrs.frozen
class TLSFiles:
    """A trustme CA and a server certificate for the loopback addresses, as PEM files."""

    ca: trustme.CA
    cert: Path
    key: Path
    # The key and the certificate in one file (--tls-cert alone).
    combined: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only our CA and checks the server's address."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def args(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "::1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    cert, key, combined = folder / "cert.pem", folder / "key.pem", folder / "combined.pem"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    issued.private_key_and_cert_chain_pem.write_to_path(str(combined))
    return TLSFiles(ca, cert, key, combined)


@pytest.fixture
def tls_connect(
    connect: Callable[..., socket.socket], tls_files: TLSFiles
) -> Iterator[Callable[..., ssl.SSLSocket]]:
    """``tls_connect(port)``: a loopback TLS client that has verified the server's
    certificate (the handshake is done when it returns).  Closed at teardown."""
    context = tls_files.client_context()
    with contextlib.ExitStack() as cleanup:

        def open_tls(port: int, family: socket.AddressFamily = socket.AF_INET) -> ssl.SSLSocket:
            raw = connect(port, family)
            client = context.wrap_socket(raw, server_hostname=LOOPBACKS[family])
            cleanup.callback(client.close)
            return client

        yield open_tls


@pytest.fixture
def bound_client() -> Iterator[Callable[[str, int], socket.socket]]:
    """``bound_client(source, port)``: a client connected to 127.0.0.1 from another loopback
    address (all of 127.0.0.0/8 is loopback), for the access rules."""
    with contextlib.ExitStack() as cleanup:

        def open_client(source: str, port: int) -> socket.socket:
            sock = cleanup.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.settimeout(EVENT_TIMEOUT)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            return sock

        yield open_client


def round_trip(client: socket.socket, line: bytes) -> None:
    """Send ``line`` and get exactly it back (an ``--echo`` server)."""
    client.sendall(line)
    assert recv_exactly(client, len(line)) == line


def client_hello() -> bytes:
    """The first flight of a TLS client: what a slow client dribbles."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def lines_about(stderr: str, client: socket.socket) -> list[str]:
    """The server's log lines that name this client."""
    peer = re.escape(peer_name(client))
    return [line for line in stderr.splitlines() if re.search(rf" {peer}\b", line)]


def closed_by_server(client: socket.socket) -> bool:
    """The server closed (or reset) this connection, within the event timeout."""
    with contextlib.suppress(ConnectionResetError):  # closed with our data unread: a reset
        recv_eof(client)
    return True


def paced(until: Callable[[], object], step: Callable[[int], None], pace: float = 0.1) -> int:
    """Call ``step(i)`` every ``pace`` seconds until ``until()``; return the number of steps.
    Fails after the event timeout."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    i = 0
    while not until():
        assert time.monotonic() < deadline, "the server did not act in time"
        step(i)
        i += 1
        time.sleep(pace)  # the slow client's pace, not a synchronisation
    return i


# ---- TLS, end to end ---------------------------------------------------------------------------


def test_tls_round_trip_with_a_verified_certificate(start_server, tls_connect, tls_files):
    server = start_server("--echo", "--grace", "0.2", *tls_files.args())
    server.wait_stderr(r"listening on .* \(echo and print, text, tls\)$")
    v4 = tls_connect(server.port)
    v6 = tls_connect(server.port, socket.AF_INET6)
    round_trip(v4, b"hello over TLS\n")
    round_trip(v6, b"and over IPv6\n")
    server.wait_stdout(f"[{peer_name(v4)}] hello over TLS\n".encode())
    server.wait_stdout(f"[{peer_name(v6)}] and over IPv6\n".encode())
    v4_peer = re.escape(peer_name(v4))
    server.wait_stderr(rf"open #\d+ {v4_peer} \(TLSv1\.[23]\)$")
    # A clean TLS close (close_notify both ways) is an ordinary close.
    v4.unwrap().close()
    server.wait_stderr(rf"close #\d+ {v4_peer}: 15 bytes .*\(closed by client\)")
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert "WARNING" not in stderr  # loopback only: no warning


def test_key_in_the_certificate_file(start_server, tls_connect, tls_files):
    server = start_server("--echo", "--tls-cert", str(tls_files.combined))
    round_trip(tls_connect(server.port), b"one file\n")


def test_plain_and_silent_clients_on_the_tls_port_are_one_line_each(
    start_server, connect, tls_connect, tls_files
):
    server = start_server(
        "--echo", "--grace", "0.2", "--tls-handshake-timeout", "1", *tls_files.args()
    )
    good = tls_connect(server.port)
    round_trip(good, b"before\n")

    # Plain text on the TLS port: refused at once, one line, nothing printed.
    plain = connect(server.port)
    plain.sendall(b"hello in plain text\n")
    server.wait_stderr(
        rf"refused #\d+ {re.escape(peer_name(plain))}: TLS handshake failed after [\d.]+ s "
        r"\(wrong version number: not TLS: a plain-text client\?\)$"
    )
    assert closed_by_server(plain)

    # A client that connects and never shakes hands: its own task waits, nobody else does.
    silent = connect(server.port, socket.AF_INET6)
    silent_refused = rf"refused #\d+ {re.escape(peer_name(silent))}: no TLS handshake after"
    later = tls_connect(server.port)  # a handshake while the silent one is pending
    round_trip(later, b"not held up\n")
    round_trip(good, b"nor this one\n")
    assert not re.search(silent_refused, server.stderr), "a TLS client waited for the silent one"
    match = server.wait_stderr(rf"{silent_refused} ([\d.]+) s \(--tls-handshake-timeout 1\)$")
    assert 1 <= float(match[1]) < 1 + EVENT_TIMEOUT
    assert recv_eof(silent) == b""
    round_trip(good, b"after\n")

    assert server.stop() == 0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    # One line each: no open or close line for a client that never got through.
    assert len(lines_about(stderr, plain)) == 1, stderr
    assert len(lines_about(stderr, silent)) == 1, stderr
    assert b"plain text" not in server.all_stdout()


def test_a_dribbled_handshake_cannot_outlast_the_timeout_nor_take_a_second_slot(
    start_server, connect, tls_connect, tls_files
):
    # Slowloris on the handshake: a real ClientHello, one byte every 0.1 s.  The timeout counts
    # from the accept, not from the last byte; meanwhile it holds one of the two slots only.
    server = start_server(
        "--echo", "--max-connections", "2", "--tls-handshake-timeout", "0.5", *tls_files.args()
    )
    hello = client_hello()
    slow = connect(server.port)
    good = tls_connect(server.port)
    slow_peer = re.escape(peer_name(slow))
    refused = re.compile(rf"refused #\d+ {slow_peer}: no TLS handshake after")

    def step(i: int) -> None:
        with contextlib.suppress(OSError):  # closed by the server meanwhile
            slow.sendall(hello[i : i + 1])
        round_trip(good, f"line {i}\n".encode())

    steps = paced(lambda: refused.search(server.stderr), step)
    assert steps < len(hello)
    # Its slot is free again: a third client is served alongside the good one.
    third = tls_connect(server.port)
    round_trip(third, b"third\n")
    round_trip(good, b"still here\n")


# ---- TLS, in process: --max-bytes on TLS, a handshake cut short by the grace period ------------


async def test_tls_max_bytes_and_a_pending_handshake_at_shutdown(tls_files, caplog):
    caplog.set_level(logging.INFO, "trio_echo")
    config = Config(
        hosts=("127.0.0.1",),
        port=0,
        echo=True,
        max_bytes=10,
        grace=0.2,
        tls_cert=str(tls_files.cert),
        tls_key=str(tls_files.key),
    )
    with trio.fail_after(EVENT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve, config)
            tcp = await trio.open_tcp_stream("127.0.0.1", handle.port)
            client = trio.SSLStream(tcp, tls_files.client_context(), server_hostname="127.0.0.1")
            await client.send_all(b"0123456789ABCDEF")
            echoed = b""
            # The server closes with our extra bytes unread in its TLS buffer, when OpenSSL
            # cannot send a close_notify: a truncation, which is what it is.
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await client.receive_some():
                    echoed += chunk
            assert echoed == b"0123456789"
            await client.aclose()

            # A client that never shakes hands, still pending when the grace period ends.
            silent = await trio.open_tcp_stream("127.0.0.1", handle.port)
            for _ in range(int(EVENT_TIMEOUT / 0.01)):  # until the server has accepted it
                if handle.stats.active:
                    break
                await trio.sleep(0.01)
            handle.shutdown()
            await handle.stopped.wait()
            assert await silent.receive_some() == b""
            await silent.aclose()
    assert "(sent more than --max-bytes 10)" in caplog.text
    assert re.search(r"TLS handshake cut short after [\d.]+ s \(grace period over\)", caplog.text)
    assert handle.stats.active == 0


# ---- --allow / --deny --------------------------------------------------------------------------


def test_allow_and_deny_refuse_at_once_and_log(start_server, connect, bound_client):
    # 127.0.0.1 is allowed; 127.0.0.2 is in the allowed block but denied by a more specific
    # rule; ::1 is in no --allow block.
    server = start_server(
        "--echo", "--grace", "0.2", "--allow", "127.0.0.0/8", "--deny", "127.0.0.2"
    )
    allowed = connect(server.port)
    round_trip(allowed, b"welcome\n")
    denied = bound_client("127.0.0.2", server.port)
    denied.sendall(b"let me in\n")
    assert closed_by_server(denied)
    server.wait_stderr(rf"refused {re.escape(peer_name(denied))} \(--deny 127\.0\.0\.2/32\)$")
    v6 = connect(server.port, socket.AF_INET6)
    assert closed_by_server(v6)
    server.wait_stderr(rf"refused {re.escape(peer_name(v6))} \(no --allow matches\)$")
    round_trip(allowed, b"still served\n")
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert len(lines_about(stderr, denied)) == 1
    assert b"let me in" not in server.all_stdout()
    assert "served 1 connection," in stderr  # refused clients are not counted as served


def test_deny_alone_is_a_block_list(start_server, connect):
    server = start_server("--echo", "--deny", "::1/128")
    round_trip(connect(server.port), b"v4 is fine\n")
    v6 = connect(server.port, socket.AF_INET6)
    assert closed_by_server(v6)
    server.wait_stderr(rf"refused {re.escape(peer_name(v6))} \(--deny ::1/128\)$")


@pytest.mark.parametrize(
    ("allow", "deny", "address", "refusal"),
    [
        ((), (), "10.0.0.1", None),
        (("10.0.0.0/8",), (), "10.0.0.1", None),
        (("10.0.0.0/8",), (), "11.0.0.1", "no --allow matches"),
        (("10.0.0.0/8",), ("10.1.0.0/16",), "10.1.2.3", "--deny 10.1.0.0/16"),
        (("10.0.0.0/8",), ("10.1.0.0/16",), "10.2.0.1", None),
        # The most specific rule wins, whatever the order: an exception to a block list.
        (("10.1.2.3",), ("0.0.0.0/0",), "10.1.2.3", None),
        (("10.1.2.3",), ("0.0.0.0/0",), "10.1.2.4", "--deny 0.0.0.0/0"),
        # A tie goes to --deny.
        (("10.0.0.0/8",), ("10.0.0.0/8",), "10.0.0.1", "--deny 10.0.0.0/8"),
        # IPv6, and an IPv4 address mapped into IPv6 obeys the IPv4 rules.
        (("fd00::/8",), (), "fd12::1", None),
        (("fd00::/8",), (), "fe80::1%lo", "no --allow matches"),
        ((), ("10.0.0.0/8",), "::ffff:10.0.0.1", "--deny 10.0.0.0/8"),
        (("127.0.0.0/8",), (), "::1", "no --allow matches"),
    ],
)
def test_access_policy(allow, deny, address, refusal):
    policy = AccessPolicy(tuple(map(parse_network, allow)), tuple(map(parse_network, deny)))
    assert policy.refusal((address, 1234)) == refusal


def test_access_policy_without_rules_checks_nothing():
    assert AccessPolicy.of((), ()) is None
    only_deny = AccessPolicy.of((), (parse_network("10.0.0.0/8"),))
    assert only_deny is not None
    assert only_deny.refusal("memory") is None  # not an IP address: no allow list, fine
    only_allow = AccessPolicy.of((parse_network("10.0.0.0/8"),), ())
    assert only_allow is not None
    assert only_allow.refusal("memory") == "not an IP address"


def test_config_takes_networks_as_strings():
    config = Config(allow=["10.0.0.0/8", ipaddress.ip_network("::1/128")])
    assert config.allow == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    with pytest.raises(ValueError, match="host bits set"):
        Config(deny=["10.1.2.3/8"])


# ---- --max-bytes and slow clients --------------------------------------------------------------


def test_max_bytes_prints_exactly_that_many_then_closes(start_server, connect):
    server = start_server("--raw", "--max-bytes", "10")
    exact = connect(server.port)
    exact.sendall(b"0123456789")  # exactly the limit, then a normal close
    exact.shutdown(socket.SHUT_WR)
    assert recv_eof(exact) == b""
    server.wait_stderr(rf"close #1 {re.escape(peer_name(exact))}: 10 bytes .*\(closed by client\)$")
    over = connect(server.port, socket.AF_INET6)
    over.sendall(b"abcdefghijKLMNOP")
    assert closed_by_server(over)
    server.wait_stderr(
        rf"close #2 {re.escape(peer_name(over))}: 10 bytes .*\(sent more than --max-bytes 10\)$"
    )
    assert server.stop() == 0
    assert server.all_stdout() == b"0123456789abcdefghij"


async def test_limited_stream_never_reads_past_the_limit():
    client, server_side = trio.testing.memory_stream_pair()
    limited = LimitedStream(server_side, 5)
    await client.send_all(b"abc")
    assert await limited.receive_some(100) == b"abc"
    await client.send_all(b"defgh")
    assert await limited.receive_some(100) == b"de"  # asked for 3: two left, one to tell "more"
    assert limited.exceeded
    assert await limited.receive_some(100) == b""
    assert await server_side.receive_some() == b"gh"  # never read by the limited transport


def test_slowloris_holds_one_slot_until_the_idle_timeout(start_server, connect):
    # One byte every 0.1 s keeps a connection alive under --idle-timeout 0.5, but it is one
    # slot of --max-connections 2: the good client beside it is served at full speed.  When the
    # slow one pauses, the idle timeout frees its slot for the client waiting in the backlog.
    server = start_server("--echo", "--max-connections", "2", "--idle-timeout", "0.5")
    slow = connect(server.port)
    good = connect(server.port, socket.AF_INET6)
    dribbled = []

    def step(i: int) -> None:
        slow.sendall(b"s")
        dribbled.append(b"s")
        round_trip(good, f"{i}\n".encode())

    paced(lambda: len(dribbled) >= 8, step)  # 0.8 s: longer than the idle timeout
    waiting = connect(server.port)  # in the backlog: both slots are taken
    waiting.sendall(b"let me in\n")
    # The slow client stops; within the idle timeout it is closed and the waiting one served.
    assert recv_exactly(waiting, 10, timeout=0.5 + EVENT_TIMEOUT) == b"let me in\n"
    server.wait_stderr(rf"close #\d+ {re.escape(peer_name(slow))}: 8 bytes .*\(idle for 0.5 s\)$")
    assert recv_eof(slow) == b"".join(dribbled)  # its echo, then EOF


def test_a_client_that_never_reads_its_echo_is_closed_after_the_idle_timeout(start_server, connect):
    # With --echo, a client that sends but never reads fills its receive buffer, then ours:
    # the handler blocks sending the echo.  --idle-timeout covers that wait too, or the client
    # would hold its slot (and a task, and buffers) forever.
    server = start_server("--echo", "--quiet", "--idle-timeout", "0.5")
    client = connect(server.port)
    # Send until stuck for good (the server stopped reading: it is blocked on its echo), or
    # until the server closes the connection.
    client.settimeout(0.5 + EVENT_TIMEOUT)
    with contextlib.suppress(OSError):
        for _ in range(4096):  # 256 MiB: far more than the buffers of both ends hold
            client.sendall(b"x" * 65536)
    server.wait_stderr(
        rf"close #1 {re.escape(peer_name(client))}: \d+ bytes .*\(not reading its echo for "
        r"0.5 s\)$",
        timeout=0.5 + EVENT_TIMEOUT,
    )
    assert server.stop() == 0


# ---- the warning about a non-loopback address --------------------------------------------------


def test_non_loopback_address_gives_a_warning_naming_it(start_server):
    # Only a bind: nothing is sent to these addresses.
    server = start_server("--host", "0.0.0.0", "--host", "::1")
    match = server.wait_stderr(r"WARNING exposed to the network: (.*) (?:is|are) not loopback")
    assert match[1] == f"0.0.0.0:{server.port}"
    assert server.stop() == 0
    assert server.all_stderr().count("not loopback") == 1


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        (("127.0.0.1", 1), True),
        (("127.1.2.3", 1), True),
        (("::1", 1, 0, 0), True),
        (("::ffff:127.0.0.1", 1, 0, 0), True),
        (("0.0.0.0", 1), False),
        (("::", 1, 0, 0), False),
        (("192.168.1.10", 1), False),
        (("fe80::1%lo", 1, 0, 1), False),
    ],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


# ---- bad command lines -------------------------------------------------------------------------


BAD_VALUES = [
    ["--max-bytes", "-1"],
    ["--max-bytes", "0"],
    ["--max-bytes", "lots"],
    ["--max-bytes", "1.5"],
    ["--allow", "10.0.0.300/8"],
    ["--allow", "10.1.2.3/8"],
    ["--allow", ""],
    ["--deny", "::1/129"],
    ["--deny", "localhost"],
    ["--tls-handshake-timeout", "0"],
    ["--tls-handshake-timeout", "-1"],
    ["--tls-handshake-timeout", "soon"],
    ["--tls-handshake-timeout", "inf"],
    ["--tls-cert", "/nonexistent/cert.pem"],
    ["--tls-key", "/nonexistent/key.pem"],
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=" ".join)
def test_bad_value_is_one_line_and_status_2(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("trio-echo: error: ")
    assert args[0] in lines[0]  # names the culprit


@pytest.mark.parametrize(
    "args",
    [["--max-bytes", "-5"], ["--allow", "10.0.0.0/33"], ["--tls-cert", "/nonexistent.pem"]],
    ids=" ".join,
)
def test_bad_value_end_to_end(args):
    result = run_cli(*args, "--port", "0")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert args[0] in result.stderr


def _bad_tls_files(tmp_path: Path, tls_files: TLSFiles) -> dict[str, tuple[list[str], str]]:
    """Files that cannot serve TLS, with the args that use them and what the error says."""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(tls_files.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    broken = tmp_path / "broken.pem"
    broken.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"
        + tls_files.key.read_bytes()
    )
    cert, key_path = str(tls_files.cert), str(tls_files.key)
    return {
        "not pem": (["--tls-cert", str(not_pem), "--tls-key", key_path], "no PEM certificate"),
        "key not pem": (["--tls-cert", cert, "--tls-key", str(not_pem)], "no PEM private key"),
        "broken pem": (["--tls-cert", str(broken)], "cannot use it"),
        "no key in the cert file": (["--tls-cert", cert], "no private key in it"),
        "a directory": (["--tls-cert", str(tmp_path)], "cannot read it (Is a directory)"),
        "mismatched key": (["--tls-cert", cert, "--tls-key", str(other_key)], "does not match"),
        "encrypted key": (
            ["--tls-cert", cert, "--tls-key", str(encrypted)],
            "the private key is encrypted",
        ),
        "key without cert": (["--tls-key", key_path], "--tls-key needs --tls-cert"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not pem",
        "key not pem",
        "broken pem",
        "no key in the cert file",
        "a directory",
        "mismatched key",
        "encrypted key",
        "key without cert",
    ],
)
def test_unusable_tls_files_are_one_line_and_status_2(case, tmp_path, tls_files, capsys):
    args, expected = _bad_tls_files(tmp_path, tls_files)[case]
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert "--tls-" in lines[0]


@pytest.mark.parametrize("flag", ["--allow", "--tls-cert", "--max-bytes"])
def test_other_models_refuse_the_new_flags(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--model", "threads", flag, "2"])
    assert exit_.value.code == 2
    assert f"--model threads does not support {flag}" in capsys.readouterr().err
