"""The table of what a shutdown keeps: the shutdown-correctness scenarios
(:mod:`.scenarios.correctness`), a block per variant and a row per model, first in the report.

Like the rest of the report it works on the JSON-shaped report only, so it is rebuilt from a
saved file (``bench --from-json``) and tested without running anything.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CORRECTNESS", "render_correctness"]

# The keys of the shutdown-correctness scenarios (``correctness_graceful``...): their table comes
# first, a row per model, not in the report's table of a column per model.
CORRECTNESS = "correctness_"

LEGEND = (
    "sent<sig: lines written whole before the SIGTERM; lost: of those, never printed (not even "
    "in part); lost>sig: written after the SIGTERM, never printed; dropped: lines the server "
    "read but never printed (from the bytes received of its summary); torn: printed cut short "
    "though written whole; dup/bad: printed twice / printed but never sent; eof/reset/open: how "
    "the clients' connections ended; exit s: from the SIGTERM; port: free to bind at once after "
    "the exit (SO_REUSEADDR)"
)

Column = tuple[str, Callable[[Mapping[str, Any]], str]]


def _exit(figures: Mapping[str, Any]) -> str:
    return "killed" if figures["killed"] else f"{figures['exit_s']:.2f}"


def _dropped(figures: Mapping[str, Any]) -> str:
    value = figures.get("lines_read_not_printed")
    return "?" if value is None else str(value)


# The columns of the correctness table: (heading, format of a variant's figures).
_KEEPS: list[Column] = [
    ("sent<sig", lambda f: str(f["lines_sent_before_signal"])),
    ("lost", lambda f: str(f["lines_lost"])),
    ("lost>sig", lambda f: str(f["lines_lost_after_signal"])),
    ("dropped", _dropped),
    ("torn", lambda f: str(f["lines_torn"])),
    ("dup/bad", lambda f: f"{f['lines_duplicated']}/{f['lines_corrupt']}"),
    (
        "eof/reset/open",
        lambda f: f"{f['clients_closed_eof']}/{f['clients_reset']}/{f['clients_unclosed']}",
    ),
    ("exit s", _exit),
    ("status", lambda f: str(f["exit_status"])),
    ("port", lambda f: {True: "free", False: "BUSY"}.get(f["port_free"], "?")),
]


def render_correctness(report: Mapping[str, Any]) -> list[str]:
    """The table of what a shutdown keeps: a block per variant (graceful, forced, stalled
    stdout), a row per model; skipped rows point to numbered notes (``[c1]``) under it.  No
    lines when the report has no correctness scenario."""
    models: Mapping[str, Any] = report["models"]
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    keys: list[str] = []
    for entry in models.values():
        keys += [k for k in entry.get("scenarios", {}) if k.startswith(CORRECTNESS)]
    keys = list(dict.fromkeys(keys))
    if not keys:
        return []
    sample = next(
        (
            f
            for e in models.values()
            for k, f in e["scenarios"].items()
            if k in keys and "skipped" not in f
        ),
        None,
    )
    out = ["What a shutdown keeps"]
    if sample is not None:
        out[0] += (
            f": {sample['clients']} clients streaming numbered {sample['line_bytes']} B lines "
            f"({sample['lines_per_s_per_client']:g}/s each), SIGTERM after "
            f"{sample['lead_s']:g} s, --grace {sample['grace_s']:g}; half the clients "
            "stop within the grace period, half are cut at its end"
        )
    notes: list[str] = []
    rows: list[list[str]] = [["", "model", *(heading for heading, _ in _KEEPS)]]
    for key in keys:
        for index, (name, entry) in enumerate(models.items()):
            row = [titles.get(key, key) if index == 0 else "", name]
            result = entry.get("scenarios", {}).get(key) or {
                "skipped": entry.get("skipped") or "not run"
            }
            if "skipped" in result:
                notes.append(f"{name}, {titles.get(key, key)}: {result['skipped']}")
                rows.append([*row, f"skipped [c{len(notes)}]"])
                continue
            for _, fmt in _KEEPS:
                try:
                    row.append(fmt(result))
                except (KeyError, TypeError, ValueError):
                    row.append("?")
            rows.append(row)
    full = [r for r in rows if len(r) == len(rows[0])]  # a skipped row has one note cell
    widths = [max(len(r[i]) for r in (full if i >= 2 else rows)) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        if len(row) == 3 and row[2].startswith("skipped"):
            return "  ".join([*cells, row[2]]).rstrip()
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
        return "  ".join(cells).rstrip()

    out += ["", line(rows[0]), "  ".join("-" * w for w in widths)]
    for row in rows[1:]:
        if row[0] and out[-1][:1] != "-":
            out.append("")
        out.append(line(row))
    out += ["", *textwrap.wrap(LEGEND, 100)]
    out += [f"[c{i}] {text}" for i, text in enumerate(notes, 1)]
    return out
