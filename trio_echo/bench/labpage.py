"""``bench --lab-page PATH``: docs/lab.md, "reading the lab": each model's code beside its figures.

The benchmark tables say *how fast*; this page says *why*, by putting what a reader compares
next to each other: the handler and the shutdown of each model, fetched from the installed
source (:data:`.lab.EXCERPTS`), its size (:func:`.lab.model_sizes`), and a few headline figures
of the same run.  Nothing is typed: the code is the code, the figures are the report's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trio_echo.bench.lab import EXCERPTS, excerpt, model_sizes
from trio_echo.bench.markdown import table
from trio_echo.bench.report import _num
from trio_echo.models import MODELS

__all__ = ["HEADLINES", "render_lab_page"]

Headline = tuple[str, str, Callable[[Mapping[str, Any]], str]]

# The figures shown beside each model's code: (scenario key, label, format).  A scenario the run
# did not have is left out; a model that skipped it shows the reason's first words.
HEADLINES: tuple[Headline, ...] = (
    ("echo_100x64", "echo 100 × 64 B, requests/s", lambda f: _num(f["requests_per_s"])),
    ("echo_100x64", "echo 100 × 64 B, p99 ms", lambda f: _num(f["p99_ms"])),
    ("stream_text_64", "text 64 B lines, MB/s", lambda f: _num(f["mb_per_s"])),
    ("idle_memory", "KiB per idle connection", lambda f: _num(f["kb_per_connection"])),
    ("shutdown", "SIGTERM → exit, s", lambda f: _num(f["exit_s"])),
)

READING = """\
Every model is a real server process (`python -m trio_echo --model NAME`), started fresh for
each scenario, pinned to its own CPU, and driven over loopback by a C load generator on another
CPU (`trio_echo/bench/loadgen.c`), which reports its own CPU use so that a saturated client is
visible (a `*` beside a figure: a lower bound). What to look at:

- **Throughput with many connections** (echo 100 and 1000 conn) is where the event loops
  differ: one core, so the cost per request is the whole story. The threads model pays a
  thread per connection; the sync model serves one client at a time and is "limited".
- **Latency percentiles** from the closed loop hide stalls (a stalled server is simply asked
  less); the open-loop curve, where requests are due on a schedule, shows them.
- **Shutdown** is the part structured concurrency is about: what a SIGTERM keeps (every line
  sent before it printed, clients closed cleanly, exit 0, the port free at once).
- **Code lines** are each model's own code beyond the shared core; the trio model's count
  includes its hardening (TLS, PROXY protocol, access lists, limits), which the others refuse.
"""


def _figures(report: Mapping[str, Any], name: str) -> list[list[str]]:
    entry = report.get("models", {}).get(name, {})
    rows = []
    for key, label, fmt in HEADLINES:
        result = entry.get("scenarios", {}).get(key)
        if result is None:
            continue
        if "skipped" in result:
            rows.append([label, "limited" if "partial" in result else "skipped"])
            continue
        try:
            rows.append([label, fmt(result)])
        except (KeyError, TypeError, ValueError):
            rows.append([label, "?"])
    return rows


def render_lab_page(report: Mapping[str, Any]) -> str:
    """The page: how to read the lab, then per model its summary, size, figures and code."""
    sizes = model_sizes()
    out = ["# Reading the lab\n", READING]
    for name, model in MODELS.items():
        out.append(f"## `{name}`\n")
        out.append(f"{model.summary[:1].upper()}{model.summary[1:]}.\n")
        size = sizes[name]
        out.append(
            f"Own code: {size.lines} lines in "
            + ", ".join(f"`{m.removeprefix('trio_echo.')}`" for m in size.modules)
            + ".\n"
        )
        if rows := _figures(report, name):
            out.append(table(["figure", "value"], rows))
        for label, reference in EXCERPTS.get(name, ()):
            where, code = excerpt(reference)
            out += [f"**{label}** (`{where}`):\n", "```python", code.rstrip(), "```\n"]
    return "\n".join(out)
