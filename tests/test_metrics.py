"""The metrics' pieces in-process: the counters where they are bumped (the formatters' line
tally, the output queue's waits), a snapshot and its sum over workers, the exposition checked
by ``prometheus_client``'s own parsers in both formats, the endpoint's HTTP, and the status
lines.  What a user sees from the command line is tests/test_metrics_e2e.py."""

from __future__ import annotations

import signal
import socket

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_echo.config import Config
from trio_echo.connection import Connection
from trio_echo.metrics import endpoint
from trio_echo.metrics.endpoint import answer, serve_metrics
from trio_echo.metrics.exposition import OPENMETRICS_TYPE, TEXT_TYPE, families, render
from trio_echo.metrics.snapshot import CLOSE_REASONS, REFUSE_REASONS, merge, take
from trio_echo.metrics.status import connection_line, interval_line, totals_line
from trio_echo.output.format import OutputFormat
from trio_echo.output.queue import open_output_queue
from trio_echo.stats import Histogram, ServerStats, close_kind

parser = pytest.importorskip("prometheus_client.parser")
om_parser = pytest.importorskip("prometheus_client.openmetrics.parser")

PROPERTY_EXAMPLES = 60


# ---- counters where they are bumped ------------------------------------------------------------


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(
    fmt=st.sampled_from([OutputFormat.TEXT, OutputFormat.JSONL, OutputFormat.HEX]),
    stamps=st.booleans(),
    chunks=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\x00", b"\n")), max_size=12),
    max_line=st.sampled_from([4, 16, 8192]),
)
def test_the_line_tally_is_the_number_of_lines_printed(fmt, stamps, chunks, max_line):
    """However the bytes arrive, the tally (counted without a pass over the output) equals the
    output lines: a newline each, less jsonl's open and close events."""
    from trio_echo.output.stamps import Timestamps

    timestamps = Timestamps.UTC if stamps and fmt is not OutputFormat.JSONL else None
    config = Config(output_format=fmt, max_line=max_line, timestamps=timestamps)
    stats = ServerStats()
    conn = Connection.open(config, stats, ("127.0.0.1", 5555))
    out = conn.opened() + b"".join(conn.feed(chunk) for chunk in chunks) + conn.finish()
    events = 2 if fmt is OutputFormat.JSONL else 0
    assert stats.printed.lines == out.count(b"\n") - events


def test_a_connection_counts_its_close_reason_and_duration():
    stats = ServerStats()
    for reason in ("closed by client", "idle for 5 s", "sent more than --max-bytes 10"):
        conn = Connection.open(Config(), stats, ("127.0.0.1", 1))
        conn.reason = reason
        conn.finish()
    refused = Connection.open(Config(), stats, ("127.0.0.1", 2), announce=False)
    refused.abandon("tls", "TLS handshake failed", "bad record")
    assert stats.closed_by == {"client": 1, "idle": 1, "max_bytes": 1}
    assert stats.refused_by == {"max_bytes": 1, "tls": 1}
    assert sum(stats.durations.counts) == 3
    assert stats.active == 0


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("closed by client", "client"),
        ("not reading its echo for 2 s", "idle"),
        ("connection lost (connection reset by peer)", "lost"),
        ("grace period over", "grace_over"),
        ("server aborted", "forced"),
        ("error: ValueError()", "error"),
        ("something new", "other"),
    ],
)
def test_close_kinds(reason, kind):
    assert close_kind(reason) == kind
    assert kind in CLOSE_REASONS


def test_a_histogram_puts_each_value_in_its_bucket():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 1]  # le 0.1 includes 0.1 itself
    assert histogram.total == pytest.approx(3.65)


async def test_the_queue_names_the_waiter_while_it_waits_for_room():
    queue, _reader = open_output_queue(limit=200)
    conn = Connection.open(Config(), ServerStats(), ("127.0.0.1", 1))
    await queue.put(b"x" * 100, conn)  # fits: no wait, nothing said
    assert (queue.waiting, conn.blocked_since) == (0, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, b"y" * 100, conn)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.waiting == 1
        assert conn.blocked_since is not None
        assert 0 <= trio.current_time() - conn.blocked_since < 5
        _, cost = queue.take(1000)
        queue.release(cost)
    assert (queue.waiting, conn.blocked_since) == (0, None)


async def test_blocked_seconds_add_up_the_time_spent_waiting(autojump_clock):
    queue, _reader = open_output_queue(limit=200)
    await queue.put(b"x" * 150)

    async def release_later() -> None:
        await trio.sleep(2.5)
        _, cost = queue.take(1000)
        queue.release(cost)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        await queue.put(b"y" * 150)
    assert queue.blocked_seconds == pytest.approx(2.5)
    assert queue.written == 150


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# ---- snapshot, sum, exposition ----------------------------------------------------------------


