"""The outside check's verdicts: do vmbench's figure and ours agree, and was it a fair test;
and the table that says so (:mod:`.outside` runs the clients).  Pure functions, unit-tested.

Agreement is the claim of issue 13: requests/s within ±15 % where both clients measured the same
thing.  They did not when a client was the limit -- saturated, or leaving the server time to
spare that the other client did not (its figure is a bound on that client) -- nor when other
work on the machine took a share of it during a run (it took it from the server or a client,
not from both alike): such cells are flagged and reported, not counted either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from trio_echo.bench.scenarios.common import SATURATED
from trio_echo.bench.vmbench import Run

__all__ = [
    "AGREEMENT",
    "NOISY",
    "Verdict",
    "compare",
    "judge",
    "per_server_cpu",
    "render_markdown",
    "summarize",
]

# The claim checked: the two clients' requests/s agree within this fraction.
AGREEMENT = 0.15
# Cores of other work on the machine (other processes, the kernel's network work charged to
# none) above which a disagreement may be noise, and the table says so.
NOISY = 0.25


@attrs.frozen
class Verdict:
    """The comparison of one cell: vmbench ÷ loadgen, and what it means."""

    ratio: float | None
    within: bool  # the ratio is within ±AGREEMENT
    comparable: bool  # no client saturated, the machine quiet: both measured the same thing
    text: str

    @property
    def flagged(self) -> bool:
        """Outside ±AGREEMENT (or no ratio): the table marks it."""
        return not self.within

    @property
    def disagrees(self) -> bool:
        """Outside ±AGREEMENT where both measured the same thing: what ``--check`` fails on."""
        return self.comparable and not self.within


def _limits(vmbench: Run, ours: Run) -> list[str]:
    """Why a figure was its client's and not the server's: the client was saturated, or the
    server had time to spare under one client and none under the other (in a closed loop, the
    requests the server was not busy with were waiting in that client)."""
    found = [
        f"{name} client saturated ({cpu:.2f} cores)"
        for name, cpu in (("vmbench", vmbench.client_cpu), ("loadgen", ours.client_cpu))
        if cpu is not None and cpu >= SATURATED
    ]
    for name, run, against in (("vmbench", vmbench, ours), ("loadgen", ours, vmbench)):
        if (
            run.server_cpu is not None
            and against.server_cpu is not None
            and run.server_cpu < SATURATED <= against.server_cpu
            and run.rps < against.rps
        ):
            found.append(
                f"server not saturated under {name} ({run.server_cpu:.2f} cores, "
                f"{against.server_cpu:.2f} under the other): {name}'s client was the limit"
            )
    return found


def judge(vmbench: Run, ours: Run, agreement: float = AGREEMENT) -> Verdict:
    """Do the two clients agree?  Within ±``agreement`` of each other's requests/s, and whether
    that was a fair test.  It was not when a client was the limit (:func:`_limits`: its figure
    is a bound on that client), nor when other work took ``NOISY`` cores or more of the machine
    during a run (it took them from the server or a client, not from both alike)."""
    if not ours.rps or not vmbench.rps:
        return Verdict(None, False, False, "no requests from one client")
    ratio = vmbench.rps / ours.rps
    within = abs(ratio - 1) <= agreement
    other = max(vmbench.other_cpu or 0.0, ours.other_cpu or 0.0)
    if other >= NOISY:
        why = f"other work took {other:.2f} cores"
        text = f"agree ({why})" if within else f"noisy: {why}, run again"
        return Verdict(ratio, within, False, text)
    if limits := _limits(vmbench, ours):
        bound = "agree even so" if within else "a bound on that client"
        return Verdict(ratio, within, False, f"{'; '.join(limits)}: {bound}")
    return Verdict(ratio, within, True, "agree" if within else "DISAGREE")


def per_server_cpu(vmbench: Run, ours: Run) -> float | None:
    """The ratio of requests per second of server CPU: vmbench's ÷ ours.  Where the server was
    the bottleneck it got what other work left it, and its requests/s moved with that; per CPU
    second, the figure the server itself earns is left (a check, not the claim)."""
    if not (vmbench.server_cpu and ours.server_cpu and ours.rps):
        return None
    return (vmbench.rps / vmbench.server_cpu) / (ours.rps / ours.server_cpu)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def compare(vmbench: Run, ours: Run) -> dict[str, Any]:
    """One cell's figures and verdict, as the JSON and the table have them."""
    verdict = judge(vmbench, ours)
    return {
        "vmbench": attrs.asdict(vmbench),
        "loadgen": attrs.asdict(ours),
        "ratio": _round(verdict.ratio),
        "ratio_per_server_cpu": _round(per_server_cpu(vmbench, ours)),
        "within": verdict.within,
        "comparable": verdict.comparable,
        "verdict": verdict.text,
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def per_request_us(cores: float | None, rps: float) -> float | None:
    """CPU microseconds per request: what a process spends on each, saturated or not."""
    return None if cores is None or not rps else cores / rps * 1e6


def _pair(vm: Mapping[str, Any], lg: Mapping[str, Any], key: str, digits: int = 2) -> str:
    return f"{_f(vm[key], digits)} / {_f(lg[key], digits)}"


def _per_request(vm: Mapping[str, Any], lg: Mapping[str, Any], key: str) -> str:
    return " / ".join(_f(per_request_us(run[key], run["rps"]), 0) for run in (vm, lg))


HEADER = (
    "| model | conns × bytes | vmbench req/s | loadgen req/s | ratio | ratio per server CPU "
    "| client CPU, cores (vm / lg) | client CPU µs/req | server CPU, cores | server CPU µs/req "
    "| p50 ms | other CPU | verdict |",
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The table of docs/outside-check.md: one row per model and cell; each pair of figures
    is vmbench's run / ours; a ratio outside ±15 % is in bold."""
    lines = list(HEADER)
    for cell in report["cells"]:
        where = f"{cell.get('connections', '–')} × {cell.get('size', '–')}"
        if "skipped" in cell:
            lines.append(f"| {cell['model']} | {where} |" + " |" * 10 + f" {cell['skipped']} |")
            continue
        vm, lg = cell["vmbench"], cell["loadgen"]
        ratio = _f(cell["ratio"]) if cell["within"] else f"**{_f(cell['ratio'])}**"
        other = max(vm["other_cpu"] or 0.0, lg["other_cpu"] or 0.0)
        lines.append(
            f"| {cell['model']} | {where} | {vm['rps']:,.0f} | {lg['rps']:,.0f} | {ratio} "
            f"| {_f(cell['ratio_per_server_cpu'])} | {_pair(vm, lg, 'client_cpu')} "
            f"| {_per_request(vm, lg, 'client_cpu')} "
            f"| {_pair(vm, lg, 'server_cpu')} | {_per_request(vm, lg, 'server_cpu')} "
            f"| {_pair(vm, lg, 'p50_ms', 3)} | {_f(other)} | {cell['verdict']} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"Comparable cells (no client the limit, other work under {NOISY:g} cores): "
        f"{s['comparable']}, of which within "
        f"±{AGREEMENT:.0%}: {s['comparable_within']}.  All cells within ±{AGREEMENT:.0%}: "
        f"{s['within']} of {s['measured']}.",
    ]
    return "\n".join(lines) + "\n"


def summarize(cells: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    measured = [c for c in cells if "ratio" in c]
    comparable = [c for c in measured if c["comparable"]]
    return {
        "measured": len(measured),
        "within": sum(1 for c in measured if c["within"]),
        "comparable": len(comparable),
        "comparable_within": sum(1 for c in comparable if c["within"]),
    }
