"""``python -m trio_echo bench``: the flags, the machine's preparation, the outputs.

Runs every scenario for every model (:mod:`.runner`), one after the other, scenario by scenario
(never two servers at once: they would share the machine's cores and measure each other), then
prints the table on stdout and writes ``--json`` and ``--plot``.  A model that is not installed,
or a scenario it cannot do, is recorded with the reason, so every model appears in the JSON with
every scenario.

The models are the CLI's (``--model``) plus the bench's own (:mod:`.lineup`): ``trio-bare``, the
reference, a bare ``trio.serve_tcp`` handler (:mod:`.bare`); ``trio-w2``, the trio model with
``--workers 2``; ``trio-nohub``, the trio model with ``--no-accelerator``; ``trio-metrics``, the
trio model with ``--metrics``, scraped while measured (:mod:`.scrape`); and with ``--baseline
REV``, ``trio@REV``, the trio model of an earlier revision (:mod:`.baseline`).  Under the table
the ratios of the same run (:mod:`.ratios`): ``trio-w2 ÷ trio``, ``trio ÷ trio@REV`` and ``trio
÷ trio-nohub`` (the accelerator's worth), and ``trio-metrics ÷ trio`` (:mod:`.overhead`).  After
the run the performance targets (:mod:`.targets`) are evaluated on the figures of this run and
printed under the table.

Exit status: 0 when the run completed (even with skipped scenarios: a skip is a result), 1 when
it could not run at all (no C compiler, matplotlib missing for ``--plot``, a ``--baseline``
that cannot be exported or imported) or, with ``--check``,
when a target evaluated failed; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from trio_echo.bench import baseline, fleet, loadgen
from trio_echo.bench.labpage import render_lab_page
from trio_echo.bench.lineup import (
    BARE_MODEL,
    NOHUB_MODEL,
    OPT_IN,
    REFERENCES,
    W2_MODEL,
    bench_models,
    with_baseline,
)
from trio_echo.bench.machine import machine_info, missing_process_figures
from trio_echo.bench.markdown import render_markdown
from trio_echo.bench.overhead import metrics_overhead
from trio_echo.bench.plot import PlotUnavailable, write_plot
from trio_echo.bench.ratios import accelerator_gain, baseline_gain, workers_gain
from trio_echo.bench.report import headroom, render_table, write_json
from trio_echo.bench.runner import Progress, run_all
from trio_echo.bench.scenarios import Context, Scenario, Sizes, scenarios_for
from trio_echo.bench.targets import evaluate, failures
from trio_echo.cli.argtypes import OneLineParser, number_type
from trio_echo.cli.failures import raise_fd_limit

# Re-exported: the lineup used to live here.
__all__ = ["BARE_MODEL", "NOHUB_MODEL", "REFERENCES", "W2_MODEL", "bench_models", "main"]

PROG = "trio-echo bench"

# Models run at once by --quick: its sizes are tiny and mostly waits (a grace period, a stalled
# stdout, a schedule), so six lanes on two cores bring a run of every model in every scenario
# near a minute; its figures were never for comparing models anyway.
QUICK_LANES = 6


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Benchmark every concurrency model: each runs as a real server subprocess on "
            "loopback, driven by a compiled C load generator (built with cc on first use). "
            "Prints a table; --json and --plot save the figures."
        ),
    )
    parser.add_argument(
        "--models",
        default=",".join(name for name in bench_models() if name not in OPT_IN),
        help="comma-separated models to compare (default: all: %(default)s; trio-bare is the "
        "reference, a bare trio.serve_tcp handler; trio-w2 is trio with --workers 2; "
        "trio-nohub is trio with --no-accelerator; trio-metrics is trio with --metrics, scraped "
        "every second of its echo and streaming runs; trio-wauto, trio with --workers auto, "
        "only when named)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the trio model of git revision REV (exported to build/baseline-REV), "
        "as the model trio@REV, in the same runs: the table adds trio ÷ trio@REV per figure",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated scenario keys or prefixes to run, e.g. echo,storm (default: all)",
    )
    parser.add_argument(
        "--duration",
        type=number_type("a number of seconds", 0, strict=True),
        default=None,
        metavar="SECONDS",
        help="seconds of traffic per echo and streaming measurement (default: 1.5, --quick 0.25)",
    )
    parser.add_argument(
        "--repeats",
        type=number_type("a whole number", 1, strict=False, integer=True),
        default=None,
        metavar="N",
        help="measured runs per echo and streaming scenario (after a warm-up) and per storm "
        "under load; the report gives their median and spread (default: 3, --quick 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, every model and scenario, under a minute (what the tests run)",
    )
    parser.add_argument(
        "--lanes",
        type=number_type("a whole number", 1, strict=False, integer=True),
        default=None,
        metavar="N",
        help="run each scenario for N models at once (default: 1; --quick: 6, which also "
        "means --no-pin): quicker, but servers running together measure each other, so only "
        "for checking that everything runs",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the servers and the load generator to separate CPUs",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="run nothing: rebuild the table (and --plot) from a JSON file a run wrote",
    )
    parser.add_argument("--plot", type=Path, metavar="PATH", help="write a PNG chart here")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help="write the report as a markdown page here (what docs/benchmarks.md is)",
    )
    parser.add_argument(
        "--lab-page",
        type=Path,
        metavar="PATH",
        help="write 'reading the lab' here: each model's code beside its figures (docs/lab.md)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a performance target evaluated fails (one line each on stderr); "
        "targets whose figures were not measured do not count",
    )
    return parser


def pin_cpus() -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(the servers' CPUs, the load generators' CPUs): the last CPU for the load generator (one
    single-threaded process) and this process, the others for the server under test.  On a
    machine of many CPUs, the last :func:`.fleet.loadgen_share` of them, one load generator each
    where a scenario drives many connections (:mod:`.fleet`).

    Why pin: on a small machine the server and the load generator otherwise fight over the same
    cores, and where the scheduler happens to put them (same core: a context switch per request;
    different cores: a cross-CPU wake-up) changes single-connection latency by a factor of
    several from one run to the next.  Pinned, every model gets the same CPUs and the load
    generator can never take the server's.  The price: a multi-threaded server (the threads
    model) cannot spill onto the load generator's core -- on a 2-core machine it would only
    have been stealing it.  ``None, None`` with fewer than two CPUs (or no affinity support).

    The exception is a server of several worker processes (trio-w2): it gets every CPU, the load
    generator's included (:meth:`.scenarios.Context.cpus_for`).
    """
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    share = fleet.loadgen_share(len(cpus))
    loadgen_cpus = tuple(cpus[-share:])
    os.sched_setaffinity(0, loadgen_cpus)  # inherited by every load generator started
    return tuple(cpus[:-share]), loadgen_cpus


