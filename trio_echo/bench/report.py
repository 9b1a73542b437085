"""The report: a table for the terminal, and the JSON file (the PNG chart is :mod:`.plot`).

Everything here works on the JSON-shaped report (``{"models": {name: {"scenarios": {key:
figures-or-skipped}}}, ...}``), so that the table can be rebuilt from a saved JSON file and the
rendering is tested without running a benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trio_echo.bench.keeps import CORRECTNESS, render_correctness
from trio_echo.bench.overhead import metrics_overhead
from trio_echo.bench.plot import PlotUnavailable, write_plot
from trio_echo.bench.ratios import accelerator_gain, baseline_gain, workers_gain
from trio_echo.bench.scenarios import costs, latency
from trio_echo.bench.targets import format_value

# PlotUnavailable and write_plot are re-exported: they used to live here (now :mod:`.plot`);
# render_correctness, the table of what a shutdown keeps, is :mod:`.keeps`'s.
__all__ = [
    "CORRECTNESS",
    "PlotUnavailable",
    "headroom",
    "render_correctness",
    "render_table",
    "render_targets",
    "workers_gain",
    "write_json",
    "write_plot",
]

Row = tuple[str, Callable[[Mapping[str, Any]], str]]

# The scenarios with a table of their own (a row per model), not rows of the main table.
OWN_TABLES = (CORRECTNESS, latency.KEY, costs.COSTS)


def _num(value: Any, digits: int = 1) -> str:
    """Compact numbers for narrow columns: 12345 -> 12.3k."""
    if value is None:
        return "?"
    if isinstance(value, str):
        return value
    value = float(value)
    if abs(value) >= 1e6:
        return f"{value / 1e6:.{digits}f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.{digits}f}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cpu(figures: Mapping[str, Any]) -> str:
    return " / ".join(_num(figures.get(k), 2) for k in ("server_cpu", "loadgen_cpu", "other_cpu"))


def _star(figures: Mapping[str, Any]) -> str:
    """``*``: the load generator was saturated, so the figure is a lower bound."""
    return "*" if figures.get("loadgen_saturated") else ""


def _latency(figures: Mapping[str, Any]) -> str:
    keys: tuple[str, ...] = ("p50_ms", "p99_ms", "p99_9_ms", "max_ms")
    if "p99_9_ms" not in figures:  # a report from before p99.9
        keys = ("p50_ms", "p99_ms", "max_ms")
    return " / ".join(_num(figures.get(k)) for k in keys)


def _spread(figures: Mapping[str, Any]) -> str:
    """``61.2k–64.0k (3)``: the slowest and the fastest of the measured runs, and how many."""
    low, high = figures.get("requests_per_s_min"), figures.get("requests_per_s_max")
    if low is None or high is None:
        return ""  # a report from before the repeats
    return f"{_num(low)}–{_num(high)} ({figures.get('repeats', '?')})"


def _storm_spread(figures: Mapping[str, Any]) -> str:
    """``0.081–0.120 (3)``: the fastest and the slowest storm, and how many."""
    low, high = figures.get("total_s_min"), figures.get("total_s_max")
    if low is None or high is None:
        return ""
    return f"{_num(low)}–{_num(high)} ({figures.get('repeats', '?')})"


def _rows_for(key: str) -> list[Row]:
    """The figures of a scenario shown in the table, as (label, format) pairs."""
    if key == "article":
        return [
            ("clients served", lambda f: f"{f['clients_fully_served']}/{f['clients']}"),
            ("lines each", lambda f: ",".join(str(n) for n in f["lines_served"])),
        ]
    if key.startswith("echo_"):
        return [
            ("requests/s (median)", lambda f: _num(f["requests_per_s"]) + _star(f)),
            ("min–max (runs)", _spread),
            ("p50/p99/p99.9/max ms", _latency),
            ("CPU srv/load/other", _cpu),
        ]
    if key.startswith("stream_text"):
        return [
            ("MB/s", lambda f: _num(f["mb_per_s"]) + _star(f)),
            ("lines/s", lambda f: _num(f.get("lines_per_s"))),
            ("CPU srv/load/other", _cpu),
        ]
    if key.startswith("stream_"):
        return [("MB/s", lambda f: _num(f["mb_per_s"]) + _star(f)), ("CPU srv/load/other", _cpu)]
    if key == "idle_memory":
        return [("KiB/conn", lambda f: _num(f["kb_per_connection"]))]
    if key == "storm":
        return [("seconds", lambda f: _num(f["total_s"])), ("p99 ms", lambda f: _num(f["p99_ms"]))]
    if key == "storm_busy":
        return [
            ("seconds (median)", lambda f: _num(f["total_s"])),
            ("min–max (runs)", _storm_spread),
            ("p99 ms", lambda f: _num(f["p99_ms"])),
            ("busy clients' req/s", lambda f: _num(f["busy_requests_per_s"])),
        ]
    if key == "c10k":
        return [
            ("served", lambda f: f"{f['served_connections']}/{f['connections']}"),
            ("bytes/conn (RSS)", lambda f: _num(f["bytes_per_connection"])),
            ("SIGTERM → exit s", lambda f: _num(f["exit_s"])),
            ("exit status", lambda f: str(f["exit_status"])),
        ]
    if key == "shutdown":
        return [
            ("seconds", lambda f: _num(f["exit_s"])),
            ("exit status", lambda f: str(f["exit_status"])),
        ]
    return [("figures", lambda f: ", ".join(f"{k}={v}" for k, v in f.items()))]


def render_table(report: Mapping[str, Any]) -> str:
    """The terminal table: a row per figure, a column per model; skipped cells point to a
    numbered note with the reason, listed under the table."""
    models: Mapping[str, Any] = report["models"]
    names = list(models)
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    keys: list[str] = []
    for entry in models.values():
        for key in entry.get("scenarios", {}):
            if key not in keys and not key.startswith(OWN_TABLES):
                keys.append(key)
    first = render_correctness(report)
    notes: list[str] = []
    lines: list[list[str]] = [["scenario", "figure", *names]]
    for key in keys:
        for index, (label, fmt) in enumerate(_rows_for(key)):
            row = [titles.get(key, key) if index == 0 else "", label]
            for name in names:
                entry = models[name]
                result = entry.get("scenarios", {}).get(key)
                if result is None:
                    reason = entry.get("skipped") or "not run"
                    result = {"skipped": reason}
                if "skipped" in result:
                    if index == 0:
                        text = f"{name}, {titles.get(key, key)}: {result['skipped']}"
                        notes.append(text)
                        mark = "limited" if "partial" in result else "skipped"
                        row.append(f"{mark} [{len(notes)}]")
                    else:
                        row.append("")
                    continue
                try:
                    row.append(fmt(result))
                except (KeyError, TypeError, ValueError):
                    row.append("?")
            lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = "  ".join("-" * w for w in widths)

    def fmt_line(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:], strict=True)]
        return "  ".join(cells).rstrip()

    # The shutdown table first; the table of a column per model unless it would be empty.
    out = [*first, *([""] if first and keys else [])]
    if keys or not first:
        out += [fmt_line(lines[0]), rule]
    for line in lines[1:]:
        if line[0] and out[-1] != rule:
            out.append("")
        out.append(fmt_line(line))
    if notes:
        out += ["", *(f"[{i}] {text}" for i, text in enumerate(notes, 1))]
    for own in (costs.render_costs(report), latency.render_latency(report)):
        if own:
            out += ["", own.rstrip("\n")]
    described = [n for n in names if models[n].get("reference") or models[n].get("variant")]
    for name in described:
        out += ["", f"{name}: {models[name].get('summary', 'the reference')}"]
        cpus = models[name].get("cpus")
        if models[name].get("variant") and cpus:
            out[-1] += f" (CPUs {','.join(str(cpu) for cpu in cpus)})"
    gain = workers_gain(report)
    if gain is not None:
        out += ["", gain["text"]]
    for ratios in (baseline_gain(report), accelerator_gain(report), metrics_overhead(report)):
        if ratios is not None:
            out += ["", *ratios["lines"]]
    if keys:
        out += [
            "",
            "CPU srv/load/other: CPU cores used by the server / by the load generator / by the "
            "rest of the machine (other processes, and kernel network work charged to neither)",
        ]
    room = headroom(report)
    if room is not None:
        out.append(room["text"])
    if report.get("targets"):
        out += ["", *render_targets(report["targets"])]
    return "\n".join(out) + "\n"


def render_targets(evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
    """The targets section: a row per target (figure, target, pass/FAIL/not measured), then
    why those not measured were not."""
    if all(e["status"] == "not measured" for e in evaluations):
        return [
            f"targets: none of the {len(evaluations)} measured (they need the trio model, and "
            "trio-bare, asyncio and trio-metrics for the ratios, in echo_100x64, "
            "echo_1000x1024, stream_raw, stream_text, storm_busy and c10k: nox -s perf)"
        ]
    rows = [["targets (figures of this run)", "figure", "target", "result"]]
    notes: list[str] = []
    for evaluation in evaluations:
        unit = evaluation.get("unit", "")
        symbol = {">=": "≥", "<=": "≤", "==": "="}.get(evaluation["comparison"], "?")
        result = evaluation["status"]
        if evaluation.get("noisy"):
            result += f" (other work: {evaluation['other_cpu_max']:.2f} cores)"
        if result == "not measured":
            notes.append(f"{evaluation['title']}: {evaluation.get('why') or 'no figure'}")
            result += f" [t{len(notes)}]"
        rows.append(
            [
                evaluation["title"],
                format_value(evaluation.get("value"), unit),
                f"{symbol} {format_value(evaluation['threshold'], unit)}",
                result,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]

    def line(row: list[str]) -> str:
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:3], widths[1:3], strict=True)),
        ]
        return "  ".join([*cells, row[3]]).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows[1:]]
    counts = {s: sum(1 for e in evaluations if e["status"] == s) for s in ("pass", "FAIL")}
    unmeasured = len(evaluations) - counts["pass"] - counts["FAIL"]
    out.append(f"targets: {counts['pass']} pass, {counts['FAIL']} FAIL, {unmeasured} not measured")
    out += [f"[t{i}] {text}" for i, text in enumerate(notes, 1)]
    return out


def headroom(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """How busy the load generator was when it drove the fastest model at its fastest echo
    scenario, the most it was ever busy, and where it was saturated (those figures are lower
    bounds): the evidence that it was, or was not, the bottleneck."""
    best: tuple[float, str, str, Mapping[str, Any]] | None = None
    busiest = 0.0
    saturated: list[str] = []
    for name, entry in report["models"].items():
        for key, figures in entry.get("scenarios", {}).items():
            if "skipped" in figures:
                continue
            busiest = max(busiest, float(figures.get("loadgen_cpu") or 0.0))
            if figures.get("loadgen_saturated"):
                saturated.append(f"{name} {key}")
            if key.startswith("echo_") and figures.get("requests_per_s") is not None:
                rps = float(figures["requests_per_s"])
                if best is None or rps > best[0]:
                    best = (rps, name, key, figures)
    if best is None:
        return None
    rps, name, key, figures = best
    load = figures.get("loadgen_cpu")
    server = figures.get("server_cpu")
    text = (
        f"load generator headroom: at the fastest echo point ({name}, {key}: {_num(rps)} "
        f"requests/s) the server used {_num(server, 2)} CPU cores and the load generator "
        f"{_num(load, 2)} of its one core."
    )
    if saturated:
        text += (
            " * = load generator saturated (>= 0.9 core), figure is a lower bound: "
            + ", ".join(saturated)
            + "."
        )
    else:
        text += f" It was never above {busiest:.2f} cores."
    return {
        "model": name,
        "scenario": key,
        "requests_per_s": rps,
        "server_cpu": server,
        "loadgen_cpu": load,
        "loadgen_cpu_max": round(busiest, 3),
        "saturated": saturated,
        "text": text,
    }


def write_json(report: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
