"""Ratios between two models of the same run, figure by figure: what the report says under the
table.

* ``trio ÷ trio@REV`` (``bench --baseline REV``): the trio model now over the same model at an
  earlier revision, run side by side (:mod:`.baseline`): before and after from one run.
* ``trio ÷ trio-nohub``: the trio model over itself without its epoll readiness hub
  (``--no-accelerator``): the accelerator's worth.
* ``trio-w2 ÷ trio``: what a second worker process gains (one line, throughput figures only).

Every function works on the JSON-shaped report, so the lines come back from a saved file
(``--from-json``) too.  A scenario skipped (or limited) for either model is not compared: it is
named in ``not_compared``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trio_echo.bench.server import NOHUB
from trio_echo.bench.targets import NOISY, format_value

__all__ = ["HEADLINES", "Headline", "accelerator_gain", "baseline_gain", "compare", "workers_gain"]


@attrs.frozen
class Headline:
    """A headline figure of a scenario: ``scenario`` is a key, or a prefix when it ends in
    ``_`` (``echo_`` is every echo scenario)."""

    scenario: str
    field: str
    label: str
    higher_is_better: bool

    def matches(self, key: str) -> bool:
        return (
            key.startswith(self.scenario) if self.scenario.endswith("_") else key == self.scenario
        )


# Every figure the before/after comparison covers: throughput up, times and memory down.
HEADLINES = (
    Headline("echo_", "requests_per_s", "requests/s (median)", True),
    # The best run too: the least disturbed by other work (the targets compare the best).
    Headline("echo_", "requests_per_s_max", "requests/s (best run)", True),
    Headline("stream_", "mb_per_s", "MB/s", True),
    Headline("idle_memory", "kb_per_connection", "KiB of RSS per connection", False),
    Headline("storm", "total_s", "seconds, all served", False),
    Headline("storm_busy", "total_s", "seconds, all served (median)", False),
    Headline("storm_busy", "total_s_min", "seconds, all served (best)", False),
    Headline("shutdown", "exit_s", "SIGTERM → exit, s", False),
    Headline("c10k", "bytes_per_connection", "bytes of RSS per connection", False),
    Headline("c10k", "exit_after_grace_s", "SIGTERM → exit beyond --grace, s", False),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare(
    report: Mapping[str, Any], model: str, reference: str, title: str
) -> dict[str, Any] | None:
    """``model ÷ reference`` for every headline figure (:data:`HEADLINES`) both measured: a row
    each, with which way is better and whether ``model`` is at least as good; None if either
    model is not in the report or nothing could be compared."""
    models: Mapping[str, Any] = report.get("models", {})
    if model not in models or reference not in models:
        return None
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    rows: list[dict[str, Any]] = []
    not_compared: list[str] = []
    theirs: Mapping[str, Any] = models[reference].get("scenarios", {})
    for key, ours in models[model].get("scenarios", {}).items():
        headlines = [h for h in HEADLINES if h.matches(key)]
        other = theirs.get(key)
        if not headlines or other is None:
            continue
        if "skipped" in ours or "skipped" in other:
            not_compared.append(key)
            continue
        for headline in headlines:
            value, base = _number(ours.get(headline.field)), _number(other.get(headline.field))
            if value is None or base is None or base <= 0:
                not_compared.append(f"{key}.{headline.field}")
                continue
            ratio = value / base
            busy = [x for f in (ours, other) if (x := _number(f.get("other_cpu"))) is not None]
            rows.append(
                {
                    "scenario": key,
                    "title": titles.get(key, key),
                    "figure": headline.field,
                    "label": headline.label,
                    "higher_is_better": headline.higher_is_better,
                    "value": value,
                    "reference": base,
                    "ratio": round(ratio, 3),
                    "at_least_as_good": ratio >= 1 if headline.higher_is_better else ratio <= 1,
                    "other_cpu_max": max(busy) if busy else None,
                }
            )
    if not rows:
        return None
    ratios: dict[str, dict[str, float]] = {}
    for row in rows:
        ratios.setdefault(row["scenario"], {})[row["figure"]] = row["ratio"]
    lines = _lines(model, reference, title, rows, not_compared)
    return {
        "models": [model, reference],
        "title": title,
        "figures": rows,
        "ratios": ratios,
        "at_least_as_good": sum(1 for row in rows if row["at_least_as_good"]),
        "not_compared": not_compared,
        "lines": lines,
        "text": "\n".join(lines),
    }


def _lines(
    model: str,
    reference: str,
    title: str,
    rows: list[dict[str, Any]],
    not_compared: list[str],
) -> list[str]:
    """The section under the table: a heading, a line per figure, a summary."""
    cells = [
        [
            row["title"],
            f"{row['label']} {'↑' if row['higher_is_better'] else '↓'}",
            f"{row['ratio']:.2f}×",
            f"{format_value(row['value'], '')} ÷ {format_value(row['reference'], '')}"
            + ("" if row["at_least_as_good"] else "  (worse)")
            + (
                f"  (other work: {row['other_cpu_max']:.2f} cores)"
                if (row["other_cpu_max"] or 0) > NOISY
                else ""
            ),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(3)]
    out = [f"{title} (one run; ↑ higher is better, ↓ lower is better):"]
    out += [
        f"  {a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.rjust(widths[2])}  {d}"
        for a, b, c, d in cells
    ]
    good = sum(1 for row in rows if row["at_least_as_good"])
    out.append(f"  {model} at least as good as {reference} on {good} of {len(rows)} figures")
    if not_compared:
        out.append(f"  not compared (skipped or limited): {', '.join(not_compared)}")
    return out


def baseline_gain(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """``trio ÷ trio@REV`` (``report["baseline"]["model"]``, from ``--baseline``): now over
    before, figure by figure; None without a baseline."""
    baseline = report.get("baseline")
    if not isinstance(baseline, Mapping) or not isinstance(baseline.get("model"), str):
        return None
    name = baseline["model"]
    return compare(report, "trio", name, f"trio ÷ {name}: now over before")


def accelerator_gain(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """``trio ÷ trio-nohub``: the trio model with its accelerators (the epoll readiness hub,
    splicing, the C text scan) over without them."""
    what = "the accelerator's worth (epoll hub, splicing, C text scan), on ÷ off"
    return compare(report, "trio", NOHUB, f"trio ÷ {NOHUB}: {what}")


# What trio-w2 ÷ trio compares: each scenario family's headline figure (higher is better).
GAIN_MODELS = ("trio-w2", "trio")
GAIN_FIGURES = (("echo_", "requests_per_s"), ("stream_", "mb_per_s"))


def workers_gain(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """``trio-w2 ÷ trio``: the 2-worker server's figure over the single process's, for every
    echo scenario (median requests/s) and streaming one (MB/s) both measured; None if there is
    none."""
    models: Mapping[str, Any] = report["models"]
    many, one = GAIN_MODELS
    if many not in models or one not in models:
        return None
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    ratios: dict[str, float] = {}
    for key, base in models[one].get("scenarios", {}).items():
        field = next((f for prefix, f in GAIN_FIGURES if key.startswith(prefix)), None)
        other = models[many].get("scenarios", {}).get(key)
        if field is None or other is None or "skipped" in base or "skipped" in other:
            continue
        value, reference = other.get(field), base.get(field)
        if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and reference:
            ratios[key] = round(value / reference, 3)
    if not ratios:
        return None
    parts = ", ".join(f"{titles.get(key, key)} {ratio:.2f}×" for key, ratio in ratios.items())
    return {
        "models": list(GAIN_MODELS),
        "ratios": ratios,
        "text": f"{many} ÷ {one} (echo: requests/s, streams: MB/s): {parts}",
    }
