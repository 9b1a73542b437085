"""``bench --markdown PATH``: docs/benchmarks.md, written from a run's report and nothing else.

Why generated: a figure typed into prose goes stale the day the code changes (the page this
replaced described a server two rewrites old).  Everything here is computed from the JSON-shaped
report, so ``bench --from-json docs/benchmarks.json --markdown docs/benchmarks.md`` rebuilds the
page without running anything, and a test renders it from a saved report.

A run is publishable only from committed code on a quiet machine.  The report says which
commit ran (``+dirty`` with local changes) and how much CPU other work took during each
scenario (``other_cpu``); above :data:`QUIET_OTHER_CPU` the page says so at its top, next to
the figures it concerns, rather than passing a noisy run off as a clean one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trio_echo.bench.keeps import render_correctness
from trio_echo.bench.lab import model_sizes, shared_lines
from trio_echo.bench.overhead import metrics_overhead
from trio_echo.bench.report import OWN_TABLES
from trio_echo.bench.report import _rows_for as rows_for
from trio_echo.bench.scenarios import costs, latency
from trio_echo.models import MODELS

__all__ = ["QUIET_OTHER_CPU", "noisy_scenarios", "render_markdown"]

# Cores of CPU time taken by other work during a scenario above which its figures are marked as
# measured on a busy machine: a tenth of a core is what the kernel's own network work charged
# to neither process reaches at most in a quiet run (docs/benchmarks.json keeps every value).
QUIET_OTHER_CPU = 0.10

# A section: its title, then what the report gives for it (None: the section is left out).
Section = tuple[str, Callable[[Mapping[str, Any]], str | None]]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numbers: bool = True) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned when
    they hold ``numbers``."""
    align = ["---", *("---:" if numbers else "---" for _ in header[1:])]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# Scenarios whose ``other_cpu`` is mostly the kernel's own work: a storm's thousands of
# connection set-ups and tear-downs run in softirq context, charged to neither the server nor
# the load generator.  Reported apart, not taken as a sign of other work on the machine.
KERNEL_HEAVY = ("storm",)


def noisy_scenarios(
    report: Mapping[str, Any], *, kernel_heavy: bool = False
) -> list[tuple[str, str, float]]:
    """(model, scenario, cores) wherever other work took more than :data:`QUIET_OTHER_CPU`:
    in the scenarios that measure it (or, with ``kernel_heavy``, in the :data:`KERNEL_HEAVY`
    ones only)."""
    found = []
    for name, entry in report["models"].items():
        for key, figures in entry.get("scenarios", {}).items():
            if key.startswith(KERNEL_HEAVY) != kernel_heavy:
                continue
            other = figures.get("other_cpu")
            if isinstance(other, (int, float)) and other > QUIET_OTHER_CPU:
                found.append((name, key, float(other)))
    return found