def _busy_stats() -> ServerStats:
    stats = ServerStats()
    stats.connections, stats.active, stats.denied = 7, 2, 3
    stats.bytes_received, stats.bytes_echoed = 12345, 12000
    stats.refused_by = {"tls": 1}
    stats.closed_by = {"client": 4, "idle": 1}
    stats.accept_pauses = 2
    stats.printed.lines = 99
    stats.durations.observe(0.5)
    stats.handshakes.observe(0.002)
    return stats


def _samples(metric_families) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metric_families
        for sample in family.samples
    }


@pytest.mark.parametrize("openmetrics", [False, True])
def test_the_exposition_parses_in_both_formats(openmetrics):
    queue, _ = open_output_queue(limit=1000)
    queue.put_nowait(b"abc")
    text = render(families(take(_busy_stats(), queue)), openmetrics=openmetrics).decode()
    parse = (
        om_parser.text_string_to_metric_families
        if openmetrics
        else parser.text_string_to_metric_families
    )
    parsed = list(parse(text))
    samples = _samples(parsed)
    assert samples[("trio_echo_connections_accepted_total", ())] == 7
    assert samples[("trio_echo_connections_active", ())] == 2
    assert samples[("trio_echo_connections_refused_total", (("reason", "deny"),))] == 3
    assert samples[("trio_echo_connections_refused_total", (("reason", "tls"),))] == 1
    assert samples[("trio_echo_connections_closed_total", (("reason", "client"),))] == 4
    assert samples[("trio_echo_received_bytes_total", ())] == 12345
    assert samples[("trio_echo_echoed_bytes_total", ())] == 12000
    assert samples[("trio_echo_printed_lines_total", ())] == 99
    assert samples[("trio_echo_output_queue_bytes", ())] == 3 + 64
    assert samples[("trio_echo_connection_duration_seconds_bucket", (("le", "1.0"),))] == 1
    assert samples[("trio_echo_connection_duration_seconds_bucket", (("le", "0.1"),))] == 0
    assert samples[("trio_echo_connection_duration_seconds_count", ())] == 1
    assert samples[("trio_echo_tls_handshake_seconds_sum", ())] == pytest.approx(0.002)
    assert samples[("process_start_time_seconds", ())] > 1.7e9
    # Every reason is there from the start, at 0.
    for reason in REFUSE_REASONS:
        assert ("trio_echo_connections_refused_total", (("reason", reason),)) in samples
    for reason in CLOSE_REASONS:
        assert ("trio_echo_connections_closed_total", (("reason", reason),)) in samples
    names = {family.name for family in parsed}
    counters = [family for family in parsed if family.type == "counter"]
    assert all(family.name.startswith(("trio_echo_", "process_")) for family in parsed)
    assert len(counters) >= 8
    assert text.endswith("# EOF\n") == openmetrics
    assert (
        "trio_echo_connections_accepted" in names or "trio_echo_connections_accepted_total" in names
    )


def test_a_datagram_server_exports_datagrams_not_connections():
    stats = ServerStats(udp=True)
    stats.datagrams, stats.refused, stats.kernel_drops = 10, 2, 5
    text = render(families(take(stats, None)), openmetrics=False).decode()
    samples = _samples(parser.text_string_to_metric_families(text))
    assert samples[("trio_echo_datagrams_received_total", ())] == 10
    assert samples[("trio_echo_datagrams_refused_total", ())] == 2
    assert samples[("trio_echo_datagrams_dropped_total", ())] == 5
    assert ("trio_echo_connections_accepted_total", ()) not in samples
    stats.kernel_drops = None  # where the kernel does not say, no series at all
    assert (
        "datagrams_dropped" not in render(families(take(stats, None)), openmetrics=False).decode()
    )


def test_help_and_label_values_are_escaped():
    from trio_echo.metrics.exposition import Family

    family = Family("x", "counter", 'a \\ b\nc "d"', (("_total", (("l", 'q"\\\n'),), 1),))
    for openmetrics, parse in (
        (False, parser.text_string_to_metric_families),
        (True, om_parser.text_string_to_metric_families),
    ):
        (parsed,) = parse(render([family], openmetrics=openmetrics).decode())
        assert parsed.samples[0].labels == {"l": 'q"\\\n'}
        assert parsed.documentation.startswith("a \\ b\nc")


