"""``--udp``: the RFC 862 echo / RFC 863 discard service (issue 14).

End to end as a user runs it -- ``python -m trio_echo --udp`` as a subprocess, Python UDP
clients and the real ones (``nc -u``, ``socat``, ``logger --udp``, a statsd-style sender) --
with byte-exact accounting: every datagram sent is one record printed, or counted as dropped
by the kernel in the summary line.  The formatting and the drop counter are tested in-process.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import trio
import trio.testing
from conftest import (
    EVENT_TIMEOUT,
    LISTENING_RE,
    SERVER_COMMAND,
    _PipeReader,
    assert_no_traceback,
    rss_bytes,
    run_cli,
)
from test_workers import needs_balancing, worker_pids
from test_workers_signals import no_reuseport_env  # noqa: F401 (a fixture)

from trio_echo.cli.options import parse_args
from trio_echo.cli.options_udp import NOT_WITH_UDP
from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.net import datagram as net_datagram
from trio_echo.net.bind import ListenError
from trio_echo.output.format import OutputFormat
from trio_echo.output.queue import open_output_queue
from trio_echo.server.datagram import _Throttle, serve_datagrams
from trio_echo.stats import ServerStats

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}

# The summary line at exit, e.g. "NOTICE stopped: received 3 datagrams, 21 bytes, 0 dropped by
# the kernel (receive buffer full), up 0.4 s".
SUMMARY_RE = re.compile(r"NOTICE stopped: received (?P<datagrams>\d+) datagrams?, (?P<bytes>\d+) ")
DROPS_RE = re.compile(r"(?P<drops>\d+) dropped by the kernel")


class Sender:
    """A UDP client bound to a loopback address (so that its name is the one the server prints)."""

    def __init__(self, port: int, family: socket.AddressFamily = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK[family], 0))
        self.sock.settimeout(EVENT_TIMEOUT)
        self.server = (LOOPBACK[family], port)
        host, sport = self.sock.getsockname()[:2]
        self.name = f"[{host}]:{sport}" if family == socket.AF_INET6 else f"{host}:{sport}"

    def send(self, *datagrams: bytes) -> None:
        for datagram in datagrams:
            self.sock.sendto(datagram, self.server)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def senders():
    made: list[Sender] = []

    def make(port: int, family: socket.AddressFamily = socket.AF_INET) -> Sender:
        made.append(Sender(port, family))
        return made[-1]

    yield make
    for sender in made:
        sender.close()


def summary_of(stderr: str) -> re.Match[str]:
    match = SUMMARY_RE.search(stderr)
    assert match, stderr
    return match


def kernel_drops(stderr: str) -> int:
    """The drops in the summary (Linux says; elsewhere there is no count, and none is made up)."""
    match = DROPS_RE.search(stderr.splitlines()[-1])
    if sys.platform.startswith("linux"):
        assert match, stderr
    return int(match["drops"]) if match else 0


# ---- what a user sees ----------------------------------------------------------------------------


def test_one_text_record_per_datagram_ipv4_and_ipv6(start_server, senders):
    server = start_server("--udp")
    assert server.port != 0  # --port 0: the line names the port picked
    assert {host for host, _ in server.addresses} == {"127.0.0.1", "::1"}
    assert server.wait_stderr(LISTENING_RE)["mode"] == "udp, print, text"
    v4, v6 = senders(server.port), senders(server.port, socket.AF_INET6)
    v4.send(b"no newline", b"with newline\n", b"", b"\x1b[2Jtwo\nlines")
    v6.send(b"from ipv6")
    expected = [
        f"[{v4.name}] no newline\n",
        f"[{v4.name}] with newline\n",
        f"[{v4.name}] \n",
        f"[{v4.name}] \\x1b[2Jtwo\n[{v4.name}] lines\n",
        f"[{v6.name}] from ipv6\n",
    ]
    out = server.wait_stdout(lambda data: data.count(b"\n") >= 6).decode()
    for record in expected:
        assert record in out
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert summary_of(stderr)["datagrams"] == "5"
    assert f"received 5 datagrams, {10 + 13 + 0 + 13 + 9} bytes" in stderr
    assert kernel_drops(stderr) == 0
    assert "open #" not in stderr  # no connection lines for datagrams
    assert_no_traceback(stderr)


def test_jsonl_numbers_the_datagrams_and_keeps_every_byte(start_server, senders):
    server = start_server("--udp", "--format", "jsonl")
    sender = senders(server.port)
    datagrams = [b"a:1|c", b"b:2|g\nc:3|ms\n", "é\r\n".encode(), b"\xff\xfe"]
    sender.send(*datagrams)
    server.wait_stdout(lambda data: data.count(b"\n") >= 5)
    assert server.stop() == 0
    records = [json.loads(line) for line in server.all_stdout().splitlines()]
    assert {r["event"] for r in records} == {"data"}  # no open/close events
    assert {r["peer"] for r in records} == {sender.name}
    rebuilt: dict[int, bytes] = {}
    for r in records:
        data = base64.b64decode(r["data_b64"]) if "data_b64" in r else r["data"].encode()
        rebuilt[r["conn"]] = rebuilt.get(r["conn"], b"") + data + r["eol"].encode()
    assert [rebuilt[n] for n in sorted(rebuilt)] == datagrams


def test_raw_prints_the_bytes_exactly(start_server, senders):
    server = start_server("--udp", "--raw")
    sender = senders(server.port)
    sender.send(b"one", b"\x00\x01two\n", b"three")
    server.wait_stdout(b"three")
    assert server.stop() == 0
    assert server.all_stdout() == b"one\x00\x01two\nthree"


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_echo_sends_each_datagram_back_to_its_sender(start_server, senders, family):
    server = start_server("--udp", "--echo", "--quiet")
    assert server.wait_stderr(LISTENING_RE)["mode"] == "udp, echo, quiet"
    sender = senders(server.port, family)
    for payload in (b"ping", b"", b"x" * 60000):
        sender.send(payload)
        reply, source = sender.sock.recvfrom(65536)
        assert reply == payload
        assert source[:2] == sender.server
    assert server.stop() == 0
    assert server.all_stdout() == b""
    assert "received 3 datagrams, 60004 bytes" in server.all_stderr()


def test_allow_and_deny_drop_refused_senders_and_count_them(start_server, senders):
    server = start_server("--udp", "--deny", "127.0.0.0/8", "--format", "jsonl")
    refused, allowed = senders(server.port), senders(server.port, socket.AF_INET6)
    refused.send(b"refused 1", b"refused 2")
    allowed.send(b"allowed")
    server.wait_stdout(b"allowed")
    server.wait_stderr(r"INFO refused a datagram from 127\.0\.0\.1:\d+ \(--deny 127\.0\.0\.0/8\)")
    assert server.stop() == 0
    assert b"refused" not in server.all_stdout()
    stderr = server.all_stderr()
    assert "received 1 datagram, 7 bytes, 2 refused (--allow/--deny)" in stderr
    # Throttled: one line for a burst, the rest counted in the summary.
    assert stderr.count("refused a datagram") == 1


def test_graceful_stop_prints_every_datagram_it_received(start_server, senders):
    """SIGTERM right after a burst: whatever the kernel had queued is still printed, and every
    datagram sent is a record or a counted drop; exit 0."""
    server = start_server("--udp")
    sender = senders(server.port)
    count = 500
    backlog = backlog_drops()
    sender.send(*(b"datagram %d" % n for n in range(count)))
    backlog = backlog_drops() - backlog
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert "SIGTERM: stopped receiving" in stderr
    printed = server.all_stdout().splitlines()
    assert printed == [b"[%s] datagram %d" % (sender.name.encode(), n) for n in _numbers(printed)]
    assert len(set(printed)) == len(printed)
    assert_accounted(len(printed), kernel_drops(stderr), count, backlog)
    assert summary_of(stderr)["datagrams"] == str(len(printed))
    assert_no_traceback(stderr)


def _numbers(lines: list[bytes]) -> list[int]:
    return [int(line.rsplit(b" ", 1)[1]) for line in lines]


def start_reading(server) -> None:
    """Start reading the stdout of a server started with ``read_stdout=False`` (left unread
    until now): from here on, ``server.wait_stdout`` and ``server.all_stdout`` work."""
    assert server.proc.stdout is not None
    server._stdout = _PipeReader(server.proc.stdout, "server stdout")


def backlog_drops() -> int:
    """Packets this machine dropped before any socket saw them (the per-CPU backlog of
    ``/proc/net/softnet_stat``, second column): loopback traffic deferred by a busy CPU can
    overflow it, and those drops are in no socket's count."""
    try:
        with open("/proc/net/softnet_stat") as stat:
            return sum(int(row.split()[1], 16) for row in stat)
    except OSError:
        return 0


