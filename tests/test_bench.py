"""``python -m trio_echo bench``: the quick run end to end, and the pure pieces (percentiles, the
table, the performance targets, the load generator's build cache).

The end-to-end test runs the real thing -- every model as a server subprocess, the compiled C
load generator -- with ``--quick`` sizes, and checks the JSON: every model, every scenario,
each with figures or a reason it was skipped.  It needs a C compiler (the bench refuses to run
without one rather than fall back to an unfair client), so it is skipped where there is none.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_echo.bench import baseline, loadgen
from trio_echo.bench import server as bench_server
from trio_echo.bench.cli import NOHUB_MODEL, W2_MODEL, bench_models
from trio_echo.bench.lineup import OPT_IN, model_entry, with_baseline
from trio_echo.bench.ratios import accelerator_gain, baseline_gain
from trio_echo.bench.report import headroom, render_table, render_targets, workers_gain
from trio_echo.bench.scenarios import Context, Sizes, _median_index, scenarios_for
from trio_echo.bench.server import (
    CLOCK_TICKS,
    ServerProcess,
    process_tree,
    server_command,
    server_environment,
)
from trio_echo.bench.stats import merge_histograms, percentile
from trio_echo.bench.targets import TARGETS, Figure, Target, evaluate
from trio_echo.models import MODELS

QUICK_TIMEOUT = 180  # every model (9 with trio-nohub) on a machine that may be busy

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
needs_git = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("tar") is None, reason="no git or tar"
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


def test_the_table_gives_the_2_worker_gain_over_trio():
    report = _report()
    trio_echo = report["models"]["trio"]["scenarios"]["echo_100x64"]  # type: ignore[index]
    report["models"]["trio-w2"] = {  # type: ignore[index]
        "summary": "the trio model with --workers 2",
        "variant": {"model": "trio", "flags": ["--workers", "2"]},
        "cpus": [0, 1],
        "scenarios": {
            "echo_100x64": {**trio_echo, "requests_per_s": 97685.1},
            "idle_memory": {"kb_per_connection": 5.0},
        },
    }
    gain = workers_gain(report)
    assert gain is not None
    assert gain["ratios"] == {"echo_100x64": 1.5}  # idle_memory has no gain figure
    table = render_table(report)
    assert "trio-w2 ÷ trio (echo: requests/s, streams: MB/s): echo 100 conn × 64 B 1.50×" in table
    assert "trio-w2: the trio model with --workers 2 (CPUs 0,1)" in table
    # Without trio-w2 (or trio) there is no such line.
    del report["models"]["trio-w2"]  # type: ignore[attr-defined]
    assert workers_gain(report) is None
    assert "÷" not in render_table(report)


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
    assert {"echo_1x64", "echo_100x64", "echo_1000x1024", "stream_raw", "idle_memory"} <= set(keys)
    assert {"stream_text_64", "stream_text_4k", "storm", "storm_busy", "shutdown", "c10k"} <= set(
        keys
    )
    # Every target reads a scenario of the full run, and a model the bench knows.
    for target in TARGETS:
        for figure in (target.numerator, target.denominator):
            if figure is not None:
                assert figure.scenario in keys, target.key
                assert figure.model in bench_models(), target.key


def test_the_quick_sizes_stay_tiny():
    quick = Sizes.quick()
    assert quick.repeats == 1
    assert quick.many_connections <= 500
    assert quick.busy_storm_clients <= 200
    assert Sizes.quick(2.0, 3) == attrs.evolve(quick, duration=2.0, repeats=3)


def test_the_median_run_is_the_middle_one():
    assert _median_index([3.0, 1.0, 2.0]) == 2
    assert _median_index([5.0]) == 0
    assert _median_index([4.0, 1.0, 3.0, 2.0]) == 3  # the lower of the middle two


def test_bench_models_put_the_reference_and_the_trio_variants_after_trio():
    names = list(bench_models())
    assert names[:5] == ["trio", "trio-bare", "trio-w2", "trio-wauto", "trio-nohub"]
    assert set(names) == {
        *MODELS,
        *("trio-bare", "trio-w2", "trio-wauto", "trio-nohub", "trio-metrics", "c-sink"),
    }
    assert {"trio-wauto"} == OPT_IN  # known, run only when named
    assert server_command("trio-wauto", [])[3:7] == ["--model", "trio", "--workers", "auto"]
    # All three are the bench's: the CLI's --model does not know them.
    assert "trio-bare" not in MODELS
    assert "trio-w2" not in MODELS
    assert "trio-nohub" not in MODELS
    # trio-w2 is the trio model (it can do whatever trio can), run with --workers 2.
    assert W2_MODEL.entry == MODELS["trio"].entry
    assert W2_MODEL.unsupported == MODELS["trio"].unsupported
    assert server_command("trio-w2", ["--echo"])[1:] == [
        *("-m", "trio_echo", "--model", "trio", "--workers", "2"),
        *("--port", "0", "--log-level", "notice", "--echo"),
    ]
    assert "--workers" not in server_command("trio", ["--echo"])


def test_the_2_worker_trio_runs_on_every_cpu_the_others_on_the_servers_cpus():
    ctx = Context(binary=Path("loadgen"), sizes=Sizes.quick(), server_cpus=(0,), all_cpus=(0, 1))
    assert ctx.cpus_for(W2_MODEL) == (0, 1)
    assert ctx.cpus_for(MODELS["trio"]) == (0,)
    assert ctx.cpus_for(bench_models()["trio-bare"]) == (0,)
    unpinned = Context(binary=Path("loadgen"), sizes=Sizes.quick())
    assert unpinned.cpus_for(W2_MODEL) is None
    # On 16 cores (cli.pin_cpus: 10 for the servers, 6 for the load generators), the servers'
    # CPUs, which --workers auto counts.
    big = Context(
        binary=Path("loadgen"),
        sizes=Sizes.quick(),
        server_cpus=tuple(range(10)),
        all_cpus=tuple(range(16)),
        loadgen_cpus=tuple(range(10, 16)),
    )
    assert big.cpus_for(W2_MODEL) == tuple(range(10))
    assert big.cpus_for(bench_models()["trio-wauto"]) == tuple(range(10))


# ---- trio-nohub, --baseline and the ratios of the same run -----------------------------------


def test_trio_nohub_is_the_trio_model_without_its_accelerator():
    assert NOHUB_MODEL.entry == MODELS["trio"].entry
    assert NOHUB_MODEL.unsupported == MODELS["trio"].unsupported
    assert server_command("trio-nohub", ["--echo"])[1:] == [
        *("-m", "trio_echo", "--model", "trio", "--no-accelerator"),
        *("--port", "0", "--log-level", "notice", "--echo"),
    ]
    assert "--no-accelerator" not in server_command("trio", ["--echo"])
    # It runs where trio runs, from this checkout.
    ctx = Context(binary=Path("loadgen"), sizes=Sizes.quick(), server_cpus=(0,), all_cpus=(0, 1))
    assert ctx.cpus_for(NOHUB_MODEL) == (0,)
    assert server_environment("trio-nohub") == server_environment("trio") == (None, None)
    assert model_entry(NOHUB_MODEL)["variant"] == {"model": "trio", "flags": ["--no-accelerator"]}


@pytest.fixture
def variants():
    """The bench's variants restored after the test (``baseline.register`` adds one)."""
    saved = dict(bench_server.VARIANTS)
    yield bench_server.VARIANTS
    bench_server.VARIANTS.clear()
    bench_server.VARIANTS.update(saved)


