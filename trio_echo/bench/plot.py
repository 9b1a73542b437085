"""``bench --plot``: a PNG chart of a report's main figures, one panel per kind of scenario, and
the latency-vs-load curves of the open loop (:mod:`.scenarios.latency`) where the report has them.

Apart from the table (:mod:`.report`) because it is optional: matplotlib comes with the
``bench`` extra, is imported only when a chart is asked for, and its absence is one line
(:class:`PlotUnavailable`).  Like the table it works on the JSON-shaped report, so a chart can be
redrawn from a saved run (``--from-json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trio_echo.bench.scenarios.latency import KEY as LATENCY_KEY
from trio_echo.bench.scenarios.latency import curve

__all__ = ["PlotUnavailable", "plot_latency", "write_plot"]


class PlotUnavailable(Exception):
    """matplotlib is not installed; the message says how to get it."""


def _figure(report: Mapping[str, Any], key: str, name: str, field: str) -> float:
    """A figure for the chart: 0 where the scenario was skipped (the table says why)."""
    result = report["models"][name].get("scenarios", {}).get(key, {})
    if "skipped" in result:
        return 0.0
    return float(result.get(field, 0.0) or 0.0)


def _curves(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each model's latency curve (:func:`.scenarios.latency.curve`), for the models that have
    one."""
    found = {}
    for name, entry in report["models"].items():
        points = curve(entry.get("scenarios", {}).get(LATENCY_KEY, {}))
        if points:
            found[name] = points
    return found


def plot_latency(axes: Sequence[Any], report: Mapping[str, Any]) -> bool:
    """The open loop's p99 and p99.9 against the offered load, one line per model, on two
    matplotlib axes; False (nothing drawn) when the report has no curve.

    The offered load is in requests/s, not in percent of each model's peak: where the lines
    stop shows each model's capacity, and at one load the lower line is the better model.  Log
    scale for the latency: a tail grows by orders of magnitude near the peak."""
    curves = _curves(report)
    if not curves:
        return False
    for ax, field, label in zip(axes, ("p99_ms", "p99_9_ms"), ("p99", "p99.9"), strict=True):
        for name, points in curves.items():
            shown = [p for p in points if p.get(field) is not None and p.get("offered_rps")]
            ax.plot(
                [p["offered_rps"] for p in shown],
                [max(p[field], 0.001) for p in shown],
                marker="o",
                label=name,
            )
        ax.set_yscale("log")
        ax.set_xlabel("offered load, requests/s (25/50/75/90 % of each model's closed-loop peak)")
        ax.set_ylabel("ms from when the request was due")
        ax.set_title(f"open loop: {label} latency vs load (lower is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return True


def write_plot(report: Mapping[str, Any], path: Path) -> None:
    """A PNG of the main figures: echo requests/s per case, streaming MB/s, memory per idle
    connection, storm and shutdown times, and (a fourth row) the open loop's latency-vs-load
    curves where the report has them.  matplotlib is optional (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install 'trio-echo[bench]' (or pip install matplotlib)"
        ) from exc

    names = list(report["models"])
    keys: list[str] = []
    for entry in report["models"].values():
        for key in entry.get("scenarios", {}):
            if key not in keys:
                keys.append(key)
    echo_keys = [k for k in keys if k.startswith("echo_")]
    stream_keys = [k for k in keys if k.startswith("stream_")]
    # (title, scenarios, unit, figure, log scale)
    panels: list[tuple[str, list[str], str, str, bool]] = [
        ("echo: requests/s (higher is better)", echo_keys, "requests/s", "requests_per_s", False),
        ("echo: p99 latency (lower is better, log scale)", echo_keys, "ms", "p99_ms", True),
        (
            "streaming into the print path (higher is better)",
            stream_keys,
            "MB/s",
            "mb_per_s",
            False,
        ),
        (
            "memory per idle connection (lower is better)",
            [k for k in keys if k in ("idle_memory", "c10k")],
            "KiB",
            "kb_per_connection",
            False,
        ),
        (
            "connection storm: all served (lower is better)",
            [k for k in keys if k in ("storm", "storm_busy")],
            "seconds",
            "total_s",
            False,
        ),
        (
            "SIGTERM to exit (lower is better)",
            [k for k in keys if k == "shutdown"],
            "seconds",
            "exit_s",
            False,
        ),
    ]
    latency = bool(_curves(report))
    fig, axes = plt.subplots(4 if latency else 3, 2, figsize=(14, 17 if latency else 13))
    width = 0.8 / max(1, len(names))
    grid = list(axes.flat)
    if latency:
        plot_latency(grid[len(panels) :], report)
    for ax, (title, panel_keys, unit, field, log) in zip(grid, panels, strict=False):
        for i, name in enumerate(names):
            values = [_figure(report, key, name, field) for key in panel_keys]
            positions = [x + (i - (len(names) - 1) / 2) * width for x in range(len(panel_keys))]
            bars = ax.bar(positions, values, width, label=name)
            for bar, key in zip(bars, panel_keys, strict=True):
                figures = report["models"][name].get("scenarios", {}).get(key, {})
                if field != "p99_ms" and figures.get("loadgen_saturated"):
                    # The load generator was the limit: the true figure is at least this.
                    ax.annotate(
                        "*",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                    )
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(panel_keys)))
        ax.set_xticklabels(
            [report.get("scenario_titles", {}).get(k, k) for k in panel_keys],
            rotation=15 if len(panel_keys) > 2 else 0,
            ha="right" if len(panel_keys) > 2 else "center",
            fontsize=8,
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    machine = report.get("machine", {})
    fig.suptitle(
        f"trio_echo bench{' --quick' if report.get('quick') else ''}: "
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"Python {machine.get('python', '?')}\n(missing bar: skipped, see the table; "
        "*: load generator saturated, a lower bound)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97 if latency else 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