def assert_accounted(printed: int, drops: int, sent: int, backlog: int) -> None:
    """Every datagram sent is a record printed or a drop the server counted -- or, only if the
    machine's backlog dropped some meanwhile, one of those."""
    assert printed + drops <= sent <= printed + drops + backlog, (printed, drops, sent, backlog)


def test_stalled_stdout_keeps_memory_bounded_and_the_kernel_drops_are_counted(start_server):
    """stdout unread: the server stops receiving once its queue is full, the kernel drops the
    rest of a 60 MB burst, and RSS stays far below what was sent.  Then stdout is read: the
    records printed and the drops in the summary add up to every datagram sent."""
    server = start_server("--udp", "--raw", read_stdout=False)
    before = rss_bytes(server.pid)
    size, count = 1000, 60_000
    backlog = backlog_drops()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(count):
            sender.sendto(b"%-*d\n" % (size - 1, n), ("127.0.0.1", server.port))
    backlog = backlog_drops() - backlog
    growth = rss_bytes(server.pid) - before
    # The output queue's 8 MiB budget, plus the allocator's slack; 60 MB were sent.
    assert growth < 32 * 1024 * 1024, growth
    start_reading(server)
    assert server.stop(timeout=30) == 0
    out = server.all_stdout(timeout=30)
    stderr = server.all_stderr()
    assert len(out) % size == 0
    printed = len(out) // size
    drops = kernel_drops(stderr)
    if sys.platform.startswith("linux"):
        assert drops > 0
    assert_accounted(printed, drops, count, backlog)
    assert summary_of(stderr)["datagrams"] == str(printed)


