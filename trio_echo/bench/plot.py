"""``bench --plot``: a PNG chart of a report's main figures, one panel per kind of scenario.

Apart from the table (:mod:`.report`) because it is optional: matplotlib comes with the
``bench`` extra, is imported only when a chart is asked for, and its absence is one line
(:class:`PlotUnavailable`).  Like the table it works on the JSON-shaped report, so a chart can be
redrawn from a saved run (``--from-json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailable", "write_plot"]


class PlotUnavailable(Exception):
    """matplotlib is not installed; the message says how to get it."""


def _figure(report: Mapping[str, Any], key: str, name: str, field: str) -> float:
    """A figure for the chart: 0 where the scenario was skipped (the table says why)."""
    result = report["models"][name].get("scenarios", {}).get(key, {})
    if "skipped" in result:
        return 0.0
    return float(result.get(field, 0.0) or 0.0)


def write_plot(report: Mapping[str, Any], path: Path) -> None:
    """A PNG of the main figures: echo requests/s per case, streaming MB/s, memory per idle
    connection, storm and shutdown times.  matplotlib is optional (the ``bench`` extra)."""
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
    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    width = 0.8 / max(1, len(names))
    for ax, (title, panel_keys, unit, field, log) in zip(axes.flat, panels, strict=True):
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
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
