"""The load generator's open loop (latency without coordinated omission), its poll() backend,
large messages, and the percentiles of its histogram.

The servers here are tiny single-threaded Python echo servers in a thread of the test process
(:class:`StallingEcho`): one of them stops for 100 ms every N requests, as a server behind a
garbage-collector pause or a blocking call does, and the test shows what the bench's open loop
exists for -- the stall is in the open loop's p99.9, and the closed loop, which asks a stalled
server less, hides it.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from trio_echo.bench import loadgen, plot
from trio_echo.bench.scenarios import latency
from trio_echo.bench.scenarios.base import Context, Sizes
from trio_echo.bench.stats import PERCENTILES, latency_ms, merge_histograms, percentile
from trio_echo.models import MODELS

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)

STALL = 0.1  # seconds: the server that "stalls 100 ms"
TIMEOUT = 30  # backstop for one load generator run


class StallingEcho:
    """An echo server on 127.0.0.1 in a thread: one selector loop for every client, so a stall
    stops them all (a client gone mid-write is its own business: suppressed).  Before echoing
    its ``every``-th line (counted over all clients) it sleeps ``stall`` seconds -- the
    server's fault the bench must see, not a synchronisation.  With ``echo=False`` it reads
    and discards (the ``stream`` mode's sink) and closes at EOF."""

    def __init__(self, every: int = 0, stall: float = STALL, echo: bool = True) -> None:
        self.every = every
        self.stall = stall
        self.echo = echo
        self.lines = 0
        self.stalls = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StallingEcho:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        pending: dict[socket.socket, bytearray] = {}
        with selectors.DefaultSelector() as sel, self._listener:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, mask in sel.select(timeout=0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if sock is self._listener:
                        with contextlib.suppress(BlockingIOError, ConnectionError):
                            conn, _ = sock.accept()
                            conn.setblocking(False)
                            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            pending[conn] = bytearray()
                            sel.register(conn, selectors.EVENT_READ)
                        continue
                    if mask & selectors.EVENT_READ and not self._read(sock, pending[sock]):
                        sel.unregister(sock)
                        del pending[sock]
                        sock.close()
                        continue
                    self._flush(sel, sock, pending[sock])
            for sock in pending:
                sock.close()

    def _read(self, sock: socket.socket, out: bytearray) -> bool:
        """Read what came (echoing it); False at EOF or a reset."""
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        for _ in range(data.count(b"\n")):
            self.lines += 1
            if self.every and self.lines % self.every == 0:
                self.stalls += 1
                time.sleep(self.stall)  # the stall under test: every client waits
        if self.echo:
            out += data
        return True

    def _flush(self, sel: selectors.BaseSelector, sock: socket.socket, out: bytearray) -> None:
        if out:
            with contextlib.suppress(BlockingIOError, ConnectionError):
                del out[: sock.send(out)]
        sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))