def _selected(all_scenarios: list[Scenario], wanted: str | None) -> list[Scenario]:
    if not wanted:
        return all_scenarios
    parts = [p.strip() for p in wanted.split(",") if p.strip()]
    return [s for s in all_scenarios if any(s.key.startswith(p) for p in parts)]


def _write_plot(report: dict[str, Any], path: Path) -> int:
    try:
        write_plot(report, path)
    except PlotUnavailable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(report: dict[str, Any]) -> int:
    """``--check``: 1 and a line per failed target on stderr if any failed, else 0."""
    failed = failures(report["targets"])
    for evaluation in failed:
        print(f"{PROG}: target failed: {evaluation['line']}", file=sys.stderr)
    return 1 if failed else 0


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets evaluated on this report's figures, as JSON (with the ``--check`` line)."""
    return [{**e.to_json(), "line": e.line()} for e in evaluate(report)]


def _write_pages(
    report: dict[str, Any], markdown: Path | None, lab_page: Path | None, plot: Path | None
) -> None:
    """The markdown pages (linking the JSON and the chart by their names beside them)."""
    pages = []
    if markdown is not None:
        json_name = report.get("json_name") or "benchmarks.json"
        plot_name = None if plot is None else plot.name
        pages.append((markdown, render_markdown(report, json_name=json_name, plot_name=plot_name)))
    if lab_page is not None:
        pages.append((lab_page, render_lab_page(report)))
    for path, text in pages:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _replay(
    source: Path,
    plot: Path | None,
    check: bool,
    markdown: Path | None = None,
    lab_page: Path | None = None,
) -> int:
    """``--from-json``: the table and the chart of a saved run, without running anything (the
    targets are evaluated again, on the saved figures)."""
    try:
        report = json.loads(source.read_text())
        report["targets"] = _targets(report)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        print(f"{PROG}: error: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_table(report))
    report["json_name"] = source.name
    _write_pages(report, markdown, lab_page, plot)
    status = _write_plot(report, plot) if plot is not None else 0
    return status or (_check(report) if check else 0)


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.from_json is not None:
        return _replay(args.from_json, args.plot, args.check, args.markdown, args.lab_page)
    models = bench_models()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    before: baseline.Baseline | None = None
    if args.baseline is not None:
        try:
            before = baseline.prepare(args.baseline)
        except baseline.BaselineError as exc:
            print(f"{PROG}: error: --baseline: {exc}", file=sys.stderr)
            return 1
        models[before.name] = baseline.register(before)
        names = with_baseline(names, before.name)
    unknown = [n for n in names if n not in models]
    if unknown or not names:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(models)}")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        print(
            f"{PROG}: error: --plot needs matplotlib: pip install 'trio-echo[bench]'",
            file=sys.stderr,
        )
        return 1
    if args.quick:
        sizes = Sizes.quick(args.duration, None if args.repeats is None else int(args.repeats))
    else:
        sizes = Sizes(duration=args.duration or 1.5, repeats=int(args.repeats or 3))
    scenarios = _selected(scenarios_for(sizes), args.scenarios)
    if not scenarios:
        parser.error(f"no scenario matches {args.scenarios!r}")

    if (missing := missing_process_figures()) is not None:
        print(f"{PROG}: error: {missing}", file=sys.stderr)
        return 2
    raise_fd_limit()  # 10,000 connections need more than the usual 1,024 descriptors
    try:
        binary = loadgen.build()
    except loadgen.LoadgenError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    machine = machine_info()  # before pinning narrows this process to one CPU
    every_cpu = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    lanes = int(args.lanes or (QUICK_LANES if args.quick else 1))
    no_pin = args.no_pin or lanes > 1  # one CPU for every server at once would be worse
    server_cpus, loadgen_cpus = (None, None) if no_pin else pin_cpus()
    context = Context(
        binary=binary,
        sizes=sizes,
        server_cpus=server_cpus,
        all_cpus=None if server_cpus is None else every_cpu,
        loadgen_cpus=loadgen_cpus,
    )

    started = time.monotonic()
    report: dict[str, Any] = {
        "command": "python -m trio_echo bench " + shlex.join(list(argv)),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "lanes": lanes,
        "sizes": attrs.asdict(sizes),
        "machine": machine,
        # Other work on the machine skews every figure: say how busy it was before and after.
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "loadgen": {"tool": loadgen.version_line(binary)},
        "pinning": None
        if server_cpus is None
        else {
            "server_cpus": list(server_cpus),
            "loadgen_cpus": list(loadgen_cpus or ()),
            # The models whose servers run on other CPUs (several worker processes: all).
            "model_cpus": {
                n: list(cpus)
                for n in names
                if (cpus := context.cpus_for(models[n])) != server_cpus and cpus is not None
            },
        },
        "baseline": None
        if before is None
        else {
            "model": before.name,
            "revision": before.revision,
            "subject": before.subject,
            "source": str(before.source),
            "imports": str(before.imports),
        },
        "scenario_titles": {s.key: s.title for s in scenarios},
        "models": {},
    }
    progress = Progress(len(names) * len(scenarios))
    try:
        report["models"] = run_all(
            [models[n] for n in names], scenarios, context, progress, lanes=lanes
        )
    except KeyboardInterrupt:
        progress.close()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    progress.close()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["loadgen"]["headroom"] = headroom(report)
    report["workers_gain"] = workers_gain(report)
    report["baseline_gain"] = baseline_gain(report)
    report["accelerator_gain"] = accelerator_gain(report)
    report["metrics_overhead"] = metrics_overhead(report)
    report["targets"] = _targets(report)

    sys.stdout.write(render_table(report))
    sys.stdout.write(
        f"\n{len(names)} models, {len(scenarios)} scenarios in {report['elapsed_s']:g} s\n"
    )
    if args.json is not None:
        write_json(report, args.json)
        report["json_name"] = args.json.name
    _write_pages(report, args.markdown, args.lab_page, args.plot)
    if args.plot is not None and (status := _write_plot(report, args.plot)):
        return status
    return _check(report) if args.check else 0
