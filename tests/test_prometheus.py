"""A real Prometheus scrapes a running trio_echo, and its query API must see what was sent.

Run by ``nox -s prometheus`` (which installs Debian's ``prometheus`` first if it is missing);
skipped where no ``prometheus`` binary exists, and left out of the default run (marker
``prometheus``).  Everything is on loopback: Prometheus's own listener, its one scrape target,
the clients.

What this proves, beyond tests/test_metrics_e2e.py (which reads the page with
``prometheus_client``'s parser): the page is accepted by the scraper people run -- in the
format it asks for (OpenMetrics, from its ``Accept`` header) -- and the totals it stores are
exactly the known traffic: connections, bytes in and out, closes by reason, refusals by
reason, lines, the duration histogram's count, the active gauge while clients are connected.
The same for ``--workers 2``, where the supervisor's one endpoint must add up both workers
(and both must have served some of the clients, or the sum proves nothing).  The PromQL lines
of docs/deployment.md's recipe are run through the same API, so a typo there fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EVENT_TIMEOUT, STARTUP_TIMEOUT, ServerProcess, assert_no_traceback

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

ROOT = Path(__file__).resolve().parent.parent

# A scrape a second: the test waits for two or three of them.
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: trio_echo
    static_configs:
      - targets: ["{target}"]
"""

# How long Prometheus may take to have scraped what the clients did: a few scrape intervals
# on a loaded machine (a poll with this deadline, so only a failure waits this long).
SCRAPED_TIMEOUT = 20.0

# The server's own endpoint: a single process's, or a --workers supervisor's (not a worker's,
# which would say "worker N: metrics at").
METRICS_RE = r"NOTICE metrics at http://(?P<host>[^/\s,]+)/metrics"

Vector = dict[tuple[tuple[str, str], ...], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A Prometheus on loopback with one scrape target, and its HTTP query API."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        (workdir / "prometheus.yml").write_text(CONFIG.format(target=target))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    shutil.which("prometheus") or "prometheus",
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    # No alertmanager, no remote write, no rules: nothing leaves loopback.
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._ready():
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"prometheus not ready: {self.log.read_text()}"
            time.sleep(0.05)  # polling its readiness with a deadline, not synchronising

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> object:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=EVENT_TIMEOUT) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Vector:
        """An instant query's vector, as {labels without __name__: value}; ``at``: evaluate
        at that time (every sample is then the last one scraped at or before it)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("/api/v1/query", **params)
        assert isinstance(data, dict), data
        assert data["resultType"] == "vector", data
        return {
            tuple(sorted((k, v) for k, v in row["metric"].items() if k != "__name__")): float(
                row["value"][1]
            )
            for row in data["result"]
        }

    def last_scrape(self) -> float | None:
        """When Prometheus last scraped the target (the timestamp of its ``up`` sample)."""
        rows = self.query('timestamp(up{job="trio_echo"})')
        return max(rows.values()) if rows else None

    def why_not(self) -> str:
        """The target's state, for a failure message."""
        return json.dumps(self.api("/api/v1/targets"))[:2000]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=EVENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """``prometheus("127.0.0.1:PORT")`` starts Prometheus scraping that target; stopped at
    teardown."""
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        started.append(Prometheus(target, tmp_path))
        return started[-1]

    yield start
    for prom in started:
        prom.stop()


def _scalar(vector: Vector, what: str) -> float:
    assert len(vector) == 1, f"{what}: expected one series, got {vector}"
    return next(iter(vector.values()))


def wait_scraped(
    prom: Prometheus, expected: dict[str, float], after: float
) -> dict[str, float | None]:
    """Poll until a scrape made after ``after`` (wall clock) shows ``expected`` (PromQL ->
    value), evaluating every query at that scrape's time so that all come from one scrape;
    then check that the next scrape says the same.  Fails with the last values seen."""
    deadline = time.monotonic() + SCRAPED_TIMEOUT
    seen: dict[str, float | None] = {}
    while True:
        at = prom.last_scrape()
        if at is not None and at > after:
            seen = {}
            for expr in expected:
                vector = prom.query(expr, at)
                seen[expr] = _scalar(vector, expr) if vector else None
            if seen == expected:
                break
        assert time.monotonic() < deadline, (
            f"scrapes never matched the traffic:\n  got      {seen}\n  expected {expected}\n"
            f"  target   {prom.why_not()}"
        )
        time.sleep(0.1)  # polling Prometheus with a deadline, not synchronising
    # Stable: a later scrape (nothing more was sent) must say exactly the same.
    while (later := prom.last_scrape()) is not None and later <= at:
        assert time.monotonic() < deadline + SCRAPED_TIMEOUT, "no later scrape"
        time.sleep(0.1)
    assert later is not None
    again = {expr: _scalar(prom.query(expr, later), expr) for expr in expected}
    assert again == expected
    return seen


