"""``trio-metrics ÷ trio``: what ``--metrics`` costs a server that is being scraped (issue 15's
"measure the bench's echo and streaming figures with and without --metrics in the same run and
publish the ratio", target ≥ 0.97×).

For every echo scenario (requests/s) and streaming one (MB/s) both models measured: the ratio of
their medians, and its spread as the ratios of their runs *pair by pair* -- the bench takes the
measured runs of all models in turns (:func:`.runner.run_in_turns`), so trio's i-th run and
trio-metrics's i-th run were taken side by side, and each pair is one sample of the overhead
under the same conditions.  Beside each, how the scrapes went (:mod:`.scrape`: how many, and
whether the closing scrape's totals equalled the server's own).  The pass/FAIL of the target
itself is :mod:`.targets`'s (``metrics_*``), evaluated like every other target.

Works on the JSON-shaped report, so the lines come back from a saved file (``--from-json``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from trio_echo.bench.targets import METRICS, METRICS_THRESHOLD, NOISY, TRIO

__all__ = ["FIGURES", "metrics_overhead", "pair_ratios"]

# Each family's figure, its runs, and how the lines name it.
FIGURES = (
    ("echo_", "requests_per_s", "requests_per_s_runs", "requests/s"),
    ("stream_", "mb_per_s", "mb_per_s_runs", "MB/s"),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pair_ratios(runs: Sequence[Any], reference: Sequence[Any]) -> list[float]:
    """``runs[i] / reference[i]`` for each pair of runs taken side by side (a reference run of
    0, or a run that is no number, gives no ratio)."""
    found = []
    for value, base in zip(runs, reference, strict=False):
        a, b = _number(value), _number(base)
        if a is not None and b:
            found.append(round(a / b, 3))
    return found


def _row(
    key: str, title: str, ours: Mapping[str, Any], base: Mapping[str, Any]
) -> dict[str, Any] | None:
    """One scenario's line (``key`` an echo or streaming one), or None without both figures."""
    _, field, runs_field, label = next(f for f in FIGURES if key.startswith(f[0]))
    value, reference = _number(ours.get(field)), _number(base.get(field))
    if value is None or not reference:
        return None
    pairs = pair_ratios(ours.get(runs_field) or [], base.get(runs_field) or [])
    busy = [x for f in (ours, base) if (x := _number(f.get("other_cpu"))) is not None]
    scrape = ours.get("scrape")
    return {
        "scenario": key,
        "title": title,
        "figure": field,
        "label": label,
        "value": value,
        "reference": reference,
        "ratio": round(value / reference, 3),
        "pairs": pairs,
        "other_cpu_max": max(busy) if busy else None,
        "scrape": scrape if isinstance(scrape, Mapping) else None,
    }


def _scrape_text(scrape: Mapping[str, Any] | None) -> str:
    if scrape is None:
        return "not scraped"
    text = f"{scrape.get('scrapes', 0)} scrapes"
    if scrape.get("matches"):
        return text + ", totals match"
    return f"{text}, MISMATCH: {scrape.get('mismatch', '?')}"


def metrics_overhead(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """``trio-metrics ÷ trio`` for every echo and streaming scenario both measured (neither
    skipped nor limited), with the spread of the pairs of runs and the scrapes; None if the
    report has not both models or no such scenario."""
    models: Mapping[str, Any] = report.get("models", {})
    if METRICS not in models or TRIO not in models:
        return None
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    theirs: Mapping[str, Any] = models[TRIO].get("scenarios", {})
    rows: list[dict[str, Any]] = []
    not_compared: list[str] = []
    for key, ours in models[METRICS].get("scenarios", {}).items():
        base = theirs.get(key)
        if base is None or not key.startswith(tuple(f[0] for f in FIGURES)):
            continue
        if "skipped" in ours or "skipped" in base:
            not_compared.append(key)
            continue
        row = _row(key, titles.get(key, key), ours, base)
        if row is None:
            not_compared.append(key)
        else:
            rows.append(row)
    if not rows:
        return None
    lines = _lines(rows, not_compared)
    return {
        "models": [METRICS, TRIO],
        "threshold": METRICS_THRESHOLD,
        "figures": rows,
        "ratios": {row["scenario"]: row["ratio"] for row in rows},
        "lowest": min(row["ratio"] for row in rows),
        "not_compared": not_compared,
        "lines": lines,
        "text": "\n".join(lines),
    }


def _lines(rows: list[dict[str, Any]], not_compared: list[str]) -> list[str]:
    """The section under the table: a heading, a line per scenario, a summary."""
    cells = []
    for row in rows:
        pairs = row["pairs"]
        spread = (
            f"pairs {min(pairs):.2f}–{max(pairs):.2f}, median {statistics.median(pairs):.2f} "
            f"({len(pairs)})"
            if pairs
            else "no pairs"
        )
        busy = row["other_cpu_max"] or 0
        cells.append(
            [
                row["title"],
                row["label"],
                f"{row['ratio']:.2f}×",
                spread,
                _scrape_text(row["scrape"])
                + (f"  (other work: {busy:.2f} cores)" if busy > NOISY else ""),
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    interval = next(
        (r["scrape"]["interval_s"] for r in rows if r["scrape"] and "interval_s" in r["scrape"]),
        None,
    )
    every = f", scraped every {interval:g} s of its runs" if interval else ""
    out = [
        f"{METRICS} ÷ {TRIO}: what --metrics costs{every} (ratio of the medians; pairs: the "
        f"ratios of the runs taken side by side; target ≥ {METRICS_THRESHOLD:.2f}×):"
    ]
    out += [
        f"  {a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.rjust(widths[2])}  "
        f"{d.ljust(widths[3])}  {e}"
        for a, b, c, d, e in cells
    ]
    met = sum(1 for row in rows if row["ratio"] >= METRICS_THRESHOLD)
    lowest = min(rows, key=lambda row: row["ratio"])
    out.append(
        f"  ≥ {METRICS_THRESHOLD:.2f}× in {met} of {len(rows)} scenarios; lowest "
        f"{lowest['ratio']:.2f}× ({lowest['title']})"
    )
    if not_compared:
        out.append(f"  not compared (skipped or limited): {', '.join(not_compared)}")
    return out