def test_jsonl_says_when_the_kernel_dropped_datagrams(start_server):
    """A burst while stdout is unread; then, once it is read, the next datagram the kernel
    queues tells how many it dropped before (SO_RXQ_OVFL): a warning, and a jsonl record."""
    if net_datagram.SO_RXQ_OVFL is None:
        pytest.skip("the kernel does not count drops here (SO_RXQ_OVFL: Linux)")
    server = start_server("--udp", "--format", "jsonl", read_stdout=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(30_000):
            sender.sendto(b"%-999d" % n, ("127.0.0.1", server.port))
        start_reading(server)
        # Probes until one gets through (while the receive buffer is still full, they are
        # dropped too).
        deadline = time.monotonic() + EVENT_TIMEOUT
        while b'"probe"' not in server.stdout:
            assert time.monotonic() < deadline, server.stderr
            sender.sendto(b"probe", ("127.0.0.1", server.port))
            time.sleep(0.01)
    server.wait_stderr("WARNING the kernel dropped datagrams on 127.0.0.1:")
    assert server.stop(timeout=30) == 0
    records = [json.loads(line) for line in server.all_stdout(timeout=30).splitlines()]
    dropped = [r for r in records if r["event"] == "dropped"]
    assert dropped
    assert sum(r["datagrams"] for r in dropped) == dropped[-1]["total"] > 0
    assert kernel_drops(server.all_stderr()) >= dropped[-1]["total"]


def test_a_second_signal_forces_the_exit(start_server):
    server = start_server("--udp", read_stdout=False)
    sender = Sender(server.port)
    try:
        for n in range(20_000):
            sender.send(b"%-999d" % n)  # the queue fills: stdout is not read
    finally:
        sender.close()
    server.send_signal(signal.SIGTERM)
    server.wait_stderr("SIGTERM: stopped receiving")
    assert server.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert_no_traceback(server.all_stderr())


def test_a_port_in_use_is_one_line(start_server):
    server = start_server("--udp", "--host", "127.0.0.1")
    result = run_cli("--udp", "--host", "127.0.0.1", "--port", str(server.port))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1 UDP port {server.port}: address already in use" in (
        result.stderr
    )


# ---- bad input -----------------------------------------------------------------------------------


def test_udp_with_tls_cert_is_one_line_and_exit_2(tmp_path):
    cert = tmp_path / "cert.pem"  # never created: refused before it is looked at
    result = run_cli("--udp", "--tls-cert", str(cert))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--udp with --tls-cert: TLS needs a stream" in result.stderr
    assert not cert.exists()


FLAG_VALUES = {
    "--tls-cert": "cert.pem",
    "--tls-key": "key.pem",
    "--tls-handshake-timeout": "3",
    "--max-connections": "10",
    "--idle-timeout": "5",
    "--max-bytes": "100",
    "--fd": "3",
    "--keepalive": "5",
}


@pytest.mark.parametrize("flag", sorted(NOT_WITH_UDP))
def test_flags_of_a_connection_are_refused_with_udp(flag, capsys):
    args = ["--udp", flag] + ([FLAG_VALUES[flag]] if flag in FLAG_VALUES else [])
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--udp with {flag}: " in err


