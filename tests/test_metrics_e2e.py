"""``--metrics``, ``--stats-interval`` and SIGUSR1 as a user meets them: ``python -m trio_echo``
as a subprocess, real clients on loopback, the page fetched over HTTP and read with
``prometheus_client``'s parser."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import (
    EVENT_TIMEOUT,
    assert_no_traceback,
    recv_eof,
    recv_exactly,
    run_cli,
)

parser = pytest.importorskip("prometheus_client.parser")

METRICS_RE = r"metrics at http://(?P<host>[^/]+)/metrics"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_url(server) -> str:
    return f"http://{server.wait_stderr(METRICS_RE)['host']}/metrics"


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(url: str, check, timeout: float = EVENT_TIMEOUT) -> Samples:
    """Scrape until ``check(samples)`` holds (the server counts a close a moment after the
    client sees it), or fail with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            assert check(samples), samples
            return samples
        time.sleep(0.02)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_known_traffic_is_counted_exactly(start_server):
    server = start_server("--echo", "--metrics", "127.0.0.1:0", "--allow", "127.0.0.1/32")
    url = metrics_url(server)
    payloads = [b"one\n", b"two lines\nhere\n", b"x" * 10000 + b"\n"]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload
    # Refused by --allow: it comes over IPv6.
    with socket.create_connection(("::1", server.port)) as refused:
        assert recv_eof(refused) == b""
    total = sum(map(len, payloads))

    def settled(samples: Samples) -> bool:
        return value(samples, "trio_echo_connections_closed_total", reason="client") == 3

    samples = scrape_until(url, settled)
    assert value(samples, "trio_echo_connections_accepted_total") == 3
    assert value(samples, "trio_echo_connections_active") == 0
    assert value(samples, "trio_echo_connections_refused_total", reason="deny") == 1
    assert value(samples, "trio_echo_received_bytes_total") == total
    assert value(samples, "trio_echo_echoed_bytes_total") == total
    assert value(samples, "trio_echo_printed_lines_total") == 4
    server.wait_stdout(b"here\n")
    samples = scrape_until(
        url, lambda s: value(s, "trio_echo_printed_bytes_total") == len(server.stdout)
    )
    assert value(samples, "trio_echo_connection_duration_seconds_count") == 3
    assert value(samples, "trio_echo_stdout_blocked_handlers") == 0
    assert abs(value(samples, "process_start_time_seconds") - time.time()) < 60
    assert server.stop() == 0
    assert_no_traceback(server.all_stderr())


def test_a_stalled_stdout_shows_as_blocked_handlers_and_in_the_status_dump(start_server):
    server = start_server("--metrics", "0", read_stdout=False)
    url = metrics_url(server)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.setblocking(False)
    line = b"y" * 1023 + b"\n"
    deadline = time.monotonic() + EVENT_TIMEOUT
    # Nobody reads the server's stdout: its pipe and then its 8 MiB queue fill, and the
    # handler waits for room.
    samples = scrape(url)
    while value(samples, "trio_echo_stdout_blocked_handlers") < 1:
        assert time.monotonic() < deadline, samples
        try:
            for _ in range(256):
                client.send(line)
        except BlockingIOError:
            time.sleep(0.01)
        samples = scrape(url)
    assert value(samples, "trio_echo_output_queue_bytes") > 0
    server.send_signal(signal.SIGUSR1)
    match = server.wait_stderr(r"status: #1 127\.0\.0\.1:\d+: open .* blocked on stdout for")
    assert "received, idle" in match.string
    server.wait_stderr(r"status: end \(1 connection\)")
    blocked = value(scrape(url), "trio_echo_stdout_blocked_seconds_total")
    time.sleep(0.3)
    assert value(scrape(url), "trio_echo_stdout_blocked_seconds_total") == blocked  # counted
    client.close()
    # Stop, and read stdout until the server has written everything and exited.
    assert server.proc.stdout is not None
    server.send_signal(signal.SIGTERM)
    while server.proc.stdout.read(1 << 20):
        pass
    assert server.wait() == 0


def test_sigusr1_dumps_every_live_connection_and_keeps_serving(start_server):
    server = start_server()
    quiet = socket.create_connection(("127.0.0.1", server.port))
    talker = socket.create_connection(("127.0.0.1", server.port))
    talker.sendall(b"hello\n")
    server.wait_stdout(b"hello\n")
    server.send_signal(signal.SIGUSR1)
    end = server.wait_stderr(r"status: end \(2 connections\)")
    lines = [ln for ln in server.stderr.splitlines() if "status:" in ln]
    assert "status: up " in lines[0]
    assert "2 connected, 2 accepted, 0 refused" in lines[0]
    # One line each (in the order Trio started their handlers: not necessarily connect order).
    dumped = sorted(lines[1:3], key=lambda line: "6 B" in line)
    assert re.search(r"status: #\d 127\.0\.0\.1:\d+: open \d+\.\d s, 0 B received, idle", dumped[0])
    assert re.search(r"status: #\d 127\.0\.0\.1:\d+: open .*, 6 B received, idle", dumped[1])
    assert end is not None
    # Still serving: SIGUSR1 is not a stop.
    talker.sendall(b"more\n")
    server.wait_stdout(b"more\n")
    quiet.close()
    talker.close()
    assert server.stop() == 0
    assert_no_traceback(server.all_stderr())


