"""docs/deployment.md's metric table is the exposition's own list: every metric the server can
serve (TCP, ``--udp``, ``--workers``) has its row there, with its type, labels and help text
as served, and every metric name the page mentions anywhere (the table, the scrape config,
the PromQL recipe) is one the server serves.  On a mismatch the assertion shows the table to
paste."""

from __future__ import annotations

import re
from pathlib import Path

from trio_echo.metrics.exposition import Family, families
from trio_echo.metrics.snapshot import take
from trio_echo.stats import ServerStats

DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"

# The table sits between these two lines of the page.
BEGIN = "<!-- metrics table: checked by tests/test_metrics_docs.py -->"
END = "<!-- end of metrics table -->"

# A histogram's series: its name with one of these.
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _all_families() -> dict[str, tuple[Family, str]]:
    """Every family the server can serve, by name as scraped, with when it is there."""
    tcp = take(ServerStats(), None)
    udp_stats = ServerStats(udp=True)
    udp_stats.kernel_drops = 0  # where the kernel reports its drops (Linux)
    udp = take(udp_stats, None)
    supervisor = {**tcp, "workers": 2, "worker_restarts": 0}
    kinds = {
        "tcp": families(tcp),
        "udp": families(udp),
        "workers": families(supervisor),
    }
    names = {kind: {_scraped(f) for f in found} for kind, found in kinds.items()}
    out: dict[str, tuple[Family, str]] = {}
    for kind, found in kinds.items():
        for family in found:
            name = _scraped(family)
            if name in out:
                continue
            if name in names["tcp"] and name in names["udp"]:
                when = "always"
            elif name in names["tcp"]:
                when = "TCP, Unix"
            elif kind == "udp":
                when = "`--udp`"
            else:
                when = "`--workers`"
            out[name] = (family, when)
    return out


def _scraped(family: Family) -> str:
    """The name a query uses: a counter's with ``_total``, a histogram's base name."""
    return family.name + "_total" if family.type == "counter" else family.name


def _labels(family: Family) -> str:
    keys = sorted({k for _, labels, _ in family.samples for k, _ in labels if k != "le"})
    return ", ".join(f"`{k}`" for k in keys)


def expected_table() -> str:
    rows = ["| metric | type | labels | when | what it counts |", "| --- | --- | --- | --- | --- |"]
    for name, (family, when) in _all_families().items():
        help_text = family.help.replace("|", "\\|")
        rows.append(f"| `{name}` | {family.type} | {_labels(family)} | {when} | {help_text} |")
    return "\n".join(rows)


def test_the_table_is_the_exposition() -> None:
    text = DOC.read_text()
    assert BEGIN in text, f"docs/deployment.md lacks {BEGIN!r}"
    assert END in text, f"docs/deployment.md lacks {END!r}"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == expected_table(), "paste this table:\n" + expected_table()


def test_every_metric_the_page_names_is_served() -> None:
    served = set(_all_families())
    histograms = {
        name for name, (family, _) in _all_families().items() if family.type == "histogram"
    }
    mentioned = set(re.findall(r"\b(?:trio_echo|process)_[a-z_]+\b", DOC.read_text()))
    unknown = {
        name
        for name in mentioned
        if name not in served
        and not any(name == h + suffix for h in histograms for suffix in HISTOGRAM_SUFFIXES)
    }
    assert not unknown, f"docs/deployment.md names metrics the server does not serve: {unknown}"
    assert served <= mentioned