@pytest.mark.parametrize("model", ["asyncio", "threads", "sync", "trio-stock"])
def test_other_models_refuse_udp(model, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--model", model, "--udp"])
    assert exit_.value.code == 2
    assert f"--model {model} does not support --udp" in capsys.readouterr().err


def test_the_flags_that_apply_to_udp_are_accepted():
    config, model, _ = parse_args(
        ["--udp", "--echo", "--max-line", "100", "--grace", "1", "--allow", "10.0.0.0/8"]
    )
    assert (config.udp, config.echo, config.max_line, model) == (True, True, 100, "trio")
    assert config.describe_mode() == "udp, echo and print, text"


# ---- real clients ----------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(argv: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=data, capture_output=True, timeout=EVENT_TIMEOUT, check=False)


def test_nc_u_prints_and_gets_its_echo(start_server):
    nc = _tool("nc")
    server = start_server("--udp", "--echo")
    # OpenBSD nc: -w1 ends it a second after stdin's end; it prints what comes back.
    result = _run([nc, "-u", "-w1", "127.0.0.1", str(server.port)], b"hello from nc\n")
    assert result.stdout == b"hello from nc\n"
    server.wait_stdout(re.compile(rb"\[127\.0\.0\.1:\d+\] hello from nc\n").search)
    # IPv6. Not -w0: nc may then poll stdin once, find it not yet written, and send nothing.
    result = _run([nc, "-u", "-w1", "::1", str(server.port)], b"v6\n")
    assert result.stdout == b"v6\n"
    server.wait_stdout(re.compile(rb"\[\[::1\]:\d+\] v6\n").search)
    assert server.stop() == 0


def test_socat_sends_a_datagram_per_write(start_server):
    socat = _tool("socat")
    server = start_server("--udp", "--echo")
    result = _run([socat, "-t", "0.2", "-", f"UDP:127.0.0.1:{server.port}"], b"via socat\n")
    assert result.stdout == b"via socat\n"
    server.wait_stdout(b"] via socat\n")
    assert server.stop() == 0


def test_logger_udp_is_a_syslog_client(start_server):
    logger = _tool("logger")
    server = start_server("--udp")
    for protocol in ("--rfc3164", "--rfc5424"):
        result = _run(
            [
                logger,
                "--udp",
                "--server",
                "127.0.0.1",
                "--port",
                str(server.port),
                protocol,
                "--tag",
                "trio-echo-test",
                f"hello syslog {protocol}",
            ]
        )
        assert result.returncode == 0, result.stderr
    out = server.wait_stdout(lambda data: data.count(b"hello syslog") == 2)
    # <PRI>... as syslog puts it: user.notice is 13.
    assert re.search(rb"\] <13>[A-Z][a-z]{2} .* trio-echo-test.*: hello syslog --rfc3164\n", out)
    assert re.search(rb"\] <13>1 \S+ \S+ trio-echo-test .* hello syslog --rfc5424\n", out)
    assert server.stop() == 0


def test_a_statsd_sender(start_server):
    """statsd's wire format: metrics in one datagram, separated by newlines, without a final one."""
    server = start_server("--udp", "--format", "jsonl")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.sendto(b"api.requests:1|c\napi.latency:320|ms|@0.1", ("127.0.0.1", server.port))
        statsd.sendto(b"queue.depth:17|g", ("127.0.0.1", server.port))
    server.wait_stdout(b"queue.depth")
    assert server.stop() == 0
    records = [json.loads(line) for line in server.all_stdout().splitlines()]
    assert [(r["conn"], r["data"], r["eol"]) for r in records] == [
        (1, "api.requests:1|c", "\n"),
        (1, "api.latency:320|ms|@0.1", ""),
        (2, "queue.depth:17|g", ""),
    ]


# ---- --workers -----------------------------------------------------------------------------------


def _send_from_many(port: int, tag: bytes, count: int) -> None:
    """``count`` datagrams, each from a new socket (a new source port: the kernel's hash
    spreads them over the workers' sockets)."""
    for n in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"%s %d" % (tag, n), ("127.0.0.1", port))


@needs_balancing
def test_workers_spread_datagrams_with_reuseport(start_server):
    server = start_server("--udp", "--workers", "2", "--format", "jsonl")
    assert server.wait_stderr(LISTENING_RE)["mode"] == "udp, print, jsonl, 2 workers"
    worker_pids(server)
    _send_from_many(server.port, b"spread", 40)
    server.wait_stdout(lambda data: data.count(b'"spread ') == 40)
    assert server.stop() == 0
    records = [json.loads(line) for line in server.all_stdout().splitlines()]
    assert {r["worker"] for r in records} == {1, 2}
    stderr = server.all_stderr()
    assert "NOTICE stopped: received 40 datagrams, " in stderr
    assert kernel_drops(stderr) == 0
    assert_no_traceback(stderr)