def _keys(report: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for entry in report["models"].values():
        keys += [
            k for k in entry.get("scenarios", {}) if k not in keys and not k.startswith(OWN_TABLES)
        ]
    return keys


def scenario_table(report: Mapping[str, Any], key: str) -> str:
    """One scenario as a table: a row per model, a column per figure; a skipped model's row
    gives the reason in its first figure's cell."""
    rows_spec = rows_for(key)
    rows = []
    for name, entry in report["models"].items():
        result = entry.get("scenarios", {}).get(key)
        if result is None:
            result = {"skipped": entry.get("skipped") or "not run"}
        if "skipped" in result:
            mark = "limited" if "partial" in result else "skipped"
            reason = str(result["skipped"])
            cell = reason if reason.startswith(mark) else f"{mark}: {reason}"
            rows.append([name, cell, *("" for _ in rows_spec[1:])])
            continue
        cells = []
        for _, fmt in rows_spec:
            try:
                cells.append(fmt(result))
            except (KeyError, TypeError, ValueError):
                cells.append("?")
        rows.append([name, *cells])
    return table(["model", *(label for label, _ in rows_spec)], rows)


def _run_facts(report: Mapping[str, Any]) -> str:
    machine = report.get("machine", {})
    source = machine.get("trio_echo_source") or "unknown"
    versions = ", ".join(
        f"{name} {machine[name]}"
        for name in ("trio", "uvloop", "anyio", "gevent")
        if machine.get(name)
    )
    lines = [
        "```sh",
        report.get("command", "python -m trio_echo bench"),
        "```",
        "",
        f"Run on {report.get('started_utc', '?')} in {report.get('elapsed_s', '?')} s, from "
        f"commit `{source}`, on {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores, "
        f"{machine.get('memory_gb', '?')} GB, {machine.get('os', '?')}), CPython "
        f"{machine.get('python', '?')}" + (f", {versions}" if versions else "") + ".",
    ]
    if "+dirty" in source or source == "unknown":
        lines += ["", "> **Not from committed code**: the source had uncommitted changes."]
    if report.get("quick"):
        lines += ["", "> **A `--quick` run**: tiny sizes, for checking the bench, not the models."]
    noisy = noisy_scenarios(report)
    if noisy:
        where = ", ".join(f"{name} {key} {cores:.2f}" for name, key, cores in noisy)
        lines += [
            "",
            f"> **Not a quiet run**: the CPU time used by neither the server nor the load "
            f"generator (other processes, and kernel network work charged to neither) was above "
            f"{QUIET_OTHER_CPU:g} cores in {len(noisy)} scenario(s): {where}. Treat those "
            "figures with care.",
        ]
    else:
        lines += [
            "",
            f"Other work on the machine stayed at or below {QUIET_OTHER_CPU:g} cores in every "
            "scenario (`other_cpu` in the JSON).",
        ]
    if storms := noisy_scenarios(report, kernel_heavy=True):
        worst = max(storms, key=lambda n: n[2])
        lines += [
            "",
            f"In the connection storms, the kernel's own work on connection set-up (charged to "
            f"neither process) reached {worst[2]:.2f} cores ({worst[0]}, {worst[1]}).",
        ]
    return "\n".join(lines) + "\n"


def _sizes_table(_: Mapping[str, Any]) -> str:
    sizes = model_sizes()
    rows = [
        [
            f"`{name}`",
            str(size.lines),
            ", ".join(m.removeprefix("trio_echo.") for m in size.modules),
        ]
        for name, size in sizes.items()
    ]
    return (
        f"Code lines (neither blank, comment nor docstring) each model runs beyond the "
        f"{shared_lines()} lines all of them share (configuration, output formats, listening "
        "sockets); counted by `trio_echo.bench.lab` from the source, not typed.\n\n"
        + table(["model", "own code lines", "its modules"], rows, numbers=False)
    )


def _fenced(text: str) -> str | None:
    """A terminal table as it is (its columns line up in a fixed-width font)."""
    return f"```text\n{text.rstrip()}\n```\n" if text.strip() else None


KEEPS_INTRO = """\
N clients stream numbered, self-checking lines into the server (text mode, stdout read by the
bench); SIGTERM comes mid-stream with a grace period; half the clients finish within it, the
others are still sending when it ends. Counted from what the clients sent and what was printed:
lines written to the socket before the signal but never printed (*lost*), printed cut short
(*torn*), printed twice or never sent (*dup/bad*); read by the server but never printed
(*dropped*, from its own summary); how each client's connection ended (clean EOF, reset, still
open); the time from the signal to exit, the exit status, and whether the port could be bound
again at once. Variants: one SIGTERM; a second SIGTERM a quarter of the grace period later
(forced); and a stdout nobody reads until after the drain timeout (stalled).
"""

COSTS_INTRO = """\
Why a model is fast or slow: per echo request (100 connections × 64 B), the server's CPU
microseconds and context switches, and, in a separate run under `strace -f -c` (which slows the
server: the counts hold, the times do not), its system calls per request by name. Trio alone
re-arms each socket with `epoll_ctl` before every wait; the trio model's accelerator keeps one
registration per socket (compare `trio` with `trio-nohub` and `trio-stock`).
"""

LATENCY_INTRO = """\
Latency without coordinated omission: first each model's closed-loop peak (every client waits
for its answer before sending again), then an open loop at 25/50/75/90 % of that peak: requests
due on a fixed schedule, and each latency measured from when the request was due (as wrk2
does), so a server that stalls is not simply asked less. A `~` marks a model whose closed-loop
peak drifted by more than 20 % between before and after the curve.
"""


def _overhead(report: Mapping[str, Any]) -> str | None:
    """``trio-metrics ÷ trio`` (:mod:`.overhead`), as the terminal shows it."""
    found = metrics_overhead(report)
    return None if found is None else _fenced(found["text"])


def _keeps(report: Mapping[str, Any]) -> str | None:
    table_text = _fenced("\n".join(render_correctness(report)))
    return None if table_text is None else KEEPS_INTRO + "\n" + table_text


def _costs(report: Mapping[str, Any]) -> str | None:
    table_text = _fenced(costs.render_costs(report))
    return None if table_text is None else COSTS_INTRO + "\n" + table_text


def _latency(report: Mapping[str, Any]) -> str | None:
    table_text = _fenced(latency.render_latency(report))
    return None if table_text is None else LATENCY_INTRO + "\n" + table_text


# What each scenario does, by key prefix (the sizes are in each scenario's title, from the run).
HOW: tuple[tuple[str, str], ...] = (
    ("correctness_", "see *What a graceful shutdown keeps* above"),
    (
        "article",
        "the article's experiment: Python clients connected at once, each sending a line at a "
        "steady pace; the figure is the lines of each client printed *while all were "
        "connected* (one client at a time shows as 8,0,0,0)",
    ),
    (
        "echo_",
        "N clients in a closed loop: send B bytes, wait until all of them came back, repeat. "
        "Each client's first round trip is not measured (every client is accepted before the "
        "clock starts), then a warm-up, then `--repeats` measured runs taken in turns with the "
        "other models; requests/s is their median, with the spread; CPU µs and context "
        "switches are the server's per request",
    ),
    ("costs", "see *Where the time goes* below"),
    ("latency", "see *Latency under load, open loop* below"),
    (
        "stream_into",
        "`--raw` streaming as below, but stdout is a pipe read by `cat` into /dev/null, or a "
        "regular file (emptied before each run): where the trio model splices "
        "(docs/performance.md, round 3)",
    ),
    (
        "stream_raw",
        "one client writes blocks as fast as the server reads them, then half-closes; the "
        "clock stops when the server closes, so bytes left in kernel buffers do not count; "
        "stdout is /dev/null; MB/s is 10⁶ B/s",
    ),
    (
        "stream_text",
        "the same with lines of L bytes in text mode, where the server cleans and prefixes "
        "every line",
    ),
    (
        "idle_memory",
        "N clients each do one echo (so the server really holds a handler for each), then stay "
        "idle: (RSS after − RSS before) / N",
    ),
    (
        "storm_busy",
        "the storm while echo clients keep the server busy: the time until every new client "
        "got its echo, and what the busy clients got meanwhile",
    ),
    (
        "storm",
        "N clients connect at once; each sends one line, waits for its echo and leaves: the "
        "time from the first connect to the last echo",
    ),
    (
        "shutdown",
        "N idle clients, each served once, then SIGTERM with `--grace 0`: the time from the "
        "signal to the process's exit; every client must see its connection closed",
    ),
    (
        "c10k",
        "N connections held, each served once: RSS per connection; then SIGTERM with the "
        "grace period shown: the time to exit",
    ),
)


def _how(report: Mapping[str, Any]) -> str | None:
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    rows = []
    for key, title in titles.items():
        how = next((text for prefix, text in HOW if key.startswith(prefix)), None)
        if how is not None:
            rows.append([title, how])
    return table(["scenario", "what it does"], rows, numbers=False) if rows else None


BEFORE: tuple[Section, ...] = (("What a graceful shutdown keeps", _keeps),)
AFTER: tuple[Section, ...] = (
    ("Where the time goes", _costs),
    ("Latency under load, open loop", _latency),
    ("What --metrics costs", _overhead),
    ("What each scenario does", _how),
)


def render_markdown(
    report: Mapping[str, Any],
    *,
    sections_before: Sequence[Section] = BEFORE,
    sections_after: Sequence[Section] = AFTER,
    json_name: str = "benchmarks.json",
    plot_name: str | None = "benchmarks.png",
) -> str:
    """The whole page: the run, the sections given first, a table per speed scenario, the
    sections given after, the models' sizes."""
    out = [
        "# Benchmarks\n",
        "Generated by `python -m trio_echo bench --markdown` from one run; every figure is in "
        f"[{json_name}]({json_name}), and `python -m trio_echo bench --from-json {json_name} "
        "--markdown OUT.md` rebuilds this page from it. What each scenario does, and how to "
        "read the figures: [lab.md](lab.md).\n",
        "## The run\n",
        _run_facts(report),
    ]
    for title, render in sections_before:
        if (text := render(report)) is not None:
            out += [f"## {title}\n", text]
    titles: Mapping[str, str] = report.get("scenario_titles", {})
    out.append("## Speed and resources\n")
    if plot_name:
        out.append(f"![benchmark chart]({plot_name})\n")
    for key in _keys(report):
        out += [f"### {titles.get(key, key)}\n", scenario_table(report, key)]
    for title, render in sections_after:
        if (text := render(report)) is not None:
            out += [f"## {title}\n", text]
    out += ["## The models and their size\n", _sizes_table(report)]
    summaries = [[f"`{n}`", m.summary] for n, m in MODELS.items()]
    out.append(table(["model", "what it is"], summaries, numbers=False))
    return "\n".join(out)
