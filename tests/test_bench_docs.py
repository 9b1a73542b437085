"""The generated pages: model sizes counted from the source, the markdown report, the lab page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trio_echo.bench import lab, labpage, markdown
from trio_echo.models import MODELS

ROOT = Path(__file__).resolve().parent.parent


def _report(**other_cpu: float) -> dict[str, Any]:
    def echo(rps: float, other: float) -> dict[str, Any]:
        return {
            "requests_per_s": rps,
            "requests_per_s_min": rps * 0.9,
            "requests_per_s_max": rps * 1.1,
            "repeats": 3,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "max_ms": 3.0,
            "server_cpu": 1.0,
            "loadgen_cpu": 0.5,
            "other_cpu": other,
        }

    return {
        "command": "python -m trio_echo bench --quick",
        "started_utc": "2026-12-02T00:00:00+00:00",
        "elapsed_s": 12.5,
        "quick": False,
        "machine": {"cpu": "Test CPU", "cores": 2, "trio": "0.35.0", "trio_echo_source": "abc1234"},
        "scenario_titles": {"echo_100x64": "echo 100 conn × 64 B"},
        "models": {
            "trio": {"scenarios": {"echo_100x64": echo(61234.0, other_cpu.get("trio", 0.0))}},
            "sync": {
                "scenarios": {"echo_100x64": {"skipped": "only 1 of 100 answered", "partial": {}}}
            },
        },
    }


def test_code_lines_skip_blanks_comments_and_docstrings(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        '"""Module\n\ndocstring."""\n\n# a comment\nx = 1  # counted\n\n'
        'def f():\n    """Doc."""\n    return (\n        x\n    )\n'
    )
    assert lab.code_lines(source) == 5  # x = 1, def, return (, x, )


def test_every_model_has_its_own_code_and_shares_the_core() -> None:
    sizes = lab.model_sizes()
    assert set(sizes) == set(MODELS)
    shared = lab.shared_modules(MODELS.values())
    assert "trio_echo.output.clean" in shared  # every model cleans output the same way
    for name, size in sizes.items():
        assert size.lines > 0, name
        assert not shared & set(size.modules), name
    # The trio model's own code is its server; the threads model never runs it.
    assert "trio_echo.server.stream" in sizes["trio"].modules
    assert not any(m.startswith("trio_echo.server") for m in sizes["threads"].modules)
    # Lazy package exports do not count as imports: the sync model imports no trio server.
    assert "trio_echo.server.handler" not in lab.closure("trio_echo.models.sync")


@pytest.mark.parametrize(
    ("model", "label", "reference"),
    [(m, label, ref) for m, refs in lab.EXCERPTS.items() for label, ref in refs],
)
def test_every_excerpt_resolves_to_code(model: str, label: str, reference: str) -> None:
    assert model in MODELS
    where, code = lab.excerpt(reference)
    path, _, line = where.partition(":")
    assert (ROOT / path).is_file()
    assert int(line) > 0
    first = code.splitlines()[0]
    assert (ROOT / path).read_text().splitlines()[int(line) - 1].strip() == first.strip()


def test_an_excerpt_cut_keeps_its_first_and_last_line() -> None:
    _, code = lab.excerpt(
        "trio_echo.server.serve:serve|with everything:|handle.accepting_stopped.set()"
    )
    lines = code.splitlines()
    assert lines[0] == "with everything:"
    assert lines[-1].strip() == "handle.accepting_stopped.set()"
    assert "trio.serve_listeners" in code


def test_markdown_has_a_table_per_scenario_with_reasons() -> None:
    text = markdown.render_markdown(_report())
    assert "| trio | 61.2k | 55.1k–67.4k (3) |" in text
    assert "| sync | limited: only 1 of 100 answered |" in text
    assert "from commit `abc1234`" in text
    assert "Not a quiet run" not in text
    for name in MODELS:
        assert f"| `{name}` |" in text


def test_markdown_marks_a_noisy_or_uncommitted_run() -> None:
    report = _report(trio=0.4)
    report["machine"]["trio_echo_source"] = "abc1234+dirty"
    text = markdown.render_markdown(report)
    assert "Not a quiet run" in text
    assert "trio echo_100x64 0.40" in text
    assert "Not from committed code" in text
    assert markdown.noisy_scenarios(report) == [("trio", "echo_100x64", 0.4)]


def test_lab_page_puts_code_beside_figures() -> None:
    text = labpage.render_lab_page(_report())
    assert "## `trio`" in text
    assert "trio.serve_listeners" in text
    assert "| echo 100 × 64 B, requests/s | 61.2k |" in text
    sync_part = text.split("## `sync`")[1]
    assert "| echo 100 × 64 B, requests/s | limited |" in sync_part


def test_bench_rebuilds_both_pages_from_json(tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_report()))
    page, lab_page = tmp_path / "bench.md", tmp_path / "lab.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_echo",
            "bench",
            "--from-json",
            str(saved),
            "--markdown",
            str(page),
            "--lab-page",
            str(lab_page),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "[run.json](run.json)" in page.read_text()
    assert "# Reading the lab" in lab_page.read_text()


def test_lanes_run_models_at_once_and_keep_their_order(tmp_path: Path) -> None:
    import io
    import threading

    from trio_echo.bench.runner import Progress, run_all
    from trio_echo.bench.scenarios import Context, Result, Scenario, Sizes

    names = ["trio", "asyncio", "threads"]
    # Passes only if the three models' runs are under way at the same time.
    together = threading.Barrier(len(names), timeout=10)

    def run(context: Context, model: Any) -> Result:
        together.wait()
        return Result({"model_seen": model.name})

    scenario = Scenario("together", "three at once", (), run)
    context = Context(binary=tmp_path / "unused", sizes=Sizes.quick())
    progress = Progress(len(names), stream=io.StringIO())
    entries = run_all([MODELS[n] for n in names], [scenario], context, progress, lanes=3)
    assert list(entries) == names
    for name in names:
        assert entries[name]["scenarios"]["together"] == {"model_seen": name}