def test_workers_share_one_socket_where_reuseport_is_missing(spawn, no_reuseport_env):  # noqa: F811
    server = spawn(
        [*SERVER_COMMAND, "--udp", "--workers", "2", "--port", "0", "--log-level", "debug"],
        (),
        env=no_reuseport_env,
    )
    server.wait_listening()
    assert "DEBUG the workers share one set of listening sockets" in server.stderr
    worker_pids(server)
    _send_from_many(server.port, b"shared", 20)
    server.wait_stdout(lambda data: data.count(b"] shared ") == 20)
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert "NOTICE stopped: received 20 datagrams, " in stderr
    assert_no_traceback(stderr)


# ---- in-process --------------------------------------------------------------------------------


async def test_serve_datagrams_in_process_records_echo_and_shutdown():
    queue, reader = open_output_queue()
    config = Config(hosts=("127.0.0.1",), port=0, udp=True, echo=True)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_datagrams, config, queue)
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with client:
            await client.bind(("127.0.0.1", 0))
            await client.sendto(b"in process", ("127.0.0.1", handle.port))
            assert await client.recv(100) == b"in process"
            host, port = client.getsockname()
            name = f"{host}:{port}"
        item = await reader.__anext__()
        assert item == f"[{name}] in process\n".encode()
        handle.shutdown()
        await handle.stopped.wait()
    assert handle.stats.datagrams == 1
    assert handle.stats.bytes_received == 10


def test_empty_datagram_formats_as_an_empty_record():
    for fmt, expected in [
        (OutputFormat.TEXT, b"[127.0.0.1:9] \n"),
        (OutputFormat.RAW, b""),
    ]:
        config = Config(output_format=fmt, udp=True)
        conn = Connection.datagram(config, ServerStats(), ("127.0.0.1", 9), 1, printing=True)
        record = conn.feed(b"")
        if conn.assembler is not None:
            record += conn.assembler.formatter.piece(b"", b"", False)
        assert record == expected


def test_the_drop_count_is_read_from_ancillary_data():
    if net_datagram.SO_RXQ_OVFL is None:
        pytest.skip("no SO_RXQ_OVFL here")
    ancillary = [(socket.SOL_SOCKET, net_datagram.SO_RXQ_OVFL, (1234).to_bytes(4, sys.byteorder))]
    assert net_datagram.drops_in(ancillary) == 1234
    assert net_datagram.drops_in([]) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert net_datagram.count_drops(sock)
        assert net_datagram.drops_now(sock) in (0, None)


async def test_the_throttle_allows_one_line_per_interval(autojump_clock):
    throttle = _Throttle(1.0)
    assert throttle.due() == 1
    assert [throttle.due() for _ in range(5)] == [0] * 5
    await trio.sleep(1.0)
    assert throttle.due() == 6


def test_udp_sockets_are_not_shared_by_reuseaddr():
    """Two servers on one UDP port: the second is refused (no SO_REUSEADDR, whose UDP meaning
    would let it take the first one's datagrams)."""
    (first,) = net_datagram.bind_datagram_sockets(("127.0.0.1",), 0)
    with first, pytest.raises(ListenError, match=r"UDP port \d+: address already in use"):
        net_datagram.bind_datagram_sockets(("127.0.0.1",), first.getsockname()[1])


def test_workers_drop_counts_add_up_per_socket():
    """The supervisor sums its workers' kernel drops when each has sockets of its own, but a
    shared socket's count is the same one seen by every worker."""
    reports = [
        {"datagrams": 4534, "refused": 1, "kernel_drops": 13466},
        {"datagrams": 7570, "refused": 0, "kernel_drops": 14430},
    ]
    own, shared = ServerStats(udp=True), ServerStats(udp=True)
    for report in reports:
        own.add_datagrams(report, shared=False)
        shared.add_datagrams(report, shared=True)
    assert (own.datagrams, own.refused, own.kernel_drops) == (12104, 1, 27896)
    assert shared.kernel_drops == 14430
    unknown = ServerStats(udp=True)
    unknown.add_datagrams({"datagrams": 3, "kernel_drops": None}, shared=False)
    assert unknown.kernel_drops is None
    assert "dropped" not in unknown.summary()
    assert unknown.summary().startswith("received 3 datagrams, 0 bytes, up ")