@pytest.fixture(scope="module", params=["native", "poll"])
def binary(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The load generator, built with the platform's backend and with poll() forced."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    return loadgen.build(request.param)


@pytest.fixture(scope="module")
def native() -> Any:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    return loadgen.build()


def _figures(result: dict[str, Any]) -> dict[str, float | None]:
    return latency_ms(result["latency_us"], result["latency_max_us"])


# ---- the key test: a stall shows up in the open loop's p99.9, the closed loop hides it ----------


@needs_cc
def test_a_100ms_stall_shows_in_the_open_loops_p99_9_and_the_closed_loop_hides_it(native):
    # The same server twice: a stall of 100 ms before every 1000th answer.
    with StallingEcho(every=1000) as server:
        closed = loadgen.run(native, "echo", server.port, timeout=TIMEOUT, c=1, s=64, n=2500, t=20)
        assert server.stalls == 2
    with StallingEcho(every=1000) as server:
        opened = loadgen.run(
            native, "open", server.port, timeout=TIMEOUT, c=2, s=64, r=1000, d=1.5, t=20
        )
        assert server.stalls == 1
    closed_ms, open_ms = _figures(closed), _figures(opened)
    # The closed loop met each stall once: it is in its maximum, nowhere else -- 2 requests of
    # 2500 were slow, because while the server stalled this client did not ask.
    assert closed["requests"] == 2500
    assert closed_ms["max_ms"] >= STALL * 1000 * 0.9
    assert closed_ms["p99_9_ms"] is not None
    assert closed_ms["p99_9_ms"] < 30
    # The open loop kept asking on schedule: ~100 requests fell due during the stall and each
    # waited from its due time, so p99.9 (and even p99) is the stall.
    assert opened["due"] == 1500
    assert opened["requests"] == 1500
    assert opened["unfinished"] == 0
    assert opened["backlogged"] > 0  # requests due while their connection waited
    assert open_ms["p99_9_ms"] is not None
    assert open_ms["p99_9_ms"] >= 80  # nearly the whole stall
    assert open_ms["p99_ms"] is not None
    assert open_ms["p99_ms"] >= 20
    assert open_ms["p99_9_ms"] > 3 * closed_ms["p99_9_ms"]


# ---- the schedule -------------------------------------------------------------------------


@needs_cc
def test_the_open_loop_sends_rate_times_duration_requests_and_reports_the_achieved_rate(binary):
    with StallingEcho() as server:
        result = loadgen.run(
            binary, "open", server.port, timeout=TIMEOUT, c=4, s=64, r=800, d=0.5, t=20
        )
        lines = server.lines
    assert result["mode"] == "open"
    assert result["due"] == 400  # every j with j / 800 < 0.5
    assert result["sent"] == 400
    assert result["requests"] == 400
    assert result["unfinished"] == 0
    assert lines == 400 + 4  # and one unmeasured warm-up request per connection
    assert result["target_rate"] == 800
    assert result["achieved_rate"] == pytest.approx(800, rel=0.1)
    assert result["elapsed"] >= 0.5
    assert 0 <= result["cpu"] < result["wall"] + 0.1  # what the generator itself used
    assert result["dispatch_lag_mean_us"] < 5000  # it sent on time, not in bursts
    assert sum(count for _, count in result["latency_us"]) == 400


@needs_cc
def test_an_open_loop_faster_than_the_server_is_reported_short_of_its_target(native):
    # 200 ms of stall per 50 requests: the server can answer ~250/s, the schedule asks 1000/s.
    with StallingEcho(every=50, stall=0.2) as server:
        result = loadgen.run(
            native, "open", server.port, timeout=TIMEOUT, c=2, s=64, r=1000, d=0.3, g=0.2, t=20
        )
    assert result["due"] == 300
    assert result["requests"] < 300
    assert result["unfinished"] == 300 - result["requests"]
    assert result["achieved_rate"] < 0.6 * result["target_rate"]
    assert result["backlogged"] > 0


@needs_cc
def test_the_open_loop_refuses_a_missing_rate(native):
    import subprocess

    result = subprocess.run(
        [str(native), "open", "-p", "9", "-d", "1"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "-r RATE" in result.stderr


@needs_cc
def test_where_python_has_no_epoll_the_native_build_is_the_poll_one(monkeypatch):
    # As on macOS and the BSDs, or in the suite's hidden-epoll run (nox -s portable).
    native = loadgen.build()
    monkeypatch.delattr(loadgen.select, "epoll", raising=False)
    portable = loadgen.build()
    assert portable == loadgen.build("poll")
    assert portable.name.endswith("-poll")
    assert "(C, poll," in loadgen.version_line(portable)
    if native != portable:  # this Python has epoll: the native build is the epoll one
        assert not native.name.endswith("-poll")


# ---- every mode on both backends, large messages ---------------------------------------------


@needs_cc
@pytest.mark.parametrize("size", [10 * 1024, 100 * 1024])
def test_large_messages_are_echoed_whole_in_both_loops(binary, size):
    with StallingEcho() as server:
        closed = loadgen.run(binary, "echo", server.port, timeout=TIMEOUT, c=3, s=size, n=20, t=20)
        opened = loadgen.run(
            binary, "open", server.port, timeout=TIMEOUT, c=3, s=size, r=100, d=0.2, t=20
        )
    assert closed["requests"] == 60
    assert closed["errors"] == 0
    assert opened["requests"] == opened["due"] == 20
    assert opened["errors"] == 0


@needs_cc
def test_stream_and_hold_run_on_both_backends(binary):
    with StallingEcho(echo=False) as sink:
        stream = loadgen.run(binary, "stream", sink.port, timeout=TIMEOUT, c=2, s=64, d=0.2, t=20)
    assert stream["bytes"] > 0
    assert stream["eofs"] == 2
    assert stream["still_open"] == 0
    with StallingEcho() as server, loadgen.Hold(binary, server.port, 5, timeout=10) as hold:
        ready = hold.ready()
        assert ready["echoed"] == 5
        result = hold.finish()
    assert result["mode"] == "hold"
    assert result["connected"] == 5


# ---- the histogram and its percentiles --------------------------------------------------------


@needs_cc
def test_the_generators_percentiles_are_stats_percentiles_of_its_histogram(native):
    with StallingEcho(every=200, stall=0.02) as server:
        result = loadgen.run(
            native, "open", server.port, timeout=TIMEOUT, c=2, s=64, r=1000, d=0.3, t=20
        )
    histogram = result["latency_us"]
    for name, fraction in PERCENTILES.items():
        assert result[f"{name}_us"] == percentile(histogram, fraction)
    for value, _ in histogram:
        # Log-linear: exact below 1024 us, above that 10 significant bits (<= 0.2 % error).
        if value >= 1024:
            shift = value.bit_length() - 10
            assert (value >> shift) << shift == value
    assert max(value for value, _ in histogram) <= result["latency_max_us"]


def test_p99_9_is_the_nearest_rank_of_a_thousand():
    histogram = [[100, 998], [5000, 1], [90000, 1]]
    assert percentile(histogram, 0.999) == 5000  # the 999th of 1000
    assert percentile(histogram, 0.99) == 100
    assert percentile(histogram, 1.0) == 90000
    # 0.07 * 100 is 7.000000000000001 in floats: the rank is still the 7th sample.
    assert percentile([[1, 7], [2, 93]], 0.07) == 1


def test_latency_ms_gives_every_percentile_and_the_exact_maximum():
    histogram = merge_histograms([[1000, 900]], [[2000, 90], [50000, 9], [100000, 1]])
    figures = latency_ms(histogram, 100123)
    assert figures == {
        "p50_ms": 1.0,
        "p90_ms": 1.0,
        "p99_ms": 2.0,
        "p99_9_ms": 50.0,
        "max_ms": 100.123,
    }
    empty = latency_ms([], 0)
    assert empty["p99_9_ms"] is None
    assert empty["max_ms"] == 0
    assert set(figures) == {f"{name}_ms" for name in PERCENTILES} | {"max_ms"}
    assert math.isclose(sum(c for _, c in histogram), 1000)


# ---- the latency scenario: its curve, its table, its chart --------------------------------------


def _report(**models: dict[str, Any]) -> dict[str, Any]:
    return {
        "models": {name: {"scenarios": {latency.KEY: f}} for name, f in models.items()},
        "scenario_titles": {latency.KEY: "latency vs load, 100 conn × 64 B (open loop)"},
    }


def _point(load: int, offered: float, p99: float, unfinished: int = 0) -> dict[str, Any]:
    return {
        f"offered_rps_at_{load}": offered,
        f"achieved_rps_at_{load}": offered - unfinished,
        f"p50_ms_at_{load}": 0.1,
        f"p99_ms_at_{load}": p99,
        f"p99_9_ms_at_{load}": p99 * 2,
        f"max_ms_at_{load}": p99 * 3,
        f"unfinished_at_{load}": unfinished,
        f"send_lag_ms_at_{load}": 0.05,
    }


def test_the_curve_and_the_table_have_a_row_per_load_and_say_what_was_skipped():
    trio = {
        "loads": [25, 90],
        "peak_rps": 40000.0,
        "peak_p99_ms": 3.0,
        "peak_loadgen_saturated": True,
        "peak_after_rps": 20000.0,
        **_point(25, 10000.0, 0.5),
        **_point(90, 36000.0, 12.0, unfinished=7),
    }
    report = _report(trio=trio, sync={"skipped": "limited: only 1 of 100 connections"})
    points = latency.curve(trio)
    assert [p["load"] for p in points] == [25, 90]
    assert points[1]["p99_9_ms"] == 24.0
    assert latency.curve({"skipped": "x"}) == []
    table = latency.render_latency(report).splitlines()
    assert table[0].startswith("latency vs load")
    assert table[1].split() == [
        *("model", "load", "offered/s", "achieved/s"),
        *("p50", "ms", "p99", "ms", "p99.9", "ms", "max", "ms", "lag", "ms"),
    ]
    [closed] = [line for line in table if line.startswith("trio")]
    # *: a saturated generator; ~: the peak after the curve was half the one before
    assert closed.split()[1:4] == ["closed", "-", "40.0k*~"]
    assert any(line.startswith("~: trio's closed-loop peak was 40.0k/s before") for line in table)
    [light] = [line for line in table if " 25% " in line]
    assert light.split() == ["25%", "10.0k", "10.0k", "0.10", "0.50", "1.00", "1.50", "0.05"]
    [heavy] = [line for line in table if " 90% " in line]
    assert heavy.split()[2] == "36.0k!"
    assert any(line.startswith("!: trio at 90%: 7 requests due") for line in table)
    assert "sync: limited: only 1 of 100 connections" in table
    assert latency.render_latency({"models": {"trio": {"scenarios": {}}}}) == ""


def test_the_chart_draws_p99_and_p99_9_against_the_offered_load(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report(
        trio={"loads": [25, 50], **_point(25, 100.0, 1.0), **_point(50, 200.0, 2.0)},
        asyncio={"loads": [25], **_point(25, 150.0, 3.0)},
    )
    report["models"]["trio"]["scenarios"]["echo_1x64"] = {"requests_per_s": 1e3, "p99_ms": 1.0}
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    try:
        assert plot.plot_latency(axes, report)
        lines = {line.get_label(): line for line in axes[1].get_lines()}
        assert list(lines["trio"].get_xdata()) == [100.0, 200.0]
        assert list(lines["trio"].get_ydata()) == [2.0, 4.0]  # p99.9 on the second panel
        assert list(lines["asyncio"].get_ydata()) == [6.0]
        assert not plot.plot_latency(axes, _report(trio={"skipped": "x"}))
    finally:
        plt.close(fig)
    report["machine"] = {}
    plot.write_plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_the_quick_curve_fits_in_two_seconds_a_model_and_the_full_one_in_fifteen():
    for sizes, budget in ((latency.LatencySizes.quick(), 2.0), (latency.LatencySizes(), 15.0)):
        spent = sizes.warmup + 2 * sizes.peak_duration + len(sizes.loads) * sizes.duration
        assert spent <= budget - 0.4  # the server's start
    assert latency.LatencySizes.default() == latency.LatencySizes()
    assert latency.LatencySizes().loads == (0.25, 0.5, 0.75, 0.9)


@needs_cc
def test_the_latency_scenario_measures_a_models_curve_from_its_own_peak(native):
    pytest.importorskip("psutil")
    sizes = latency.LatencySizes(
        connections=10, warmup=0.05, peak_duration=0.2, duration=0.2, loads=(0.5, 0.9), grace=1
    )
    scenario = latency.latency_scenario(sizes)
    assert scenario.key == latency.KEY
    assert scenario.flags == ("--echo", "--quiet")
    result = scenario.run(Context(binary=native, sizes=Sizes.quick()), MODELS["trio"])
    assert result.skipped is None, result.skipped
    figures = result.figures
    assert figures["peak_rps"] > 0
    assert figures["peak_after_rps"] > 0
    assert figures["loads"] == [50, 90]
    for load in (0.5, 0.9):
        suffix = f"_at_{round(load * 100)}"
        assert figures["offered_rps" + suffix] == pytest.approx(load * figures["peak_rps"], 0.01)
        # Not near the offered rate: on a busy machine the peak may have been a lucky moment.
        assert figures["achieved_rps" + suffix] > 0
        assert figures["unfinished" + suffix] >= 0
        ordered = [figures[f"{p}_ms{suffix}"] for p in ("p50", "p90", "p99", "p99_9", "max")]
        assert ordered == sorted(ordered)
    table = latency.render_latency(_report(trio=result.to_json()))
    assert " 90% " in table


@needs_cc
def test_a_model_that_serves_one_client_at_a_time_is_reported_limited(native):
    pytest.importorskip("psutil")
    sizes = latency.LatencySizes(connections=3, warmup=0.05, serve_timeout=0.3)
    result = latency.latency_scenario(sizes).run(
        Context(binary=native, sizes=Sizes.quick()), MODELS["sync"]
    )
    assert result.skipped == "limited: only 1 of 3 connections were answered within 0.3 s"
    assert "sync: limited" in latency.render_latency(_report(sync=result.to_json()))
