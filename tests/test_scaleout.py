"""Scale-out (issue 7): ``--proxy-protocol`` behind a load balancer, and inherited listening
sockets (``--fd N``, systemd's ``LISTEN_FDS``).

The PROXY header parser is pure and tested against the spec case by case
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt); the server end to end through
``python -m trio_echo`` (the printed peer, the log lines, a refused client among good ones),
and in process where a timeout or the grace period must be shortened.  Inherited sockets are
opened here and passed to the child with ``pass_fds``; waiting is always a poll with a
deadline, and every process is killed and every socket closed at teardown.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import trio
import trio.testing
from conftest import (
    EVENT_TIMEOUT,
    LISTENING_RE,
    SERVER_COMMAND,
    STARTUP_TIMEOUT,
    ServerProcess,
    assert_no_traceback,
    assert_refused,
    peer_name,
    recv_eof,
    recv_exactly,
)

import trio_echo.server.handler
from trio_echo import Config, serve
from trio_echo.net.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse,
)
from trio_echo.server.wrappers import PrefixedStream

# ---- building headers --------------------------------------------------------------------------

V1_TCP4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8888\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 8888\r\n"
# The longest v1 header the spec allows (107 bytes).
V1_LONGEST = b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n"


def v2(
    command: int = 0x21, family: int = 0x11, body: bytes = b"", length: int | None = None
) -> bytes:
    """A v2 header: signature, version/command, family/transport, length, body."""
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", size) + body


def v2_tcp4(src: str = "203.0.113.7", sport: int = 51234, tlvs: bytes = b"") -> bytes:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("192.0.2.1").packed
    return v2(body=addresses + struct.pack("!HH", sport, 8888) + tlvs)


def v2_tcp6(src: str = "2001:db8::7", sport: int = 4000) -> bytes:
    addresses = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address("2001:db8::1").packed
    return v2(family=0x21, body=addresses + struct.pack("!HH", sport, 8888))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# ---- the parser: valid headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "source", "destination"),
    [
        (V1_TCP4, ("203.0.113.7", 51234), ("192.0.2.1", 8888)),
        (V1_TCP6, ("2001:db8::7", 4000), ("2001:db8::1", 8888)),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
        ),
        # An IPv6 address is shown compressed, as the rest of the server shows them.
        (b"PROXY TCP6 2001:0db8:0:0:0:0:0:7 ::1 1 2\r\n", ("2001:db8::7", 1), ("::1", 2)),
        (v2_tcp4(), ("203.0.113.7", 51234), ("192.0.2.1", 8888)),
        (v2_tcp6(), ("2001:db8::7", 4000), ("2001:db8::1", 8888)),
        # TLVs (AWS's VPC endpoint id, a NOOP pad) are skipped.
        (
            v2_tcp4(tlvs=tlv(0xEA, b"\x01vpce-0123") + tlv(0x04, b"")),
            ("203.0.113.7", 51234),
            ("192.0.2.1", 8888),
        ),
        # UDP over IPv4: the addresses are still the client's.
        (
            v2(family=0x12, body=bytes(4) + bytes(4) + struct.pack("!HH", 1, 2)),
            ("0.0.0.0", 1),
            ("0.0.0.0", 2),
        ),
    ],
)
def test_parse_valid_headers(header, source, destination):
    parsed = parse(header + b"client data")
    assert parsed is not None
    assert (parsed.source, parsed.destination) == (source, destination)
    assert parsed.length == len(header)
    assert parsed.version == (1 if header.startswith(b"PROXY") else 2)
    assert not parsed.local


@pytest.mark.parametrize(
    ("header", "local"),
    [
        (b"PROXY UNKNOWN\r\n", False),
        (b"PROXY UNKNOWN whatever follows is ignored\r\n", False),
        (V1_LONGEST, False),
        # LOCAL: the balancer's own connection (a health check); its addresses are ignored.
        (v2(command=0x20, family=0x00), True),
        (v2(command=0x20, family=0x11, body=bytes(12)), True),
        # PROXY with AF_UNSPEC or AF_UNIX: the spec says use the real endpoints.
        (v2(command=0x21, family=0x00, body=tlv(0x04, b"pad")), False),
        (v2(command=0x21, family=0x31, body=bytes(216)), False),
    ],
)
def test_parse_headers_that_mean_the_real_peer(header, local):
    assert len(V1_LONGEST) == V1_MAX_LENGTH
    assert parse(header + b"data") == ProxyHeader(
        1 if header.startswith(b"PROXY") else 2, None, None, len(header), local=local
    )


@pytest.mark.parametrize("header", [V1_TCP4, V1_LONGEST, v2_tcp4(tlvs=tlv(0x05, b"id")), v2_tcp6()])
def test_parse_waits_for_the_whole_header(header):
    """Every proper prefix is "need more", never an error: the header may come byte by byte."""
    for end in range(len(header)):
        assert parse(header[:end]) is None, header[:end]
    assert parse(header) is not None


# ---- the parser: every way to be malformed -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        # Not a PROXY header at all: refused on the first byte that cannot start one.
        (b"hello\n", "no PROXY protocol signature"),
        (b"G", "no PROXY protocol signature"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol signature"),
        (b"PROXY\r\n", "no PROXY protocol signature"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY protocol signature"),
        (b"\r\n\r\n\x00\r\nQUIT\r", "no PROXY protocol signature"),
        (b"\r\nGET", "no PROXY protocol signature"),
        # v1: framing and length.
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1 header ends without CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "v1 header ends without CRLF"),
        (b"PROXY UNKNOWN " + b"x" * 93, f"v1 header longer than {V1_MAX_LENGTH} bytes"),
        (V1_LONGEST[:-2] + b"x\r\n", f"v1 header longer than {V1_MAX_LENGTH} bytes"),
        # v1: protocol and fields.
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1 unknown protocol 'TCP5'"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 unknown protocol 'tcp4'"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 unknown protocol ''"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1 header needs 4 fields after the protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "v1 header needs 4 fields after the protocol"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1 header needs 4 fields after the protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1 header needs 4 fields after the protocol"),
        (b"PROXY TCP4\r\n", "v1 header needs 4 fields after the protocol"),
        # v1: addresses.
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1 bad IPv4 address '1.2.3.256'"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1 bad IPv4 address '01.2.3.4'"),
        (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "v1 bad IPv4 address '::1'"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1 bad IPv6 address '1.2.3.4'"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1 bad IPv6 address 'fe80::1%eth0'"),
        (b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", "v1 bad IPv4 address 'localhost'"),
        (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", r"v1 bad IPv4 address '1.2.3.\\xff'"),
        # v1: ports.
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1 bad port '65536'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "v1 bad port '-2'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "v1 bad port '+1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1 bad port '01'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", "v1 bad port '1_0'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n", "v1 bad port '0x10'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999999999\r\n", "v1 bad port '99999999999'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 http 2\r\n", "v1 bad port 'http'"),
        # v2: version and command, refused as soon as the byte arrives.
        (V2_SIGNATURE + b"\x11", "v2 unsupported version 1"),
        (V2_SIGNATURE + b"\x31", "v2 unsupported version 3"),
        (v2(command=0x22), "v2 unknown command 2"),
        (v2(command=0x2F), "v2 unknown command 15"),
        # v2: the family/transport byte (only 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32 exist).
        (V2_SIGNATURE + b"\x21\x41", "v2 unknown address family/transport 0x41"),
        (v2(family=0x13), "v2 unknown address family/transport 0x13"),
        (v2(family=0x10), "v2 unknown address family/transport 0x10"),
        (v2(family=0x01), "v2 unknown address family/transport 0x01"),
        # v2: the length and what it covers.
        (v2(family=0x11, body=bytes(11)), "v2 address block too short (11 bytes)"),
        (v2(family=0x21, body=bytes(35)), "v2 address block too short (35 bytes)"),
        (v2(family=0x31, body=bytes(215)), "v2 address block too short (215 bytes)"),
        (v2_tcp4(tlvs=b"\x04\x00"), "v2 truncated TLV"),
        (v2_tcp4(tlvs=tlv(0x04, b"abc")[:-1]), "v2 truncated TLV"),
        (v2(length=V2_MAX_LENGTH - 15), f"v2 header longer than {V2_MAX_LENGTH} bytes (4097)"),
        (v2(length=0xFFFF), f"v2 header longer than {V2_MAX_LENGTH} bytes (65551)"),
    ],
)
def test_parse_refuses_malformed_headers(data, why):
    with pytest.raises(ProxyProtocolError) as caught:
        parse(data)
    assert str(caught.value) == why


def test_parse_is_bounded():
    """A v1 header without CRLF is refused at 107 bytes; a v2 one as soon as its length says
    it is too long, before it arrives."""
    assert parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15)) is None
    with pytest.raises(ProxyProtocolError):
        parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 14))
    with pytest.raises(ProxyProtocolError):
        parse(v2(length=V2_MAX_LENGTH))
    assert parse(v2(length=V2_MAX_LENGTH - 16)) is None


# ---- --proxy-protocol end to end ---------------------------------------------------------------


def test_v1_header_names_the_client_then_its_lines_print(start_server, connect):
    server = start_server("--proxy-protocol", "--echo")
    assert "(echo and print, text, proxy protocol)" in server.stderr
    client = connect(server.port)
    # The header and the first line in one segment: the line is the client's first data.
    client.sendall(V1_TCP4 + b"hello\n")
    server.wait_stdout(b"[203.0.113.7:51234] hello\n")
    client.sendall(b"again\n")
    server.wait_stdout(b"[203.0.113.7:51234] again\n")
    # The echo is the client's bytes, not the header.
    assert recv_exactly(client, len(b"hello\nagain\n")) == b"hello\nagain\n"
    balancer = peer_name(client)
    client.close()
    server.wait_stderr(r"close #1 203\.0\.113\.7:51234: 12 bytes")
    assert f"open #1 203.0.113.7:51234 (via {balancer})" in server.stderr
    assert balancer not in server.stdout.decode()


def test_v2_header_in_jsonl(start_server, connect):
    server = start_server("--proxy-protocol", "--format", "jsonl")
    client = connect(server.port, socket.AF_INET6)
    client.sendall(v2_tcp6(sport=4000) + b"over v6\n")
    client.close()
    server.wait_stderr(r"close #1 \[2001:db8::7\]:4000: 8 bytes")
    events = [json.loads(line) for line in server.wait_stdout(b'"close"').splitlines()]
    assert [event["event"] for event in events] == ["open", "data", "close"]
    assert {event["peer"] for event in events} == {"[2001:db8::7]:4000"}
    assert events[1]["data"] == "over v6"


def test_header_split_over_several_sends(start_server, connect):
    server = start_server("--proxy-protocol")
    client = connect(server.port)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = v2_tcp4(src="198.51.100.9", sport=7, tlvs=tlv(0x05, b"unique-id"))
    for piece in (header[:5], header[5:14], header[14:20], header[20:] + b"fi", b"rst\n"):
        client.sendall(piece)
        time.sleep(0.02)  # separate segments (that is the test)
    server.wait_stdout(b"[198.51.100.9:7] first\n")
    # A v1 header a few bytes at a time, from another client.
    other = connect(server.port)
    other.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for at in range(0, len(V1_TCP6), 7):
        other.sendall(V1_TCP6[at : at + 7])
        time.sleep(0.01)
    other.sendall(b"second\n")
    server.wait_stdout(b"[[2001:db8::7]:4000] second\n")


def test_local_command_and_unknown_use_the_real_peer(start_server, connect):
    server = start_server("--proxy-protocol")
    health = connect(server.port)
    health.sendall(v2(command=0x20, family=0x00) + b"ping\n")
    server.wait_stdout(f"[{peer_name(health)}] ping\n".encode())
    unknown = connect(server.port)
    unknown.sendall(b"PROXY UNKNOWN\r\nhi\n")
    server.wait_stdout(f"[{peer_name(unknown)}] hi\n".encode())
    assert f"open #1 {peer_name(health)} (PROXY LOCAL)" in server.stderr
    assert f"open #2 {peer_name(unknown)} (PROXY without an address)" in server.stderr


def test_client_without_header_is_refused_others_unaffected(start_server, connect):
    server = start_server("--proxy-protocol")
    good = connect(server.port)
    good.sendall(V1_TCP4 + b"before\n")
    server.wait_stdout(b"[203.0.113.7:51234] before\n")
    plain = connect(server.port)
    plain.sendall(b"hello without a header\n")
    # Closed at once, nothing printed for it.
    assert recv_eof(plain) == b""
    line = server.wait_stderr(r"refused #2 .*")
    assert re.fullmatch(
        rf"refused #2 {re.escape(peer_name(plain))}: bad PROXY header after [\d.]+ s "
        r"\(no PROXY protocol signature\)",
        line[0],
    )
    garbage = connect(server.port)
    garbage.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nx\n")
    assert recv_eof(garbage) == b""
    server.wait_stderr(r"refused #3 .*: bad PROXY header after [\d.]+ s \(v1 bad port '99999'\)")
    good.sendall(b"after\n")
    after = V1_TCP4.replace(b"51234", b"51235")
    late = connect(server.port)
    late.sendall(after + b"late\n")
    data = server.wait_stdout(b"[203.0.113.7:51235] late\n")
    server.wait_stdout(b"[203.0.113.7:51234] after\n")
    assert b"without a header" not in data
    assert b"\nx\n" not in data
    for sock in (good, late):
        sock.close()
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    # One line per refused client, nothing else about them.
    assert len([row for row in stderr.splitlines() if "refused" in row]) == 2
    assert "served 4 connections" in stderr


def test_allow_applies_to_the_balancer(start_server, connect):
    """--allow/--deny are checked at accept, against the connecting address (the balancer),
    not the address in the header."""
    server = start_server("--proxy-protocol", "--allow", "127.0.0.1", "--deny", "203.0.113.0/24")
    client = connect(server.port)
    client.sendall(V1_TCP4 + b"through\n")
    server.wait_stdout(b"[203.0.113.7:51234] through\n")


async def test_header_timeout_and_grace_period(monkeypatch, caplog):
    """In process, with a short header timeout: a silent client is refused once it runs out;
    one still waiting for its header when the grace period ends is refused too."""
    caplog.set_level(logging.INFO, "trio_echo")
    monkeypatch.setattr(trio_echo.server.handler, "HEADER_TIMEOUT", 0.2)
    config = Config(hosts=("127.0.0.1",), port=0, proxy_protocol=True, grace=0.1, echo=True)
    with trio.fail_after(EVENT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve, config)
            silent = await trio.open_tcp_stream("127.0.0.1", handle.port)
            assert await silent.receive_some() == b""
            await silent.aclose()
            assert re.search(
                r"refused #1 .*: no PROXY header after 0\.[2-9]\d* s \(timeout 0.2 s\)", caplog.text
            )
            # Half a header, then the server shuts down: refused at the end of the grace period.
            monkeypatch.setattr(trio_echo.server.handler, "HEADER_TIMEOUT", 10.0)
            half = await trio.open_tcp_stream("127.0.0.1", handle.port)
            await half.send_all(V1_TCP4[:10])
            echoed = await trio.open_tcp_stream("127.0.0.1", handle.port)
            await echoed.send_all(V1_TCP4 + b"abc")
            assert await echoed.receive_some() == b"abc"
            handle.shutdown()
            await handle.stopped.wait()
            assert await half.receive_some() == b""
            await half.aclose()
            await echoed.aclose()
    assert re.search(
        r"refused #2 .*: no PROXY header after [\d.]+ s \(grace period over\)", caplog.text
    )
    assert handle.stats.active == 0


# ---- inherited listening sockets: --fd, LISTEN_FDS ---------------------------------------------


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    """A factory of sockets for the child to inherit, closed at teardown."""
    with contextlib.ExitStack() as cleanup:

        def make(
            family: socket.AddressFamily = socket.AF_INET,
            kind: socket.SocketKind = socket.SOCK_STREAM,
            *,
            listen: bool = True,
        ) -> socket.socket:
            sock = cleanup.enter_context(socket.socket(family, kind))
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
            if listen:
                sock.listen()
            return sock

        yield make


def listening_addresses(server: ServerProcess) -> str:
    return server.wait_stderr(LISTENING_RE, STARTUP_TIMEOUT)["addresses"]


def test_fd_serves_an_inherited_socket_and_closes_it(spawn, sockets, connect):
    listener = sockets()
    fd, port = listener.fileno(), listener.getsockname()[1]
    server = spawn([*SERVER_COMMAND, "--fd", str(fd)], pass_fds=[fd])
    assert listening_addresses(server) == f"127.0.0.1:{port}"
    # Only the server holds it now: its closing is the socket's closing.
    listener.close()
    client = connect(port)
    client.sendall(b"inherited\n")
    server.wait_stdout(f"[{peer_name(client)}] inherited\n".encode())
    client.close()
    assert server.stop(signal.SIGTERM) == 0
    assert_refused(port, socket.AF_INET)
    assert_no_traceback(server.all_stderr())


def test_listen_fds_from_systemd(spawn, sockets, connect):
    """systemd's protocol: descriptors 3, 4, ... and LISTEN_PID naming the server's own pid
    (set by a shell that then execs the server, keeping its pid)."""
    v4, v6 = sockets(socket.AF_INET), sockets(socket.AF_INET6)
    env = {**os.environ, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    inherited = (v4.fileno(), v6.fileno())
    # dash cannot redirect from descriptors above 9: a Python prelude puts them at 3 and 4.
    prelude = (
        "import fcntl, os, sys\n"
        # Copies above 4 first, so that neither is overwritten by the other.
        f"fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in {inherited}]\n"
        "for target, fd in enumerate(fds, 3): os.dup2(fd, target)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    command = [SERVER_COMMAND[0], "-c", prelude, *SERVER_COMMAND[1:]]
    server = spawn(command, [v4.fileno(), v6.fileno()], env)
    addresses = listening_addresses(server)
    ports = v4.getsockname()[1], v6.getsockname()[1]
    assert addresses == f"127.0.0.1:{ports[0]}, [::1]:{ports[1]}"
    v4.close()
    v6.close()
    for family, port in zip((socket.AF_INET, socket.AF_INET6), ports, strict=True):
        client = connect(port, family)
        client.sendall(b"activated\n")
        server.wait_stdout(f"[{peer_name(client)}] activated\n".encode())
        client.close()
    assert server.stop() == 0
    assert_refused(ports[0], socket.AF_INET)


def test_listen_fds_for_another_pid_is_ignored(spawn, sockets):
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    server = spawn([*SERVER_COMMAND, "--host", "127.0.0.1", "--port", "0"], [], env)
    assert listening_addresses(server).startswith("127.0.0.1:")
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
    other = spawn([*SERVER_COMMAND, "--port", "0"], [], env)
    assert "127.0.0.1:" in listening_addresses(other)


def run_with_fds(
    args: Sequence[str], pass_fds: Sequence[int] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER_COMMAND, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        pass_fds=tuple(pass_fds),
        check=False,
    )


@pytest.mark.parametrize(
    ("what", "problem"),
    [
        ("not-listening", "a TCP socket that is not listening"),
        ("udp", "not a stream (TCP) socket"),
        ("unix", "not an IPv4 or IPv6 socket"),
        ("pipe", "not a socket"),
        ("closed", "not an open file descriptor"),
    ],
)
def test_bad_fd_is_one_line_and_exit_2(sockets, what, problem):
    with contextlib.ExitStack() as cleanup:
        if what == "not-listening":
            fd = sockets(listen=False).fileno()
        elif what == "udp":
            fd = sockets(kind=socket.SOCK_DGRAM, listen=False).fileno()
        elif what == "unix":
            fd = cleanup.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)).fileno()
        elif what == "pipe":
            read, write = os.pipe()
            cleanup.callback(os.close, read)
            cleanup.callback(os.close, write)
            fd = read
        else:
            fd = 1000
        result = run_with_fds(["--fd", str(fd)], [] if what == "closed" else [fd])
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"trio-echo: error: argument --fd: file descriptor {fd} is {problem} (see --help)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fd", "x"], "argument --fd: expected a file descriptor number, got 'x'"),
        (["--fd", "-1"], "argument --fd: must be at least 0, got '-1'"),
        (["--fd", "3", "--port", "1"], "--fd conflicts with --port: serve either one or the other"),
        (
            ["--fd", "3", "--host", "::1"],
            "--fd conflicts with --host: serve either one or the other",
        ),
        (["--model", "threads", "--fd", "3"], "--model threads does not support --fd"),
        (["--model", "sync", "--proxy-protocol"], "--model sync does not support --proxy-protocol"),
        (["--proxy-protocol", "2"], "unrecognized arguments: 2"),
    ],
)
def test_scaleout_usage_errors(args, message):
    result = run_with_fds(args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"trio-echo: error: {message} (see --help)"]


# ---- --proxy-protocol with TLS, and the replay of the bytes after the header -------------------


async def test_proxy_header_then_tls(tmp_path, caplog):
    """The header comes in the clear, then the TLS handshake; the open line has both."""
    trustme = pytest.importorskip("trustme")
    caplog.set_level(logging.INFO, "trio_echo")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    config = Config(
        hosts=("127.0.0.1",),
        port=0,
        echo=True,
        proxy_protocol=True,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    with trio.fail_after(EVENT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve, config)
            tcp = await trio.open_tcp_stream("127.0.0.1", handle.port)
            await tcp.send_all(V1_TCP4)
            client = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
            await client.send_all(b"secret\n")
            assert await client.receive_some() == b"secret\n"
            await client.aclose()
            handle.shutdown()
    assert re.search(
        r"open #1 203\.0\.113\.7:51234 \(TLSv1\.[23], via 127\.0\.0\.1:\d+\)", caplog.text
    )


async def test_replayed_bytes_come_first():
    """What arrived with the header is received first, in pieces of at most max_bytes."""
    left, right = trio.testing.memory_stream_pair()
    prefixed = PrefixedStream(right, b"abcdefxyz")
    await left.send_all(b"later")
    assert await prefixed.receive_some(4) == b"abcd"
    assert await prefixed.receive_some(2) == b"ef"
    assert await prefixed.receive_some() == b"xyz"
    assert await prefixed.receive_some(10) == b"later"
    await prefixed.send_all(b"back")
    assert await left.receive_some() == b"back"
    await prefixed.aclose()
