"""``python -m trio_echo bench``: the quick run end to end, and the pure pieces (percentiles, the
table, the load generator's build cache).

The end-to-end test runs the real thing -- every model as a server subprocess, the compiled C
load generator -- with ``--quick`` sizes, and checks the JSON: every model, every scenario,
each with figures or a reason it was skipped.  It needs a C compiler (the bench refuses to run
without one rather than fall back to an unfair client), so it is skipped where there is none.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from trio_echo.bench import loadgen
from trio_echo.bench.report import headroom, render_table
from trio_echo.bench.scenarios import Sizes, scenarios_for
from trio_echo.bench.stats import merge_histograms, percentile
from trio_echo.models import MODELS

QUICK_TIMEOUT = 120

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


# ---- percentiles ------------------------------------------------------------------------------


def test_percentile_is_nearest_rank():
    histogram = [[10, 50], [20, 49], [1000, 1]]  # 100 samples
    assert percentile(histogram, 0.5) == 10
    assert percentile(histogram, 0.51) == 20
    assert percentile(histogram, 0.99) == 20
    assert percentile(histogram, 1.0) == 1000
    assert percentile(histogram, 0.0) == 10


def test_percentile_ignores_order_and_empty_buckets():
    assert percentile([[30, 1], [10, 0], [20, 1]], 0.5) == 20
    assert percentile([], 0.5) is None
    assert percentile([[5, 0]], 0.99) is None


def test_percentile_of_a_single_sample_is_that_sample():
    assert percentile([[42, 1]], 0.5) == percentile([[42, 1]], 0.99) == 42


def test_percentile_rejects_a_fraction_outside_0_1():
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([[1, 1]], 50)


def test_merge_histograms_adds_counts():
    assert merge_histograms([[1, 2], [3, 1]], [[3, 4], [2, 1]]) == [[1, 2], [2, 1], [3, 5]]


# ---- the table --------------------------------------------------------------------------------


def _report() -> dict[str, object]:
    echo = {
        "connections": 100,
        "message_bytes": 64,
        "requests_per_s": 65123.4,
        "p50_ms": 1.5,
        "p99_ms": 2.5,
        "max_ms": 4.0,
        "server_cpu": 0.99,
        "loadgen_cpu": 0.4,
        "loadgen_saturated": False,
    }
    return {
        "scenario_titles": {"echo_100x64": "echo 100 conn × 64 B", "idle_memory": "memory"},
        "models": {
            "trio": {"scenarios": {"echo_100x64": echo, "idle_memory": {"kb_per_connection": 5.4}}},
            "sync": {
                "scenarios": {
                    "echo_100x64": {"skipped": "limited: only 1 of 100", "partial": echo},
                    "idle_memory": {"skipped": "limited: only 1 of 5000"},
                }
            },
            "uvloop": {"skipped": "uvloop is not installed", "scenarios": {}},
        },
    }


def test_table_has_a_column_per_model_and_notes_for_skips():
    table = render_table(_report())
    header = table.splitlines()[0]
    assert header.split()[:2] == ["scenario", "figure"]
    assert header.split()[2:] == ["trio", "sync", "uvloop"]
    assert "65.1k" in table
    assert "1.50 / 2.50 / 4.00" in table
    assert "5.40" in table
    # Skipped cells point to numbered notes that give the reason.
    assert "limited [1]" in table
    assert "[1] sync, echo 100 conn × 64 B: limited: only 1 of 100" in table
    assert "uvloop is not installed" in table
    assert "load generator headroom" in table


def test_saturated_load_generator_is_marked_and_named():
    report = _report()
    figures = report["models"]["trio"]["scenarios"]["echo_100x64"]  # type: ignore[index]
    figures["loadgen_saturated"] = True
    figures["loadgen_cpu"] = 0.97
    table = render_table(report)
    assert "65.1k*" in table
    room = headroom(report)
    assert room is not None
    assert room["saturated"] == ["trio echo_100x64"]
    assert room["model"] == "trio"


def test_the_full_run_has_every_scenario_of_the_issue():
    keys = [s.key for s in scenarios_for(Sizes())]
    assert keys[0] == "article"
    assert {"echo_1x64", "echo_1000x1024", "stream_raw", "stream_text", "idle_memory"} <= set(keys)
    assert {"storm", "shutdown"} <= set(keys)


# ---- the load generator -----------------------------------------------------------------------


def test_loadgen_source_ships_with_the_package():
    assert b"epoll_wait" in loadgen.source()


@needs_cc
def test_loadgen_is_built_once_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = loadgen.build()
    assert first.parent == tmp_path / "trio_echo"
    mtime = first.stat().st_mtime_ns
    assert loadgen.build() == first
    assert first.stat().st_mtime_ns == mtime


def test_no_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(loadgen.shutil, "which", lambda name: None)
    with pytest.raises(loadgen.LoadgenError, match="no C compiler"):
        loadgen.build()


def test_loadgen_refuses_non_loopback_hosts(tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    binary = loadgen.build()
    result = subprocess.run(
        [str(binary), "echo", "-H", "10.0.0.1", "-p", "9", "-d", "1"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr


# ---- the command line -------------------------------------------------------------------------


def _bench(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_echo", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_unknown_model_is_a_usage_error():
    result = _bench("--models", "nope")
    assert result.returncode == 2
    assert "unknown model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_cc
@pytest.mark.slow
def test_quick_run_compares_every_model_in_every_scenario(tmp_path):
    pytest.importorskip("matplotlib")
    out_json = tmp_path / "out.json"
    out_png = tmp_path / "out.png"
    result = _bench(
        "--quick", "--json", str(out_json), "--plot", str(out_png), timeout=QUICK_TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out_json.read_text())

    machine = report["machine"]
    for key in ("cpu", "cores", "python", "trio", "asyncio", "uvloop"):
        assert key in machine
    assert machine["cores"] >= 1
    assert report["loadgen"]["headroom"] is not None

    keys = [s.key for s in scenarios_for(Sizes.quick())]
    assert set(report["models"]) == set(MODELS)
    for name, entry in report["models"].items():
        assert list(entry["scenarios"]) == keys, name
        for key, figures in entry["scenarios"].items():
            if "skipped" in figures:
                assert isinstance(figures["skipped"], str), (name, key)
                assert figures["skipped"], (name, key)
                continue
            numbers = [v for v in figures.values() if isinstance(v, (int, float))]
            assert numbers, (name, key, figures)
    # The Trio model can do everything; a failure there is a bug, not a limitation.
    trio = report["models"]["trio"]["scenarios"]
    assert not [key for key, figures in trio.items() if "skipped" in figures]
    assert trio["article"]["clients_fully_served"] == 4
    assert trio["echo_100x64"]["requests_per_s"] > 0
    assert trio["shutdown"]["exit_status"] == 0
    # The blocking model serves one client at a time: the article's point.
    if "sync" in report["models"]:
        assert report["models"]["sync"]["scenarios"]["article"]["lines_served"][1:] == [0, 0, 0]

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table is on stdout, the progress on stderr.
    assert "requests/s" in result.stdout
    assert "trio" in result.stderr


def test_from_json_rebuilds_the_table_without_running(tmp_path):
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_report()))
    result = _bench("--from-json", str(saved))
    assert result.returncode == 0, result.stderr
    assert "65.1k" in result.stdout
    assert "limited [1]" in result.stdout


def test_plot_without_matplotlib_is_one_line_and_status_1(tmp_path, monkeypatch, capsys):
    from trio_echo.bench import cli

    real_find_spec = cli.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "matplotlib" else real_find_spec(name, *args)

    monkeypatch.setattr(cli.importlib.util, "find_spec", find_spec)
    assert cli.main(["--quick", "--plot", str(tmp_path / "out.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "matplotlib" in err
    assert not (tmp_path / "out.png").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_rewritten_line_on_a_terminal_and_plain_lines_otherwise():
    from trio_echo.bench.cli import Progress

    tty = _Terminal()
    progress = Progress(2, tty)
    progress.step("trio: echo")
    progress.step("trio: storm")
    progress.close()
    assert "\n" not in tty.getvalue()
    assert tty.getvalue().count("\r") == 3
    assert "[###############...............] 1/2" in tty.getvalue()

    log = io.StringIO()
    progress = Progress(2, log)
    progress.step("trio: echo")
    progress.step("trio: storm")
    lines = log.getvalue().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["bench [1/2] 0 s", "bench [2/2] 0 s"]