def test_stats_interval_prints_rates(start_server):
    server = start_server("--stats-interval", "0.2", "--quiet")
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"z" * 100_000)
        server.wait_stderr(r"stats: \d+ connected, \+1 accepted \([\d.]+/s\), in [\d.]+ [kM]B/s")
    server.wait_stderr(r"stats: 0 connected, \+0 accepted")
    assert server.stop() == 0


def test_udp_counts_datagrams(start_server):
    server = start_server("--udp", "--metrics", "0")
    url = metrics_url(server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(5):
            sender.sendto(b"datagram %d\n" % n, ("127.0.0.1", server.port))
    samples = scrape_until(url, lambda s: value(s, "trio_echo_datagrams_received_total") == 5)
    assert value(samples, "trio_echo_received_bytes_total") == 5 * len(b"datagram 0\n")
    assert ("trio_echo_connections_accepted_total", ()) not in samples
    assert server.stop() == 0


def test_metrics_on_a_port_in_use_is_one_line_and_status_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "trio_echo", "--port", "0", "--metrics", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert str(port) in errors[0]
    assert_no_traceback(result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "localhost"], "--metrics: expected HOST:PORT"),
        (["--metrics", "127.0.0.1:99999"], "--metrics: the port must be 0-65535"),
        (["--metrics", "::1:9100"], "an IPv6 address goes in brackets"),
        (["--stats-interval", "0"], "--stats-interval: must be greater than 0"),
        (["--stats-interval", "soon"], "--stats-interval: expected a number of seconds"),
        (["--model", "asyncio", "--metrics", "0"], "--model asyncio does not support --metrics"),
        (["--model", "threads", "--stats-interval", "1"], "does not support --stats-interval"),
    ],
)
def test_bad_values_are_one_line_and_status_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # usage line + error line
    assert_no_traceback(result.stderr)


def test_the_endpoint_stops_with_the_server(start_server):
    server = start_server("--metrics", "0", "--grace", "2")
    url = metrics_url(server)
    client = socket.create_connection(("127.0.0.1", server.port))
    server.send_signal(signal.SIGTERM)
    server.wait_stderr("stopped accepting")
    # During the grace period the page still answers, with the client still counted.
    samples = scrape(url)
    assert value(samples, "trio_echo_connections_active") == 1
    client.close()
    assert server.wait() == 0
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=EVENT_TIMEOUT).close()


@pytest.mark.parametrize("model", ["trio", "trio-stock", "sync", "threads", "asyncio"])
def test_sigusr1_never_kills_a_server(start_server, model):
    """The trio app dumps its status; the other models have no dump and ignore the signal
    (its default action would kill them)."""
    server = start_server("--model", model)
    server.send_signal(signal.SIGUSR1)
    if model.startswith("trio"):
        server.wait_stderr(r"status: end \(0 connections\)")
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"still here\n")
        server.wait_stdout(b"still here\n")
    assert server.proc.poll() is None
    assert server.stop() == 0
    assert ("status:" in server.all_stderr()) == model.startswith("trio")


def test_tls_handshakes_and_refusals_are_counted(start_server, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    server = start_server(
        "--tls-cert", str(cert), "--tls-key", str(key), "--metrics", "0", "--max-bytes", "4"
    )
    url = metrics_url(server)
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def tls_client() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", server.port))
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    with tls_client() as client:
        client.sendall(b"ok\n")
        server.wait_stdout(b"ok\n")
    with tls_client() as client:
        client.sendall(b"too long\n")  # more than --max-bytes 4
        server.wait_stderr("sent more than --max-bytes 4")
    with socket.create_connection(("127.0.0.1", server.port)) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
        assert recv_eof(plain) is not None
    samples = scrape_until(
        url, lambda s: value(s, "trio_echo_connections_refused_total", reason="tls") == 1
    )
    assert value(samples, "trio_echo_tls_handshake_seconds_count") == 2
    assert 0 < value(samples, "trio_echo_tls_handshake_seconds_sum") < 5
    assert value(samples, "trio_echo_connections_refused_total", reason="max_bytes") == 1
    assert value(samples, "trio_echo_connections_closed_total", reason="max_bytes") == 1
    assert server.stop() == 0


def test_a_client_without_a_proxy_header_is_a_refusal(start_server):
    server = start_server("--proxy-protocol", "--metrics", "0")
    url = metrics_url(server)
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"no header here\r\n")
        assert recv_eof(client) == b""
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8888\r\nhello\n")
        server.wait_stdout(b"[203.0.113.7:51234] hello\n")
    samples = scrape_until(
        url, lambda s: value(s, "trio_echo_connections_refused_total", reason="proxy") == 1
    )
    assert value(samples, "trio_echo_connections_accepted_total") == 2
    assert value(samples, "trio_echo_received_bytes_total") == len(b"hello\n")
    assert server.stop() == 0


def test_metrics_off_loopback_say_so(start_server):
    server = start_server("--metrics", "0.0.0.0:0", "--host", "127.0.0.1")
    server.wait_stderr(
        r"WARNING metrics exposed to the network: 0\.0\.0\.0:\d+ is not loopback; other "
        r"machines can read the server's counters"
    )
    # The server's own addresses are loopback: no warning about them.
    assert "WARNING exposed to the network" not in server.stderr
    assert server.stop() == 0
