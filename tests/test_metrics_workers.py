"""``--workers N`` with ``--metrics``, ``--stats-interval`` and SIGUSR1: the supervisor's one
endpoint adds up every worker, keeps a replaced worker's counts, and a status dump covers every
worker.  The adding up itself, in-process, first."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import trio
import trio.testing
from conftest import STARTUP_TIMEOUT, assert_no_traceback, recv_exactly
from test_metrics_e2e import metrics_url, scrape, scrape_until, value
from test_workers import worker_pids

from trio_echo.metrics.snapshot import take
from trio_echo.output.queue import open_output_queue
from trio_echo.stats import ServerStats
from trio_echo.workers import figures as figures_module
from trio_echo.workers.figures import ASK, WorkerFigures

pytest.importorskip("prometheus_client")


def _snapshot(accepted: int, active: int = 0) -> dict[str, object]:
    stats = ServerStats()
    stats.connections, stats.active = accepted, active
    stats.durations.observe(0.01)
    queue, _ = open_output_queue(limit=1000)
    return take(stats, queue)


async def test_a_scrape_asks_every_worker_and_adds_up_their_answers():
    queue, _ = open_output_queue(limit=1000)
    figures = WorkerFigures(ServerStats(), queue)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        controls = {1: ours}
        figures.received(1, _snapshot(3))  # an old answer

        async def worker() -> None:
            await trio.lowlevel.wait_readable(theirs)
            assert theirs.recv(100) == ASK
            figures.received(1, _snapshot(5))  # what the supervisor's reader does

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)
            total = await figures.gather(controls, workers=1, restarts=0)
        assert total["accepted"] == 5  # the fresh answer, not the old one
        assert total["workers"] == 1


async def test_a_worker_that_does_not_answer_counts_with_its_last_answer(monkeypatch):
    monkeypatch.setattr(figures_module, "ASK_TIMEOUT", 0.05)
    queue, _ = open_output_queue(limit=1000)
    figures = WorkerFigures(ServerStats(), queue)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        figures.received(1, _snapshot(3))
        with trio.fail_after(5):
            total = await figures.gather({1: ours}, workers=1, restarts=0)
    assert total["accepted"] == 3


def test_a_gone_workers_counts_stay_in_the_totals():
    queue, _ = open_output_queue(limit=1000)
    queue.put_nowait(b"abc")
    figures = WorkerFigures(ServerStats(), queue)
    figures.received(1, _snapshot(3, active=2))
    figures.received(2, _snapshot(4, active=1))
    figures.retire(1)
    figures.received(3, _snapshot(1))  # its replacement
    total = figures.total(workers=2, restarts=1)
    assert total["accepted"] == 8
    # What the gone worker held (its clients, its queue) is gone with it.
    assert total["active"] == 1
    assert total["queue_limit_bytes"] == 2 * 1000 + queue.limit
    assert total["duration_seconds"]["counts"][1] == 3  # 0.01 s is in the le=0.01 bucket
    assert total["worker_restarts"] == 1
    assert total["queue_bytes"] == queue.used  # the workers queue nothing; the supervisor: abc
    assert total["printed_bytes"] == 0  # what the supervisor wrote: nothing yet


def test_no_answer_yet_is_zero_everywhere():
    queue, _ = open_output_queue(limit=1000)
    total = WorkerFigures(ServerStats(), queue).total(workers=2, restarts=0)
    assert total["accepted"] == 0
    assert total["workers"] == 2


# ---- end to end -------------------------------------------------------------------------------


def test_the_supervisors_endpoint_adds_up_every_worker(start_server):
    server = start_server("--workers", "2", "--echo", "--metrics", "0")
    url = metrics_url(server)
    worker_pids(server)
    sent = 0
    for n in range(40):
        payload = b"client %d\n" % n
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload
        sent += len(payload)
    samples = scrape_until(
        url, lambda s: value(s, "trio_echo_connections_closed_total", reason="client") == 40
    )
    assert value(samples, "trio_echo_connections_accepted_total") == 40
    assert value(samples, "trio_echo_received_bytes_total") == sent
    assert value(samples, "trio_echo_echoed_bytes_total") == sent
    assert value(samples, "trio_echo_printed_lines_total") == 40
    assert value(samples, "trio_echo_workers") == 2
    server.wait_stdout(lambda out: out.count(b"\n") == 40)
    samples = scrape_until(
        url, lambda s: value(s, "trio_echo_printed_bytes_total") == len(server.stdout)
    )
    assert server.stop() == 0
    assert_no_traceback(server.all_stderr())


def test_a_replaced_workers_counts_are_kept(start_server):
    server = start_server("--workers", "2", "--metrics", "0")
    url = metrics_url(server)
    pids = worker_pids(server)
    for n in range(20):
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"before %d\n" % n)
    server.wait_stdout(lambda out: out.count(b"before") == 20)
    before = scrape_until(url, lambda s: value(s, "trio_echo_connections_accepted_total") == 20)
    assert value(before, "trio_echo_received_bytes_total") > 0
    os.kill(pids[1], signal.SIGKILL)
    server.wait_stderr(r"worker 3 \(pid \d+\) is serving")
    after = scrape(url)
    # The killed worker's last answer still counts: no counter went down.
    assert value(after, "trio_echo_connections_accepted_total") == 20
    assert value(after, "trio_echo_worker_restarts_total") == 1
    assert value(after, "trio_echo_workers") == 2
    assert server.stop() == 0


def test_sigusr1_to_the_supervisor_dumps_the_totals_and_every_worker(start_server):
    server = start_server("--workers", "2")
    worker_pids(server)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"hi\n")
    server.wait_stdout(b"hi\n")
    server.send_signal(signal.SIGUSR1)
    server.wait_stderr(r"NOTICE status: up .*1 connected, 1 accepted")
    for number in (1, 2):
        server.wait_stderr(rf"worker {number}: status: end \(\d connections?\)")
    server.wait_stderr(r"worker \d: status: #1 127\.0\.0\.1:\d+: open .*3 B received")
    client.close()
    assert server.stop() == 0


def test_stats_interval_under_workers_is_the_supervisors(start_server):
    server = start_server("--workers", "2", "--stats-interval", "0.2", "--quiet")
    worker_pids(server)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"x" * 1000)
    server.wait_stderr(r"^\S+ NOTICE stats: \d+ connected, \+[1-3] accepted")
    # One line per interval from the supervisor, none from the workers.
    assert "worker 1: stats:" not in server.stderr
    assert server.stop() == 0


def test_sigusr1_never_reaches_a_worker_that_is_still_starting(start_server):
    """A worker is told only once it said it serves: before, the signal would kill it."""
    server = start_server("--workers", "2")
    pids = worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    # Through the whole restart (its back-off, its start-up), as fast as the signal goes.
    while "worker 3 (pid" not in server.stderr:
        assert time.monotonic() < deadline, server.stderr
        server.send_signal(signal.SIGUSR1)
        time.sleep(0.002)
    server.send_signal(signal.SIGUSR1)
    server.wait_stderr(r"worker 3: status: end")
    assert "SIGUSR1" not in server.stderr
    assert server.stop() == 0
