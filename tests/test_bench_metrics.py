"""The bench's ``trio-metrics`` (issue 15): the trio model with ``--metrics``, scraped while it is
measured; ``trio-metrics ÷ trio`` under the table and the metrics-overhead targets.

Pure pieces on hand-made reports (the ratio, its spread, the targets, the scrape check), and one
real server scraped through a little echo traffic (about a second): no benchmark runs here.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from trio_echo.bench import scrape
from trio_echo.bench.lineup import METRICS_MODEL, bench_models, model_entry
from trio_echo.bench.markdown import render_markdown
from trio_echo.bench.overhead import metrics_overhead, pair_ratios
from trio_echo.bench.report import render_table
from trio_echo.bench.scenarios import Context, Sizes
from trio_echo.bench.server import VARIANTS, ServerProcess, server_command
from trio_echo.bench.targets import METRICS_FIGURES, TARGETS, evaluate
from trio_echo.models import MODELS

# ---- the variant ------------------------------------------------------------------------------


def test_trio_metrics_is_the_trio_model_with_an_endpoint_the_bench_scrapes():
    assert METRICS_MODEL.entry == MODELS["trio"].entry
    assert METRICS_MODEL.unsupported == MODELS["trio"].unsupported
    assert "trio-metrics" not in MODELS
    assert list(bench_models())[:6] == [
        "trio",
        "trio-bare",
        "trio-w2",
        "trio-wauto",
        "trio-nohub",
        "trio-metrics",
    ]
    assert server_command("trio-metrics", ["--echo"])[1:] == [
        *("-m", "trio_echo", "--model", "trio", "--metrics", "127.0.0.1:0"),
        *("--port", "0", "--log-level", "notice", "--echo"),
    ]
    assert "--metrics" not in server_command("trio", ["--echo"])
    assert VARIANTS["trio-metrics"].scraped
    assert not any(v.scraped for name, v in VARIANTS.items() if name != "trio-metrics")
    assert model_entry(METRICS_MODEL)["variant"] == {
        "model": "trio",
        "flags": ["--metrics", "127.0.0.1:0"],
    }
    # On the servers' CPUs, like trio.
    ctx = Context(binary=Path("loadgen"), sizes=Sizes.quick(), server_cpus=(0,), all_cpus=(0, 1))
    assert ctx.cpus_for(METRICS_MODEL) == ctx.cpus_for(MODELS["trio"]) == (0,)


# ---- the scrapes ------------------------------------------------------------------------------

PAGE = """\
# HELP trio_echo_connections_accepted_total Clients accepted.
# TYPE trio_echo_connections_accepted_total counter
trio_echo_connections_accepted_total 3
trio_echo_connections_active 0
trio_echo_received_bytes_total 1.5e+03
trio_echo_connections_closed_total{reason="client"} 3
"""


def test_a_page_is_read_by_series_and_the_endpoint_from_the_log():
    samples = scrape.parse(PAGE)
    assert samples[scrape.ACCEPTED] == 3
    assert samples[scrape.RECEIVED] == 1500
    assert samples['trio_echo_connections_closed_total{reason="client"}'] == 3
    assert not any(key.startswith("#") for key in samples)
    log = "04:00:00.000 NOTICE metrics at http://127.0.0.1:41237/metrics\n"
    assert scrape.metrics_port(log) == 41237
    assert scrape.metrics_port("NOTICE listening on 127.0.0.1:5") is None


def _scraper(scrapes: int = 3, failures: tuple[str, ...] = ()) -> scrape.Scraper:
    scraper = scrape.Scraper(9)
    scraper.scrapes = scrapes
    scraper.failures = list(failures)
    scraper.slowest = 0.0042
    return scraper


def test_the_closing_scrape_must_equal_the_servers_summary():
    final = scrape.parse(PAGE)
    ok = scrape.check(_scraper(), final, (3, 1500))
    assert ok == {
        "interval_s": scrape.SCRAPE_INTERVAL,
        "scrapes": 3,
        "failed": 0,
        "slowest_ms": 4.2,
        "accepted": 3,
        "received_bytes": 1500,
        "matches": True,
    }
    wrong = scrape.check(_scraper(), final, (4, 1500))
    assert not wrong["matches"]
    assert wrong["mismatch"] == "scraped accepted 3 != 4 (the server's summary)"
    busy = scrape.check(_scraper(), {**final, scrape.ACTIVE: 2.0}, (3, 1500))
    assert busy["mismatch"] == "2 clients still connected 5 s after the load"
    del final[scrape.ACTIVE]
    assert scrape.check(_scraper(), final, (3, 1500))["mismatch"] == (
        "no trio_echo_connections_active in the closing scrape"
    )
    final[scrape.ACTIVE] = 0.0
    assert scrape.check(_scraper(), None, (3, 1500))["mismatch"] == "no closing scrape answered"
    assert scrape.check(_scraper(), final, None)["mismatch"] == "the server logged no summary"
    failed = scrape.check(_scraper(failures=("TimeoutError: timed out",)), final, (3, 1500))
    assert not failed["matches"]
    assert failed["failed"] == 1
    assert failed["first_failure"] == "TimeoutError: timed out"
    assert failed["mismatch"] == "1 scrapes failed"


def test_a_server_is_scraped_while_measured_and_checked_when_it_stops():
    """A real trio-metrics server: scraped during a block of echo traffic, then its closing
    scrape equals its summary; a server never measured is never scraped."""
    with scrape.ScrapedServer("trio-metrics", ["--echo", "--quiet"]) as server:
        with server.measuring():
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                    sock.sendall(b"x" * 99 + b"\n")
                    got = b""
                    while len(got) < 100:
                        chunk = sock.recv(100)
                        assert chunk
                        got += chunk
        server.stop()
        figures = server.figures()["scrape"]
    assert figures["matches"], figures
    assert figures["accepted"] == 3
    assert figures["received_bytes"] == 300
    assert figures["scrapes"] >= 2  # at least the one at the start and the closing one
    with scrape.ScrapedServer("trio-metrics", ["--echo", "--quiet"]) as idle:
        idle.stop()
        assert idle.figures() == {}
        assert idle.scraper.scrapes == 0


def test_a_server_that_names_no_endpoint_is_one_line():
    # The trio model without --metrics, watched: no endpoint to scrape.
    with pytest.raises(scrape.ServerError, match="named no metrics endpoint"):
        scrape.ScrapedServer("trio", ["--echo", "--quiet"])
    with ServerProcess("trio", ["--echo", "--quiet"]) as plain:
        with plain.measuring():
            pass
        assert plain.figures() == {}


# ---- trio-metrics ÷ trio ----------------------------------------------------------------------


def _echo(runs: list[float], other_cpu: float = 0.0, **more: Any) -> dict[str, Any]:
    return {
        "requests_per_s": sorted(runs)[len(runs) // 2],
        "requests_per_s_max": max(runs),
        "requests_per_s_runs": runs,
        "other_cpu": other_cpu,
        **more,
    }


def _stream(runs: list[float], **more: Any) -> dict[str, Any]:
    return {"mb_per_s": sorted(runs)[len(runs) // 2], "mb_per_s_runs": runs, **more}


MATCHED = {"interval_s": 1.0, "scrapes": 5, "failed": 0, "matches": True}


def _report() -> dict[str, Any]:
    return {
        "scenario_titles": {
            "echo_100x64": "echo 100 conn × 64 B",
            "stream_raw": "stream --raw",
            "stream_text_64": "stream text, 64B lines",
        },
        "models": {
            "trio": {
                "scenarios": {
                    "echo_100x64": _echo([100.0, 102.0, 98.0]),
                    "stream_raw": _stream([2000.0, 1900.0, 2100.0]),
                    "stream_text_64": _stream([600.0]),
                    "storm_busy": {"total_s": 0.05},
                }
            },
            "trio-metrics": {
                "scenarios": {
                    "echo_100x64": _echo([99.0, 96.0, 99.0], scrape=MATCHED),
                    "stream_raw": _stream(
                        [1800.0, 1950.0, 2000.0],
                        scrape={**MATCHED, "matches": False, "mismatch": "scraped x != y"},
                    ),
                    "stream_text_64": {"skipped": "failed: boom"},
                    "storm_busy": {"total_s": 0.06},
                }
            },
        },
    }


def test_pairs_of_runs_taken_side_by_side():
    assert pair_ratios([99.0, 96.0, 99.0], [100.0, 102.0, 98.0]) == [0.99, 0.941, 1.01]
    assert pair_ratios([1.0, 2.0], [0.0, 4.0, 5.0]) == [0.5]  # no ratio to 0; the shorter list
    assert pair_ratios([], [1.0]) == []


def test_trio_metrics_over_trio_with_its_spread_and_its_scrapes():
    found = metrics_overhead(_report())
    assert found is not None
    assert found["models"] == ["trio-metrics", "trio"]
    assert found["ratios"] == {"echo_100x64": 0.99, "stream_raw": round(1950 / 2000, 3)}
    assert found["lowest"] == 0.975
    assert found["not_compared"] == ["stream_text_64"]  # skipped; storms are no throughput
    echo = found["figures"][0]
    assert echo["pairs"] == [0.99, 0.941, 1.01]
    assert echo["scrape"] == MATCHED
    text = found["text"]
    assert text.startswith("trio-metrics ÷ trio: what --metrics costs, scraped every 1 s")
    assert "target ≥ 0.97×" in text
    assert "0.99×  pairs 0.94–1.01, median 0.99 (3)  5 scrapes, totals match" in text
    assert "MISMATCH: scraped x != y" in text
    assert "≥ 0.97× in 2 of 2 scenarios; lowest 0.97× (stream --raw)" in text
    assert "not compared (skipped or limited): stream_text_64" in text
    # Under the table, and in the markdown page.
    assert text in render_table(_report())
    assert "## What --metrics costs" in render_markdown(_report(), plot_name=None)


def test_other_work_is_named_and_nothing_to_compare_is_no_section():
    report = _report()
    report["models"]["trio"]["scenarios"]["echo_100x64"]["other_cpu"] = 0.6
    assert "(other work: 0.60 cores)" in metrics_overhead(report)["text"]  # type: ignore[index]
    del report["models"]["trio-metrics"]
    assert metrics_overhead(report) is None
    assert "what --metrics costs" not in render_table(report)
    only_storms = _report()
    for name in ("trio", "trio-metrics"):
        scenarios = only_storms["models"][name]["scenarios"]
        only_storms["models"][name]["scenarios"] = {"storm_busy": scenarios["storm_busy"]}
    assert metrics_overhead(only_storms) is None


# ---- the targets ------------------------------------------------------------------------------


def test_the_metrics_overhead_targets_are_the_median_ratio_on_echo_and_streaming():
    metrics = [t for t in TARGETS if t.key.startswith("metrics_")]
    assert [t.numerator.scenario for t in metrics] == [key for key, _, _ in METRICS_FIGURES]
    assert {t.numerator.scenario for t in metrics} >= {
        "echo_100x64",
        "echo_1000x1024",
        "stream_raw",
        "stream_text_64",
        "stream_text_4k",
    }
    for target in metrics:
        assert (target.numerator.model, target.denominator.model) == ("trio-metrics", "trio")  # type: ignore[union-attr]
        assert target.numerator.field == target.denominator.field  # type: ignore[union-attr]
        assert target.numerator.field in ("requests_per_s", "mb_per_s")  # medians
        assert (target.comparison, target.threshold, target.unit) == (">=", 0.97, "×")
    by_key = {e.target.key: e for e in evaluate(_report(), metrics)}
    assert by_key["metrics_echo_100x64"].status == "pass"  # 99 / 100
    assert by_key["metrics_echo_100x64"].value == pytest.approx(0.99)
    assert by_key["metrics_stream_raw"].status == "pass"  # 1950 / 2000 = 0.975
    assert by_key["metrics_stream_text_64"].status == "not measured"
    assert by_key["metrics_echo_1000x1024"].why == "trio-metrics echo_1000x1024 not run"
    # 96 / 100 fails, and says so with the other work measured meanwhile.
    report = _report()
    report["models"]["trio-metrics"]["scenarios"]["echo_100x64"]["requests_per_s"] = 96.0
    report["models"]["trio"]["scenarios"]["echo_100x64"]["other_cpu"] = 0.5
    (failed,) = (e for e in evaluate(report, metrics) if e.target.key == "metrics_echo_100x64")
    assert failed.status == "FAIL"
    assert failed.noisy
    assert "metrics overhead, echo 100×64 B req/s: trio-metrics ÷ trio: 0.96×" in failed.line()
    assert "maybe noise" in failed.line()
