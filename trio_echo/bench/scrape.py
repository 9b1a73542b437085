"""The bench as the server's Prometheus: ``trio-metrics`` (the trio model with ``--metrics
127.0.0.1:0``) is scraped while it is measured, so that its figures are those of a server that
is being watched, counters kept *and* read.

How, and why that way:

* **Only during its own measured runs** (:meth:`ScrapedServer.measuring`).  The bench takes the
  measured runs of all models in turns, their servers waiting side by side on the same CPU; a
  scrape of ``trio-metrics`` while ``trio`` is measured would slow ``trio`` -- the reference of
  the ratio -- and flatter the overhead.
* **Once a second** (:data:`SCRAPE_INTERVAL`), the first at once: Prometheus's default interval
  is a minute and 15 s is the usual choice, so this is 15 to 60 times more often than a real
  deployment, and the ratio an upper bound of what watching costs.
* **From the bench's own process**, a thread on the load generator's CPU: the client side of a
  scrape costs the server nothing; the server's side (a snapshot, the page rendered and sent)
  is what is measured.
* **Bounded**: one scrape at a time, each within :data:`SCRAPE_TIMEOUT`; the thread ends with
  the run.  A scrape that fails is counted, not retried.
* **Checked once the runs are over** (:meth:`ScrapedServer.stop`): before the SIGTERM, a last
  scrape once every client has gone (``trio_echo_connections_active`` 0, polled within
  :data:`SETTLE_TIMEOUT`); its totals must equal the summary the server logs when it exits
  (connections served, bytes received).  That proves the endpoint answered through the load and
  that what it says is what the load did; a mismatch is a figure (``scrape.mismatch``) and a
  line under the report's ratio, not the end of the run.

A scenario without measured runs (the storms, c10k, ...) scrapes nothing: its ``trio-metrics``
figures are those of a server with an endpoint nobody reads.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from trio_echo.bench.server import ServerError, ServerProcess

__all__ = [
    "SCRAPE_INTERVAL",
    "SCRAPE_TIMEOUT",
    "SETTLE_TIMEOUT",
    "ScrapedServer",
    "Scraper",
    "check",
    "metrics_port",
    "parse",
]

# Seconds between two scrapes during a measured run (see the module's docstring: 15-60 times
# more often than Prometheus is usually set to scrape).
SCRAPE_INTERVAL = 1.0
# Seconds a scrape may take, connect to last byte: a loopback scrape takes milliseconds; a
# busy machine gets a hundred times that.
SCRAPE_TIMEOUT = 2.0
# Seconds after the last run for every client to be gone before the closing scrape: the load
# generator has closed its connections when it exits; the server needs only to read the EOFs.
SETTLE_TIMEOUT = 5.0
# Between two polls of the closing scrape while clients are still connected.
SETTLE_POLL = 0.05

# ``12:00:00.000 NOTICE metrics at http://127.0.0.1:41237/metrics``
METRICS_RE = re.compile(r"metrics at http://127\.0\.0\.1:(?P<port>\d+)/metrics")

ACCEPTED = "trio_echo_connections_accepted_total"
ACTIVE = "trio_echo_connections_active"
RECEIVED = "trio_echo_received_bytes_total"


def metrics_port(stderr: str) -> int | None:
    """The endpoint's port, from the ``metrics at`` line the server logs before it listens."""
    match = METRICS_RE.search(stderr)
    return int(match["port"]) if match else None


def parse(page: str) -> dict[str, float]:
    """The samples of a Prometheus text page, by series (``name{labels}`` as written): enough
    for the bench's totals; the format itself is checked by ``prometheus_client``'s parser in
    the tests of :mod:`trio_echo.metrics`."""
    samples: dict[str, float] = {}
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        samples[series] = float(value)
    return samples