def _payload(i: int) -> bytes:
    """Client ``i``'s bytes: 1 to 3 lines, 6 B to 30 kB, different sizes for different clients."""
    lines = [b"c%d-%d " % (i, n) + b"x" * (i * 997 % 9973) + b"\n" for n in range(1 + i % 3)]
    return b"".join(lines)


def _closes_logged(server: ServerProcess, count: int) -> None:
    """Until the server has logged ``count`` closes by the client: a sign, independent of the
    counters under test, that the clients are all gone."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while len(re.findall(r"close #\d+ .*\(closed by client\)", server.stderr)) < count:
        assert time.monotonic() < deadline, server.stderr[-3000:]
        time.sleep(0.02)  # polling the server's log with a deadline


@pytest.mark.parametrize("workers", [1, 2])
def test_prometheus_scrapes_exactly_the_traffic_sent(
    start_server: Callable[..., ServerProcess],
    prometheus: Callable[[str], Prometheus],
    workers: int,
) -> None:
    # --allow 127.0.0.1/32: the clients that come over IPv6 are refused (reason "deny").
    args = ["--echo", "--metrics", "127.0.0.1:0", "--allow", "127.0.0.1/32"]
    server = start_server(*args, *(["--workers", str(workers)] if workers > 1 else []))
    target = server.wait_stderr(METRICS_RE)["host"]
    prom = prometheus(target)

    # Known traffic: N clients connected at once, each sends its payload and reads it all back.
    clients = 12 if workers == 1 else 40
    payloads = [_payload(i) for i in range(clients)]
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in payloads]
    try:
        for sock, payload in zip(socks, payloads, strict=True):
            sock.sendall(payload)
        for sock, payload in zip(socks, payloads, strict=True):
            sock.settimeout(EVENT_TIMEOUT)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(65536)
                assert chunk, "the server closed early"
                got += chunk
            assert got == payload
        # While they are all connected, the gauge says so.
        wait_scraped(prom, {"trio_echo_connections_active": clients}, time.time())
    finally:
        for sock in socks:
            sock.close()
    denied = 3
    for _ in range(denied):
        with socket.create_connection(("::1", server.port)) as refused:
            refused.settimeout(EVENT_TIMEOUT)
            assert refused.recv(1) == b""
    _closes_logged(server, clients)
    if workers > 1:
        # Both workers served some: a supervisor reporting only one worker would come short.
        served = set(re.findall(r"worker (\d+): close #", server.stderr))
        assert served == {"1", "2"}, server.stderr[-3000:]

    total = sum(map(len, payloads))
    lines = sum(payload.count(b"\n") for payload in payloads)
    expected = {
        "trio_echo_connections_accepted_total": clients,
        "trio_echo_received_bytes_total": total,
        "trio_echo_echoed_bytes_total": total,
        'trio_echo_connections_closed_total{reason="client"}': clients,
        'sum(trio_echo_connections_closed_total{reason!="client"})': 0,
        'trio_echo_connections_refused_total{reason="deny"}': denied,
        'sum(trio_echo_connections_refused_total{reason!="deny"})': 0,
        "trio_echo_connections_active": 0,
        "trio_echo_printed_lines_total": lines,
        "trio_echo_connection_duration_seconds_count": clients,
        'trio_echo_connection_duration_seconds_bucket{le="+Inf"}': clients,
        "trio_echo_stdout_blocked_handlers": 0,
        'count(up{job="trio_echo"})': 1,
    }
    if workers > 1:
        expected |= {"trio_echo_workers": workers, "trio_echo_worker_restarts_total": 0}
    wait_scraped(prom, expected, time.time())
    # What was printed, byte for byte (once stdout has taken it all).
    printed = len(server.wait_stdout(lambda out: out.count(b"\n") >= lines))
    wait_scraped(prom, {"trio_echo_printed_bytes_total": printed}, time.time())

    # The recipe's PromQL (docs/deployment.md) runs: every line is valid PromQL.
    for expr in recipe_queries():
        prom.query(expr)

    assert server.stop() == 0
    assert_no_traceback(server.all_stderr())


def recipe_queries() -> list[str]:
    """The PromQL lines of docs/deployment.md (its ```promql blocks, comments left out)."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, flags=re.S)
    queries = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert queries, "no ```promql block in docs/deployment.md"
    return queries