def _fake_baseline(source: Path) -> baseline.Baseline:
    return baseline.Baseline(
        "abc1234" + "0" * 33, "abc1234", "the subject", source, source / "trio_echo/__init__.py"
    )


def test_a_baseline_runs_the_trio_model_from_its_own_tree(tmp_path, variants, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    model = baseline.register(_fake_baseline(tmp_path))
    assert model.name == "trio@abc1234"
    assert model.entry == MODELS["trio"].entry
    assert "commit abc1234 (the subject)" in model.summary
    # The same command line as trio's, started in the tree, with the tree first on PYTHONPATH
    # (python -m puts the working directory first on sys.path: not this checkout's).
    assert server_command(model.name, ["--echo"]) == server_command("trio", ["--echo"])
    cwd, env = server_environment(model.name)
    assert cwd == tmp_path
    assert env is not None
    assert env["PYTHONPATH"] == f"{tmp_path}{os.pathsep}/elsewhere"
    ctx = Context(binary=Path("loadgen"), sizes=Sizes.quick(), server_cpus=(0,), all_cpus=(0, 1))
    assert ctx.cpus_for(model) == (0,)
    assert model_entry(model)["variant"] == {
        "model": "trio",
        "flags": [],
        "revision": "abc1234" + "0" * 33,
        "source": str(tmp_path),
    }


_TINY_EXTENSION = """
#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tiny", NULL, 0, NULL};
PyMODINIT_FUNC PyInit__tiny(void) { return PyModuleDef_Init(&module); }
"""


def _tree_with_extension(root: Path, source: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "_tiny.c").write_text(source)
    (root / "pyproject.toml").write_text(
        '[[tool.setuptools.ext-modules]]\nname = "pkg._tiny"\nsources = ["pkg/_tiny.c"]\n'
    )
    return root


@needs_cc
@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_a_baseline_gets_the_c_extensions_its_pyproject_declares(tmp_path, variants):
    # As an install of that revision would: else trio@REV would run the pure-Python fallback
    # of text mode's safety scan, and trio ÷ trio@REV would credit this checkout with the C.
    built = _tree_with_extension(tmp_path / "good", _TINY_EXTENSION)
    assert baseline.build_extensions(built) is None
    assert list((built / "pkg").glob("_tiny*.so"))
    assert baseline.build_extensions(built) is None  # again: a no-op
    broken = _tree_with_extension(tmp_path / "broken", "this is not C")
    why = baseline.build_extensions(broken)
    assert why is not None
    assert why.startswith("its C extensions were not built (")
    assert not list((broken / "pkg").glob("_tiny*.so"))
    model = baseline.register(attrs.evolve(_fake_baseline(broken), unbuilt=why))
    assert model.summary.endswith(f"; {why}")  # the report says what it ran
    none = tmp_path / "none"
    none.mkdir()
    (none / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert baseline.build_extensions(none) is None


def test_the_baseline_comes_right_after_trio():
    assert with_baseline(["trio", "trio-nohub", "asyncio"], "trio@x") == [
        "trio",
        "trio@x",
        "trio-nohub",
        "asyncio",
    ]
    assert with_baseline(["asyncio"], "trio@x") == ["trio@x", "asyncio"]
    assert with_baseline(["trio@x", "trio"], "trio@x") == ["trio@x", "trio"]  # where named


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# A stand-in for the server of another revision: it says where it was imported from, then
# serves nothing until SIGTERM (what ServerProcess needs: a listening line on stderr).
def _has_line(text: str, start: str) -> bool:
    """Whether `text` holds a whole line (newline included) that begins with `start`."""
    lines = text.splitlines(keepends=True)
    return any(line.startswith(start) and line.endswith("\n") for line in lines)


FAKE_MAIN = """\
import signal, sys, time, trio_echo
print("NOTICE listening on 127.0.0.1:4242, [::1]:4242 (print, text)", file=sys.stderr)
print("from", trio_echo.__file__, "args", " ".join(sys.argv[1:]), file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(30)
"""


@needs_git
def test_a_revision_is_exported_once_and_its_server_imports_it(tmp_path, variants):
    repo = tmp_path / "repo"
    package = repo / "trio_echo"
    package.mkdir(parents=True)
    _git(repo, "init", "-q")
    (package / "__init__.py").write_text("VERSION = 'before'\n")
    (package / "__main__.py").write_text(FAKE_MAIN)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "before the rewrite")
    before = _git(repo, "rev-parse", "HEAD")
    (package / "__init__.py").write_text("VERSION = 'after'\n")
    _git(repo, "commit", "-q", "-am", "after")

    found = baseline.prepare(before[:7], repo=package)  # any directory of the checkout
    assert found.revision == before
    assert found.short == before[:7]
    assert found.name == f"trio@{before[:7]}"
    assert found.subject == "before the rewrite"
    assert found.source == repo / "build" / f"baseline-{before[:7]}"
    assert (found.source / "trio_echo/__init__.py").read_text() == "VERSION = 'before'\n"
    assert found.imports == found.source / "trio_echo/__init__.py"
    assert not (found.source / ".git").exists()
    # Exported once: a second run reuses the directory.
    (found.source / "left-by-the-first-run").touch()
    assert baseline.prepare(before, repo=repo) == found
    assert (found.source / "left-by-the-first-run").exists()

    # Its server, started from this checkout's working directory (where `python -m trio_echo`
    # would find this checkout's package first), imports the exported tree.
    model = baseline.register(found)
    with ServerProcess(model.name, ["--echo"]) as server:
        assert server.port == 4242
        # The line may arrive in pieces: poll for all of it, ending in its newline.
        expected = f"from {found.source / 'trio_echo/__init__.py'} args --model trio"
        deadline = time.monotonic() + 10
        while not _has_line(server.stderr, "from ") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert expected in server.stderr
        assert server.stop()[0] == 0


@needs_git
def test_a_revision_that_cannot_be_run_is_one_line(tmp_path):
    with pytest.raises(baseline.BaselineError, match="not a git repository") as info:
        baseline.prepare("HEAD", repo=tmp_path)
    assert "\n" not in str(info.value)
    _git(tmp_path, "init", "-q")
    (tmp_path / "README").write_text("no package here\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "no package")
    with pytest.raises(baseline.BaselineError, match="unknown git revision 'nope'"):
        baseline.prepare("nope", repo=tmp_path)
    with pytest.raises(baseline.BaselineError, match="not a git revision"):
        baseline.prepare("--all", repo=tmp_path)
    # A tree without trio_echo: a server started there would import another one.
    with pytest.raises(baseline.BaselineError, match=r"would import .* instead"):
        baseline.prepare("HEAD", repo=tmp_path)


def _compared_report() -> dict[str, Any]:
    """trio, trio@abc1234 and trio-nohub with fake figures: trio better than before in echo
    and memory, worse in the storm; the hub worth 1.25x in echo."""

    def models(rps: float, best: float, storm: float, rss: int, exit_after: float) -> Any:
        return {
            "scenarios": {
                "echo_100x64": {
                    "requests_per_s": rps,
                    "requests_per_s_max": best,
                    "other_cpu": 0.01,
                },
                "stream_raw": {"skipped": "failed: server did not start"},
                "storm_busy": {"total_s": storm, "total_s_min": storm / 2, "other_cpu": 0.6},
                "c10k": {"bytes_per_connection": rss, "exit_after_grace_s": exit_after},
                "article": {"clients_fully_served": 4},
            }
        }

    return {
        "scenario_titles": {
            "echo_100x64": "echo 100 conn × 64 B",
            "storm_busy": "storm of 1000, 100 busy",
            "c10k": "10000 conns",
        },
        "baseline": {"model": "trio@abc1234", "revision": "abc1234" + "0" * 33},
        "models": {
            "trio": models(100_000.0, 110_000.0, 0.06, 4200, 0.2),
            "trio@abc1234": models(80_000.0, 110_000.0, 0.05, 6000, 0.2),
            "trio-nohub": models(80_000.0, 88_000.0, 0.12, 4200, 0.4),
        },
    }


def test_trio_over_the_baseline_per_figure_from_one_run():
    report = _compared_report()
    gain = baseline_gain(report)
    assert gain is not None
    assert gain["models"] == ["trio", "trio@abc1234"]
    assert gain["ratios"] == {
        "echo_100x64": {"requests_per_s": 1.25, "requests_per_s_max": 1.0},
        "storm_busy": {"total_s": 1.2, "total_s_min": 1.2},
        "c10k": {"bytes_per_connection": 0.7, "exit_after_grace_s": 1.0},
    }
    verdicts = {(f["scenario"], f["figure"]): f["at_least_as_good"] for f in gain["figures"]}
    assert verdicts == {
        ("echo_100x64", "requests_per_s"): True,  # higher is better
        ("echo_100x64", "requests_per_s_max"): True,  # level
        ("storm_busy", "total_s"): False,  # lower is better: 0.06 s is worse than 0.05 s
        ("storm_busy", "total_s_min"): False,
        ("c10k", "bytes_per_connection"): True,
        ("c10k", "exit_after_grace_s"): True,
    }
    assert gain["at_least_as_good"] == 4
    assert gain["not_compared"] == ["stream_raw"]  # skipped; the article has no headline
    text = gain["text"]
    assert text.splitlines()[0].startswith("trio ÷ trio@abc1234: now over before")
    storm = next(line for line in text.splitlines() if "seconds, all served (median)" in line)
    assert "1.20×" in storm
    assert "(worse)" in storm
    assert "(other work: 0.60 cores)" in storm
    echo = next(line for line in text.splitlines() if "requests/s (median) ↑" in line)
    assert "1.25×" in echo
    assert "100.0k ÷ 80.0k" in echo
    assert "worse" not in echo
    assert "other work" not in echo
    assert "trio at least as good as trio@abc1234 on 4 of 6 figures" in text
    assert "not compared (skipped or limited): stream_raw" in text
    # In the table, after the model's summary; without a baseline there is no such section.
    table = render_table(report)
    assert text in table
    del report["baseline"]
    assert baseline_gain(report) is None
    assert "now over before" not in render_table(report)


def test_trio_over_trio_nohub_is_the_accelerators_worth():
    report = _compared_report()
    worth = accelerator_gain(report)
    assert worth is not None
    assert worth["models"] == ["trio", "trio-nohub"]
    assert worth["ratios"]["echo_100x64"] == {"requests_per_s": 1.25, "requests_per_s_max": 1.25}
    assert worth["ratios"]["storm_busy"] == {"total_s": 0.5, "total_s_min": 0.5}
    assert worth["ratios"]["c10k"] == {"bytes_per_connection": 1.0, "exit_after_grace_s": 0.5}
    assert worth["at_least_as_good"] == 6
    assert worth["text"].startswith("trio ÷ trio-nohub: the accelerator's worth")
    assert worth["text"] in render_table(report)
    # Nothing to compare: no line.
    del report["models"]["trio-nohub"]
    assert accelerator_gain(report) is None
    assert "accelerator's worth" not in render_table(report)


def test_a_zero_or_missing_reference_figure_is_not_compared():
    report = _compared_report()
    report["models"]["trio-nohub"]["scenarios"]["c10k"]["exit_after_grace_s"] = 0.0
    del report["models"]["trio-nohub"]["scenarios"]["echo_100x64"]["requests_per_s_max"]
    worth = accelerator_gain(report)
    assert worth is not None
    assert "c10k.exit_after_grace_s" in worth["not_compared"]
    assert "echo_100x64.requests_per_s_max" in worth["not_compared"]
    assert "exit_after_grace_s" not in worth["ratios"]["c10k"]


# ---- the targets ------------------------------------------------------------------------------


def _measured(**scenarios: dict[str, Any]) -> dict[str, Any]:
    """A report whose models ran the given scenarios: ``trio={"echo_100x64": {...}}``."""
    return {
        "models": {
            name.replace("_", "-"): {"scenarios": figures} for name, figures in scenarios.items()
        }
    }


RATIO = Target(
    "echo_vs_bare",
    "echo: trio ÷ trio-bare",
    Figure("trio", "echo_100x64", "requests_per_s"),
    ">=",
    0.9,
    Figure("trio-bare", "echo_100x64", "requests_per_s"),
    "×",
)
CEILING = Target("storm", "storm seconds", Figure("trio", "storm_busy", "total_s"), "<=", 0.1)


def test_a_ratio_target_passes_and_fails_on_figures_of_the_same_report():
    report = _measured(
        trio={"echo_100x64": {"requests_per_s": 95.0}},
        trio_bare={"echo_100x64": {"requests_per_s": 100.0}},
    )
    (passed,) = evaluate(report, [RATIO])
    assert passed.status == "pass"
    assert passed.value == pytest.approx(0.95)
    assert passed.inputs == {"trio requests_per_s": 95.0, "trio-bare requests_per_s": 100.0}
    report["models"]["trio"]["scenarios"]["echo_100x64"]["requests_per_s"] = 80.0
    (failed,) = evaluate(report, [RATIO])
    assert failed.status == "FAIL"
    assert failed.value == pytest.approx(0.8)
    assert "0.80×" in failed.line()
    assert "≥ 0.90×" in failed.line()


def test_a_ceiling_target_and_an_exact_one():
    exact = Target("status", "exit status", Figure("trio", "c10k", "exit_status"), "==", 0)
    report = _measured(trio={"storm_busy": {"total_s": 0.05}, "c10k": {"exit_status": 0}})
    assert [e.status for e in evaluate(report, [CEILING, exact])] == ["pass", "pass"]
    report = _measured(trio={"storm_busy": {"total_s": 0.5}, "c10k": {"exit_status": 1}})
    assert [e.status for e in evaluate(report, [CEILING, exact])] == ["FAIL", "FAIL"]


def test_unmeasured_inputs_are_not_failures():
    # The reference was not run at all.
    (alone,) = evaluate(_measured(trio={"echo_100x64": {"requests_per_s": 1.0}}), [RATIO])
    assert alone.status == "not measured"
    assert alone.why == "trio-bare was not run"
    # The scenario was skipped (not supported, not selected), or the model is not installed.
    report = _measured(
        trio={"echo_100x64": {"skipped": "failed: boom"}},
        trio_bare={"echo_100x64": {"requests_per_s": 100.0}},
    )
    (skipped,) = evaluate(report, [RATIO])
    assert skipped.status == "not measured"
    assert "failed: boom" in (skipped.why or "")
    (not_run,) = evaluate(_measured(trio={}), [CEILING])
    assert not_run.status == "not measured"
    missing = {"models": {"trio": {"skipped": "not installed", "scenarios": {}}}}
    assert evaluate(missing, [CEILING])[0].why == "trio: not installed"
    # A zero reference makes no ratio.
    report = _measured(
        trio={"echo_100x64": {"requests_per_s": 5.0}},
        trio_bare={"echo_100x64": {"requests_per_s": 0}},
    )
    assert evaluate(report, [RATIO])[0].status == "not measured"


def test_a_limited_result_is_measured_from_its_partial_figures():
    """The model under test serving only some of the storm is a failure, not a gap."""
    report = _measured(
        trio={"storm_busy": {"skipped": "limited: 10 of 1000", "partial": {"total_s": 30.0}}}
    )
    (limited,) = evaluate(report, [CEILING])
    assert limited.status == "FAIL"
    assert limited.value == 30.0


def test_other_work_during_a_measurement_marks_the_evaluation_noisy():
    report = _measured(
        trio={"echo_100x64": {"requests_per_s": 50.0, "other_cpu": 0.05}},
        trio_bare={"echo_100x64": {"requests_per_s": 100.0, "other_cpu": 0.4}},
    )
    (noisy,) = evaluate(report, [RATIO])
    assert noisy.status == "FAIL"
    assert noisy.other_cpu == 0.4
    assert noisy.noisy
    assert "maybe noise" in noisy.line()
    assert noisy.to_json()["noisy"] is True
    table = render_targets([noisy.to_json()])
    assert "FAIL (other work: 0.40 cores)" in "\n".join(table)
    report["models"]["trio-bare"]["scenarios"]["echo_100x64"]["other_cpu"] = 0.1
    assert not evaluate(report, [RATIO])[0].noisy


def test_a_run_without_the_trio_model_says_so_in_one_line():
    (line,) = render_targets([e.to_json() for e in evaluate({"models": {}})])
    assert line.startswith(f"targets: none of the {len(TARGETS)} measured")


def test_every_target_of_the_issue_is_evaluated_and_reported():
    evaluations = [e.to_json() for e in evaluate({"models": {}})]
    assert [e["key"] for e in evaluations] == [t.key for t in TARGETS]
    assert {e["status"] for e in evaluations} == {"not measured"}
    keys = {t.key for t in TARGETS}
    assert {"echo_vs_bare", "echo_vs_asyncio", "stream_raw_vs_bare"} <= keys
    assert {"text_64_lines", "text_4k_bytes", "storm_busy_time", "storm_busy_vs_bare"} <= keys
    assert {"c10k_served", "c10k_memory", "c10k_shutdown", "c10k_exit_status"} <= keys


def _targets_report(trio_rps: float) -> dict[str, Any]:
    report = _report()
    report["models"]["trio-bare"] = {  # type: ignore[index]
        "reference": True,
        "summary": "reference: bare",
        "scenarios": {"echo_100x64": {"requests_per_s_max": 50000.0}},
    }
    report["models"]["trio"]["scenarios"]["echo_100x64"]["requests_per_s_max"] = trio_rps  # type: ignore[index]
    return report


def test_check_from_json_fails_on_a_failed_target_only(tmp_path):
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_targets_report(trio_rps=40000.0)))
    result = _bench("--from-json", str(saved), "--check")
    assert result.returncode == 1, result.stderr
    failed = result.stderr.strip().splitlines()
    assert len(failed) == 1
    assert "target failed: echo 100×64 B best req/s: trio ÷ trio-bare: 0.80×" in failed[0]
    assert "FAIL" in result.stdout
    assert f"targets: 0 pass, 1 FAIL, {len(TARGETS) - 1} not measured" in result.stdout
    assert "trio-bare: reference: bare" in result.stdout
    # Without --check the same report is only a table.
    assert _bench("--from-json", str(saved)).returncode == 0
    # Passing and unmeasured targets: success.
    saved.write_text(json.dumps(_targets_report(trio_rps=50000.0)))
    result = _bench("--from-json", str(saved), "--check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"targets: 1 pass, 0 FAIL, {len(TARGETS) - 1} not measured" in result.stdout
    assert "not measured [t1]" in result.stdout
    assert "[t1] echo 100×64 B best req/s: trio ÷ warm asyncio: asyncio was not run" in (
        result.stdout
    )


# ---- the bare reference -----------------------------------------------------------------------


def test_the_bare_reference_echoes_and_exits_0_on_sigterm():
    with ServerProcess("trio-bare", ["--echo"]) as server:
        assert "python" in server.command[0]
        assert server.command[1:3] == ["-m", "trio_echo.bench.bare"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"hello\n")
            assert sock.recv(100) == b"hello\n"
            status, seconds = server.stop(timeout=10)
    assert status == 0
    assert seconds < 5


# ---- the process tree (trio-w2) ---------------------------------------------------------------


def _own_cpu_seconds(pid: int) -> float:
    """One process's user + system time, without its children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _own_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped counts: it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_2_worker_server_is_measured_over_its_process_tree_on_every_cpu():
    """CPU time, memory, threads and context switches of trio-w2 are the supervisor's plus its
    workers' (through psutil, checked against /proc); it runs on every CPU even when the bench
    itself is pinned to one; killing it kills the workers."""
    cpus = sorted(os.sched_getaffinity(0))
    ctx = Context(
        binary=Path("loadgen"),
        sizes=Sizes.quick(),
        server_cpus=tuple(cpus[:1]),
        all_cpus=tuple(cpus),
    )
    # Like the bench: this process on the load generator's CPU, which a child inherits.
    os.sched_setaffinity(0, cpus[-1:])
    try:
        server = ctx.server(W2_MODEL, ["--echo", "--quiet"])
    finally:
        os.sched_setaffinity(0, cpus)
    with server:
        supervisor = server.proc.pid
        tree = server.processes()
        assert tree[0] == supervisor
        assert len(tree) == 3  # the supervisor and its 2 workers
        # psutil's tree is the kernel's: the workers' parent is the supervisor.
        assert [_parent(pid) for pid in tree[1:]] == [supervisor, supervisor]
        assert process_tree(supervisor) == tree
        for pid in tree:
            assert os.sched_getaffinity(pid) == set(cpus)

        cpu_before, own_before = server.cpu_seconds(), _own_cpu_seconds(supervisor)
        counters_before = server.counters()
        # Echo traffic on a few connections (spread over both workers by the kernel's hash).
        clients = [
            socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)
        ]
        try:
            for _ in range(600):
                for sock in clients:
                    sock.sendall(b"x" * 63 + b"\n")
                for sock in clients:
                    got = b""
                    while len(got) < 64:
                        got += sock.recv(64 - len(got))
        finally:
            for sock in clients:
                sock.close()
        separately = sum(_own_cpu_seconds(pid) for pid in tree)
        cpu_after, own_after = server.cpu_seconds(), _own_cpu_seconds(supervisor)
        # The workers did the work: the tree's time grew more than the supervisor's own.
        assert cpu_after - cpu_before > own_after - own_before
        # Each of the 600 rounds, a worker waits for the next requests, most times by blocking
        # (a voluntary switch; on a busy machine the scheduler sometimes preempts it first).
        counters_after = server.counters()
        assert counters_after.voluntary_switches - counters_before.voluntary_switches >= 300
        assert counters_after.cpu_seconds >= cpu_after
        # (Sums of clock ticks in seconds: compared to the tick, not to float rounding.)
        assert round(cpu_after, 2) >= round(separately, 2) > _own_cpu_seconds(supervisor)
        assert server.rss_bytes() > 2 * _own_rss(supervisor)
        assert server.threads() >= 3

        server.kill()
        deadline = time.monotonic() + 5
        while not all(_gone(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(_gone(pid) for pid in tree)


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
    """``python -m trio_echo bench ARGS`` to its end.  In a session of its own, so that a run
    that overstays ``timeout`` is killed with every server and load generator it started (and
    the failure shows its progress lines: where it was stuck)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_echo", "bench", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench did not finish within {timeout} s; its stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_unknown_model_is_a_usage_error():
    result = _bench("--models", "nope")
    assert result.returncode == 2
    assert "unknown model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_baseline_that_cannot_be_run_is_one_line_and_status_1():
    result = _bench("--baseline", "no-such-revision", "--models", "trio")
    assert result.returncode == 1
    assert result.stderr.startswith("trio-echo bench: error: --baseline: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not result.stdout


# The default suite's quick run: the trio model and the variants that add machinery of their
# own (the 2-worker supervisor, the scraped --metrics), within its time; every model, the
# reference, the accelerator-less trio and sync included, runs in the stress session's test
# of the whole --quick run, which checks the same things and the rest.
QUICK_MODELS = ("trio", "trio-w2", "trio-metrics")
# ...in the scenarios this test checks in detail (correctness, costs, latency and the rest
# have tests of their own, and run here in the stress session's whole run).
# (Raw streaming into a file runs in the stress session only: the pipe's is the same splicing.)
QUICK_SCENARIOS = (
    *("article", "echo_100x64", "stream_raw", "stream_text", "stream_into_pipe"),
    *("storm_busy", "shutdown", "c10k"),
)


@needs_cc
@pytest.mark.slow
def test_quick_run_compares_the_trio_models_in_every_scenario(tmp_path):
    _quick_run(tmp_path, ",".join(QUICK_MODELS), ",".join(QUICK_SCENARIOS))


@needs_cc
@pytest.mark.stress
def test_quick_run_compares_every_model_in_every_scenario(tmp_path):
    _quick_run(tmp_path, None)


def _quick_run(tmp_path, models, scenarios=None):
    pytest.importorskip("matplotlib")
    out_json = tmp_path / "out.json"
    out_png = tmp_path / "out.png"
    chosen = () if models is None else ("--models", models)
    if scenarios is not None:
        chosen += ("--scenarios", scenarios)
    result = _bench(
        "--quick",
        *chosen,
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        timeout=QUICK_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out_json.read_text())

    machine = report["machine"]
    for key in ("cpu", "cores", "python", "trio", "asyncio", "uvloop"):
        assert key in machine
    assert machine["cores"] >= 1
    assert report["loadgen"]["headroom"] is not None

    keys = [
        s.key
        for s in scenarios_for(Sizes.quick())
        if scenarios is None or s.key.startswith(tuple(scenarios.split(",")))
    ]
    every = set(bench_models()) - OPT_IN
    assert set(report["models"]) == (every if models is None else set(QUICK_MODELS))
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
    assert not {key: f["skipped"] for key, f in trio.items() if "skipped" in f}
    assert trio["article"]["clients_fully_served"] == 4
    assert trio["echo_100x64"]["requests_per_s"] > 0
    assert trio["shutdown"]["exit_status"] == 0
    # Echo: a warm-up, then the median of the measured runs and their spread.
    echo = trio["echo_100x64"]
    assert echo["requests_per_s_min"] <= echo["requests_per_s"] <= echo["requests_per_s_max"]
    assert len(echo["requests_per_s_runs"]) == echo["repeats"] == 1
    assert trio["stream_text_64"]["lines_per_s"] > 0
    assert trio["stream_text_4k"]["line_bytes"] == 4096
    assert trio["storm_busy"]["served"] == trio["storm_busy"]["clients"]
    assert trio["storm_busy"]["busy_requests_per_s"] > 0
    assert trio["storm_busy"]["total_s_min"] == trio["storm_busy"]["total_s"]  # one storm
    many = trio["c10k"]
    assert many["served_connections"] == many["connections"]
    assert many["exit_status"] == 0
    assert many["bytes_per_connection"] > 0
    # The 2-worker trio does everything trio does, measured over its process tree, on every CPU.
    w2_entry = report["models"]["trio-w2"]
    assert w2_entry["variant"] == {"model": "trio", "flags": ["--workers", "2"]}
    w2 = w2_entry["scenarios"]
    assert not {key: f["skipped"] for key, f in w2.items() if "skipped" in f}
    assert w2["article"]["clients_fully_served"] == 4
    assert w2["echo_100x64"]["requests_per_s"] > 0
    assert w2["echo_100x64"]["server_cpu"] > 0
    assert w2["stream_text_64"]["lines_per_s"] > 0
    assert w2["storm_busy"]["served"] == w2["storm_busy"]["clients"]
    assert w2["c10k"]["served_connections"] == w2["c10k"]["connections"]
    assert w2["c10k"]["exit_status"] == w2["shutdown"]["exit_status"] == 0
    assert w2["c10k"]["server_processes"] == 3
    assert trio["c10k"]["server_processes"] == 1
    if report["pinning"] is not None:
        every_cpu = sorted({*report["pinning"]["server_cpus"], *report["pinning"]["loadgen_cpus"]})
        assert w2_entry["cpus"] == every_cpu
        assert report["pinning"]["model_cpus"] == {"trio-w2": every_cpu}
        assert report["models"]["trio"]["cpus"] == report["pinning"]["server_cpus"]
    assert set(report["workers_gain"]["ratios"]) == {
        k for k in keys if k.startswith(("echo_", "stream_"))
    }
    assert "trio-w2 ÷ trio" in result.stdout
    # The checks below are of the models that ran (see QUICK_MODELS).
    _check_nohub_and_reference(report, result.stdout)
    _check_metrics(report, result.stdout, keys)
    assert report["baseline"] is None
    assert report["baseline_gain"] is None
    # The targets, evaluated on this run's figures (pass or FAIL: this is no performance test).
    targets = {t["key"]: t for t in report["targets"]}
    assert set(targets) == {t.key for t in TARGETS}
    for target in TARGETS:  # measured if its models and scenarios ran (no echo_more in --quick)
        inputs = [f for f in (target.numerator, target.denominator) if f is not None]
        ran = all(f.model in report["models"] and f.scenario in keys for f in inputs)
        assert (targets[target.key]["status"] in {"pass", "FAIL"}) == ran, target.key
    assert "targets (figures of this run)" in result.stdout
    # The blocking model serves one client at a time: the article's point.
    if "sync" in report["models"]:
        assert report["models"]["sync"]["scenarios"]["article"]["lines_served"][1:] == [0, 0, 0]

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table is on stdout, the progress on stderr.
    assert "requests/s" in result.stdout
    assert "trio" in result.stderr


def _check_nohub_and_reference(report: dict, stdout: str) -> None:
    if "trio-nohub" not in report["models"]:
        return
    # The trio model without its accelerator, and the accelerator's worth under the table.
    nohub = report["models"]["trio-nohub"]
    assert nohub["variant"] == {"model": "trio", "flags": ["--no-accelerator"]}
    assert not {key: f["skipped"] for key, f in nohub["scenarios"].items() if "skipped" in f}
    assert report["accelerator_gain"]["ratios"]["echo_100x64"]["requests_per_s"] > 0
    assert "c10k" in report["accelerator_gain"]["ratios"]
    assert "trio ÷ trio-nohub: the accelerator's worth" in stdout
    # The reference: everything but the text scenarios, which it cannot do.
    bare = report["models"]["trio-bare"]
    assert bare["reference"] is True
    for key in ("article", "stream_text_64", "stream_text_4k"):
        assert "does not support --format" in bare["scenarios"][key]["skipped"]
    for key in ("echo_100x64", "stream_raw", "storm_busy", "c10k"):
        assert "skipped" not in bare["scenarios"][key], key
    targets = {t["key"]: t for t in report["targets"]}
    assert targets["echo_vs_bare"]["value"] > 0


def _check_metrics(report: dict, stdout: str, keys: list[str]) -> None:
    # The watched trio: scraped through each echo and streaming run, its closing scrape equal
    # to its summary; trio-metrics ÷ trio under the table (not a performance test: any ratio).
    watched = report["models"]["trio-metrics"]["scenarios"]
    assert not {key: f["skipped"] for key, f in watched.items() if "skipped" in f}
    for key in (k for k in keys if k.startswith(("echo_", "stream_"))):
        assert watched[key]["scrape"]["matches"], (key, watched[key]["scrape"])
        assert watched[key]["scrape"]["scrapes"] >= 2, key
    assert "scrape" not in watched["storm_busy"]  # no measured runs: nobody scrapes
    assert set(report["metrics_overhead"]["ratios"]) == {
        k for k in keys if k.startswith(("echo_", "stream_"))
    }
    assert "trio-metrics ÷ trio: what --metrics costs" in stdout


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
    from trio_echo.bench.runner import Progress

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
