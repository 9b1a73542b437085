"""The outside check's pure parts (trio_echo/bench/outside.py, vmbench.py): reading vmbench's
output, the comparison and its flags, the table, and the one-line failures when the client is
missing.  No server and no client run here (`nox -s outside` runs them); all in well under a
second."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_echo.bench import outside, vmbench
from trio_echo.bench.outside import loadgen_run
from trio_echo.bench.verdict import compare, judge, render_markdown, summarize
from trio_echo.bench.vmbench import OutsideError, Run, find_client, parse_vmbench

# What vmbench's echo_client (commit 5d39035) printed with --output-format=json, --msize=1024,
# --concurrency=10, --duration=3 against `python -m trio_echo --model trio --echo --quiet`.
VMBENCH_OUTPUT = """\
{
    "messages": 147937,
    "transfer": 48.16,
    "rps": 49312.33,
    "latency_min": 0.03,
    "latency_mean": 0.2,
    "latency_max": 21.66,
    "latency_std": 0.187,
    "latency_cv": 93.45,
    "latency_percentiles": [[25, 0.152], [50, 0.181], [75, 0.226], [90, 0.286], [99, 0.449], \
[99.99, 11.744]]
}
"""


def run(rps: float, client_cpu: float | None = 0.5, other_cpu: float | None = 0.0) -> Run:
    return Run(rps, 0.1, 0.2, 0.1, client_cpu, server_cpu=0.9, other_cpu=other_cpu)


def test_parse_vmbench_reads_rate_and_latency() -> None:
    parsed = parse_vmbench(VMBENCH_OUTPUT, 3)
    assert parsed.rps == 49312.33
    assert (parsed.p50_ms, parsed.p99_ms, parsed.mean_ms) == (0.181, 0.449, 0.2)
    assert parsed.client_cpu is None  # the CPU comes from the run, not from its output


@pytest.mark.parametrize(
    "text",
    ["", "Traceback (most recent call last):\n  ...", '{"messages": 3}', "[1, 2]"],
)
def test_parse_vmbench_refuses_what_is_not_its_result(text: str) -> None:
    with pytest.raises(OutsideError, match="printed no result") as caught:
        parse_vmbench(text, 3)
    assert "\n" not in str(caught.value)


def test_parse_vmbench_refuses_a_rate_that_is_not_messages_per_duration() -> None:
    # Read with the wrong duration, the rate does not match its own count.
    with pytest.raises(OutsideError, match="not messages/duration"):
        parse_vmbench(VMBENCH_OUTPUT, 2)


def test_loadgen_run_rate_latency_and_cpu() -> None:
    result = {"requests": 3000, "elapsed": 2.0, "latency_us": [[100, 1], [200, 2], [900, 1]]}
    cpu = {"loadgen_cpu": 0.4, "server_cpu": 0.95, "other_cpu": 0.1}
    ours = loadgen_run(result, cpu)
    assert ours.rps == 1500.0
    assert (ours.p50_ms, ours.p99_ms, ours.mean_ms) == (0.2, 0.9, 0.35)
    assert (ours.client_cpu, ours.server_cpu, ours.other_cpu) == (0.4, 0.95, 0.1)


@pytest.mark.parametrize(
    ("vm", "ours", "within"),
    [(1000, 1000, True), (1149, 1000, True), (851, 1000, True), (1151, 1000, False),
     (849, 1000, False), (500, 1000, False)],
)  # fmt: skip
def test_judge_flags_a_ratio_outside_fifteen_percent(vm: float, ours: float, within: bool) -> None:
    verdict = judge(run(vm), run(ours))
    assert verdict.ratio == pytest.approx(vm / ours)
    assert verdict.within is within
    assert verdict.flagged is not within
    assert verdict.comparable  # neither client saturated: a disagreement counts
    assert verdict.disagrees is not within
    assert verdict.text == ("agree" if within else "DISAGREE")


def test_judge_a_saturated_client_bounds_its_figure_instead_of_disagreeing() -> None:
    verdict = judge(run(500, client_cpu=0.97), run(1000, client_cpu=0.4))
    assert verdict.flagged
    assert not verdict.comparable
    assert not verdict.disagrees
    assert verdict.text == "vmbench client saturated (0.97 cores): a bound on that client"
    # Saturated but within: it agrees, and says the client was saturated.
    close = judge(run(950, client_cpu=0.97), run(1000))
    assert close.within
    assert not close.comparable
    assert close.text.endswith(": agree even so")


def test_judge_a_server_with_time_to_spare_under_one_client_only_bounds_that_client() -> None:
    # The server saturated under our load generator, not under vmbench, which got fewer
    # requests through: the requests the server was not busy with waited in vmbench's client.
    verdict = judge(
        attrs.evolve(run(600), server_cpu=0.8), attrs.evolve(run(1000), server_cpu=0.99)
    )
    assert verdict.flagged
    assert not verdict.disagrees
    assert "server not saturated under vmbench (0.80 cores, 0.99 under the other)" in verdict.text
    # Neither saturated (one connection: a round trip): a fair comparison, and a disagreement.
    idle = judge(attrs.evolve(run(600), server_cpu=0.5), attrs.evolve(run(1000), server_cpu=0.6))
    assert idle.disagrees


def test_judge_other_work_makes_a_cell_noisy_not_a_disagreement() -> None:
    verdict = judge(run(700, other_cpu=0.6), run(1000))
    assert verdict.flagged
    assert not verdict.comparable
    assert not verdict.disagrees
    assert verdict.text == "noisy: other work took 0.60 cores, run again"
    assert judge(run(1000, other_cpu=0.6), run(1000)).text == "agree (other work took 0.60 cores)"


def test_per_server_cpu_takes_out_what_the_server_was_given() -> None:
    # Half the requests/s on half the server CPU: the same server work per request.
    slow = Run(500, None, None, None, 0.3, server_cpu=0.45, other_cpu=0.5)
    fast = Run(1000, None, None, None, 0.3, server_cpu=0.9, other_cpu=0.0)
    assert compare(slow, fast)["ratio"] == 0.5
    assert compare(slow, fast)["ratio_per_server_cpu"] == 1.0
    assert compare(slow, attrs.evolve(fast, server_cpu=None))["ratio_per_server_cpu"] is None


def test_judge_without_requests_is_flagged() -> None:
    verdict = judge(run(0), run(1000))
    assert verdict.ratio is None
    assert verdict.flagged
    assert not verdict.comparable


def _cell(model: str, vm: Run, ours: Run) -> dict[str, Any]:
    return {"model": model, "connections": 10, "size": 1024, **compare(vm, ours)}


def test_markdown_marks_the_flagged_ratio_and_counts() -> None:
    cells: list[dict[str, Any]] = [
        _cell("trio", run(1000), run(1050)),
        _cell("asyncio", run(600), run(1000)),
        {"model": "uvloop", "skipped": "ModuleNotFoundError: No module named 'uvloop'"},
    ]
    table = render_markdown({"cells": cells, "summary": summarize(cells)})
    rows = table.splitlines()
    trio_row = next(r for r in rows if r.startswith("| trio "))
    asyncio_row = next(r for r in rows if r.startswith("| asyncio "))
    assert "| 0.95 |" in trio_row
    assert trio_row.endswith("| agree |")
    assert "| **0.60** |" in asyncio_row
    assert asyncio_row.endswith("| DISAGREE |")
    assert "| 1,000 | 1,050 |" in trio_row
    # CPU per request: 0.5 cores at 1000 req/s is 500 µs a request.
    assert "| 500 / 476 |" in trio_row
    assert any(r.startswith("| uvloop ") and "No module named" in r for r in rows)
    assert summarize(cells) == {"measured": 2, "within": 1, "comparable": 2, "comparable_within": 1}
    assert "other work under 0.25 cores): 2, of which within ±15%: 1." in table


def test_find_client_missing_says_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VMBENCH_GIT", raising=False)
    monkeypatch.setenv("VMBENCH_ECHO_CLIENT", str(tmp_path / "nowhere"))
    with pytest.raises(OutsideError) as caught:
        find_client(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "VMBENCH_ECHO_CLIENT" in message
    assert "VMBENCH_GIT" in message
    assert vmbench.PIN_COMMIT[:7] in message


def test_find_client_refuses_a_modified_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modified = tmp_path / "echo_client"
    modified.write_text("print('{}')\n")
    assert hashlib.sha256(modified.read_bytes()).hexdigest() != vmbench.CLIENT_SHA256
    monkeypatch.delenv("VMBENCH_ECHO_CLIENT", raising=False)
    with pytest.raises(OutsideError, match="is not vmbench's echo_client at 5d39035"):
        find_client(tmp_path, str(modified))


def test_find_client_from_a_git_dir_without_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VMBENCH_ECHO_CLIENT", raising=False)
    monkeypatch.setenv("VMBENCH_GIT", str(tmp_path / "not-a-clone"))
    with pytest.raises(OutsideError, match="needs MagicStack/vmbench's echo_client"):
        find_client(tmp_path / "work")


def test_main_without_the_client_is_one_line_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = outside.main(["--client", str(tmp_path / "nowhere"), "--json", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith(f"{outside.PROG}: error: needs MagicStack")


def test_main_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        outside.main(["--duration", "0.5"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_traffic_cores_counts_only_while_every_worker_ran() -> None:
    # (time, CPU seconds of the workers, how many): two start late, then 0.5 cores for 2 s,
    # then the result gathering (10 more CPU seconds) after the duration: left out.
    samples = [(0.0, 0.0, 1), (0.1, 0.01, 2), (0.2, 0.02, 3)]
    samples += [(0.2 + i / 10, 0.02 + 0.05 * i, 3) for i in range(1, 19)]
    samples += [(2.3, 10.0, 3)]
    assert vmbench.traffic_cores(samples, 3, 2) == pytest.approx(0.5)
    assert vmbench.traffic_cores(samples, 4, 2) is None  # never all of them
    assert vmbench.traffic_cores(samples[:4], 3, 2) is None  # too short a window