def test_merge_adds_up_workers():
    one, two = _busy_stats(), _busy_stats()
    two.started_wall -= 100
    snapshots = [take(one, None), take(two, None)]
    total = merge(snapshots)
    assert total["accepted"] == 14
    assert total["refused"]["deny"] == 6
    assert total["closed"]["client"] == 8
    assert total["duration_seconds"]["counts"] == [2 * c for c in one.durations.counts]
    assert total["duration_seconds"]["sum"] == pytest.approx(1.0)
    assert total["start_time"] == two.started_wall
    assert total["datagrams_dropped"] is None
    # The inputs are left as they were (the supervisor keeps a worker's last one).
    assert snapshots[0]["duration_seconds"]["counts"] == one.durations.to_json()["counts"]
    udp = ServerStats(udp=True)
    udp.kernel_drops = 4
    assert merge([take(udp, None), take(ServerStats(udp=True), None)])["datagrams_dropped"] == 4


# ---- the endpoint -----------------------------------------------------------------------------


_BUSY = take(_busy_stats(), None)


async def _page():
    return _BUSY


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", b"200"),
        (b"GET /metrics?x=1 HTTP/1.0", b"200"),
        (b"GET / HTTP/1.1", b"404"),
        (b"POST /metrics HTTP/1.1", b"405"),
        (b"hello", b"400"),
        (b"GET /metrics HTTP/2.0", b"505"),
    ],
)
async def test_answers(request_head, status):
    response = await answer(_page, request_head)
    assert response.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close\r\n" in response


async def test_the_scraper_chooses_the_format_and_head_gets_no_body():
    plain = await answer(_page, b"GET /metrics HTTP/1.1\r\nAccept: */*")
    assert f"Content-Type: {TEXT_TYPE}".encode() in plain
    om = await answer(
        _page,
        b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,"
        b"text/plain;version=0.0.4;q=0.5",
    )
    assert f"Content-Type: {OPENMETRICS_TYPE}".encode() in om
    assert om.endswith(b"# EOF\n")
    head = await answer(_page, b"HEAD /metrics HTTP/1.1")
    assert head.endswith(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(plain.split(b"\r\n\r\n", 1)[1])


async def _get(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_the_endpoint_serves_real_sockets_and_drops_silent_clients(monkeypatch):
    monkeypatch.setattr(endpoint, "REQUEST_TIMEOUT", 0.3)
    async with trio.open_nursery() as nursery:
        (address, *_) = await nursery.start(serve_metrics, "127.0.0.1", 0, _page)
        port = address[1]
        response = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 OK")
        body = response.split(b"\r\n\r\n", 1)[1]
        assert b"trio_echo_connections_accepted_total 7\n" in body
        # A client that says nothing is closed after the timeout; the endpoint still serves.
        silent = socket.create_connection(("127.0.0.1", port))
        silent.settimeout(5)
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(silent.recv, 10) == b""
        silent.close()
        huge = await _get(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431")
        assert (await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
        nursery.cancel_scope.cancel()


# ---- status lines -----------------------------------------------------------------------------


def test_totals_and_interval_lines():
    stats = _busy_stats()
    before = take(stats, None)
    stats.connections += 10
    stats.bytes_received += 2_000_000
    stats.printed.lines += 500
    after = take(stats, None)
    after["uptime"] = before["uptime"] + 2.0
    assert totals_line(before).startswith("up ")
    assert "2 connected, 7 accepted, 4 refused" in totals_line(before)
    line = interval_line(before, after)
    assert "+10 accepted (5.0/s)" in line
    assert "in 1.0 MB/s" in line
    assert "250 lines/s" in line


async def test_a_connection_line_says_idle_and_blocked(autojump_clock):
    conn = Connection.open(Config(), ServerStats(), ("127.0.0.1", 4242))
    conn.feed(b"hello\n")
    line = connection_line(conn, conn.last_received + 3.0)
    assert line.startswith(f"#{conn.conn_id} 127.0.0.1:4242: open ")
    assert "6 B received, idle 3.0 s" in line
    assert "blocked" not in line
    conn.blocked_since = trio.current_time()
    await trio.sleep(1.5)
    assert connection_line(conn, conn.last_received).endswith("blocked on stdout for 1.5 s")


def test_sigusr1_is_ignored_from_before_the_command_line_is_read() -> None:
    """A status request that comes while the server is still starting (reading its flags, say)
    does nothing rather than kill it: main() ignores SIGUSR1 before it parses anything."""
    from trio_echo.cli.main import main

    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit):
            main(["--no-such-flag"])
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)