class Scraper:
    """GET ``/metrics`` on ``127.0.0.1:port``: one scrape, a scrape every second while a block
    runs (:meth:`every`), or the closing one (:meth:`settled`); what they met."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.scrapes = 0
        self.failures: list[str] = []
        self.slowest = 0.0

    def scrape(self) -> dict[str, float]:
        """One scrape, parsed; OSError, ``http.client.HTTPException`` or ValueError if it
        fails.  ``http.client``, not urllib: no proxy from the environment on loopback."""
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SCRAPE_TIMEOUT)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        self.slowest = max(self.slowest, time.monotonic() - started)
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return parse(body.decode())

    def _count(self) -> dict[str, float] | None:
        """One scrape, counted: the samples, or None (and why in :attr:`failures`)."""
        try:
            samples = self.scrape()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.scrapes += 1
        return samples

    @contextlib.contextmanager
    def every(self, interval: float) -> Iterator[None]:
        """Scrape at once, then every ``interval`` seconds, until the block ends (then waits
        for the scrape under way, within its timeout)."""
        stop = threading.Event()

        def scrape_until_stopped() -> None:
            while True:
                self._count()
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=scrape_until_stopped, name="bench-scrape", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(SCRAPE_TIMEOUT + 1)

    def settled(self, timeout: float = SETTLE_TIMEOUT) -> dict[str, float] | None:
        """The closing scrape: the first with no client connected, within ``timeout``; else
        the last that answered (its ``ACTIVE`` says how many stayed), or None."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            samples = self._count()
            if samples is not None:
                last = samples
                if samples.get(ACTIVE) == 0:
                    return samples
            if time.monotonic() >= deadline:
                return last
            time.sleep(SETTLE_POLL)


def check(
    scraper: Scraper, final: Mapping[str, float] | None, summary: tuple[int, int] | None
) -> dict[str, Any]:
    """The ``scrape`` figure: how the scrapes went, and whether the closing one's totals equal
    the server's summary (connections served, bytes received); ``mismatch`` says why not."""
    figures: dict[str, Any] = {
        "interval_s": SCRAPE_INTERVAL,
        "scrapes": scraper.scrapes,
        "failed": len(scraper.failures),
        "slowest_ms": round(scraper.slowest * 1000, 2),
    }
    if scraper.failures:
        figures["first_failure"] = scraper.failures[0]
    why = None
    if final is None:
        why = "no closing scrape answered"
    elif (active := final.get(ACTIVE)) is None:
        why = f"no {ACTIVE} in the closing scrape"
    elif active != 0:
        why = f"{active:g} clients still connected {SETTLE_TIMEOUT:g} s after the load"
    elif summary is None:
        why = "the server logged no summary"
    else:
        figures["accepted"] = int(final.get(ACCEPTED, -1))
        figures["received_bytes"] = int(final.get(RECEIVED, -1))
        wanted = {"accepted": summary[0], "received_bytes": summary[1]}
        wrong = [f"{k} {figures[k]} != {v}" for k, v in wanted.items() if figures[k] != v]
        if wrong:
            why = "scraped " + ", ".join(wrong) + " (the server's summary)"
    figures["matches"] = why is None and not scraper.failures
    if why is not None:
        figures["mismatch"] = why
    elif scraper.failures:
        figures["mismatch"] = f"{len(scraper.failures)} scrapes failed"
    return figures


class ScrapedServer(ServerProcess):
    """A server of a variant the bench watches (``scraped``: ``trio-metrics``): scraped every
    second during each measured run, checked by a closing scrape before it stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        port = metrics_port(self.stderr)
        if port is None:
            self.__exit__()
            raise ServerError("the server named no metrics endpoint ('metrics at' on stderr)")
        self.scraper = Scraper(port)
        self.measured = False
        self.final: dict[str, float] | None = None

    def measuring(self) -> contextlib.AbstractContextManager[None]:
        self.measured = True
        return self.scraper.every(SCRAPE_INTERVAL)

    def stop(self, timeout: float = 15.0) -> tuple[int | None, float]:
        if self.measured and self.final is None and self.proc.poll() is None:
            self.final = self.scraper.settled()
        return super().stop(timeout)

    def figures(self) -> dict[str, Any]:
        if not self.measured:
            return {}
        return {"scrape": check(self.scraper, self.final, self.received())}
