"""A snapshot as the text a Prometheus scrape reads: OpenMetrics 1.0 when the scraper asks for
it (Prometheus does, in its ``Accept`` header), the classic text format 0.0.4 otherwise (curl,
older scrapers).  The two differ only in a counter's ``TYPE`` line, escaping, and the
``# EOF`` that ends an OpenMetrics page.

Names follow Prometheus's conventions: the ``trio_echo_`` prefix, base units in the name
(``_seconds``, ``_bytes``), ``_total`` on counters, and the standard
``process_start_time_seconds``.  Every metric is described in docs/deployment.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs

from trio_echo.metrics.snapshot import Snapshot

__all__ = [
    "OPENMETRICS_TYPE",
    "TEXT_TYPE",
    "Family",
    "content_type",
    "families",
    "render",
    "wants_openmetrics",
]

OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@attrs.frozen
class Family:
    """One metric family: its name (without ``_total`` for a counter), type, help, and its
    samples as (name suffix, labels, value)."""

    name: str
    type: str
    help: str
    samples: tuple[tuple[str, Labels, float], ...]


def _counter(name: str, help: str, value: float, labels: Labels = ()) -> Family:
    return Family(name, "counter", help, (("_total", labels, value),))


def _gauge(name: str, help: str, value: float) -> Family:
    return Family(name, "gauge", help, (("", (), value),))


def _by(name: str, help: str, label: str, counts: dict[str, int]) -> Family:
    samples = tuple(("_total", ((label, key),), value) for key, value in counts.items())
    return Family(name, "counter", help, samples)


def _histogram(name: str, help: str, data: dict[str, object]) -> Family:
    bounds = list(data["bounds"])  # type: ignore[call-overload]
    counts = list(data["counts"])  # type: ignore[call-overload]
    samples: list[tuple[str, Labels, float]] = []
    cumulative = 0
    for bound, count in zip([*bounds, math.inf], counts, strict=True):
        cumulative += count
        samples.append(("_bucket", (("le", _number(float(bound))),), cumulative))
    samples.append(("_count", (), cumulative))
    samples.append(("_sum", (), float(data["sum"])))  # type: ignore[arg-type]
    return Family(name, "histogram", help, tuple(samples))


def families(snapshot: Snapshot) -> list[Family]:
    """Every metric family of ``snapshot`` (a server's, or a supervisor's sum of them)."""
    s = snapshot
    out = [
        _gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            s["start_time"],
        ),
    ]
    if s.get("udp"):
        out += [
            _counter("trio_echo_datagrams_received", "UDP datagrams received.", s["datagrams"]),
            _counter(
                "trio_echo_datagrams_refused",
                "UDP datagrams dropped for --allow/--deny.",
                s["datagrams_refused"],
            ),
        ]
        if s.get("datagrams_dropped") is not None:
            out.append(
                _counter(
                    "trio_echo_datagrams_dropped",
                    "UDP datagrams the kernel dropped because the receive buffer was full "
                    "(stdout too slow).",
                    s["datagrams_dropped"],
                )
            )
    else:
        out += [
            _counter(
                "trio_echo_connections_accepted",
                "Clients accepted and handed to a handler.",
                s["accepted"],
            ),
            _by(
                "trio_echo_connections_refused",
                "Clients turned away, by reason: deny (--allow/--deny), tls (handshake "
                "failed or timed out), proxy (no valid PROXY header), max_bytes (cut off "
                "for sending more than --max-bytes).",
                "reason",
                s["refused"],
            ),
            _gauge("trio_echo_connections_active", "Clients connected now.", s["active"]),
            _by(
                "trio_echo_connections_closed",
                "Connections closed, by reason: client, idle (--idle-timeout), max_bytes, "
                "lost (reset), grace_over (still there when --grace ended), forced (second "
                "signal), error, other.",
                "reason",
                s["closed"],
            ),
            _counter(
                "trio_echo_accept_pauses",
                "Times accepting paused for lack of file descriptors.",
                s["accept_pauses"],
            ),
            _histogram(
                "trio_echo_connection_duration_seconds",
                "How long connections lasted, counted when they close.",
                s["duration_seconds"],
            ),
            _histogram(
                "trio_echo_tls_handshake_seconds",
                "How long successful TLS handshakes took.",
                s["handshake_seconds"],
            ),
        ]
    out += [
        _counter("trio_echo_received_bytes", "Bytes received from clients.", s["received_bytes"]),
        _counter("trio_echo_echoed_bytes", "Bytes sent back with --echo.", s["echoed_bytes"]),
        _counter(
            "trio_echo_printed_bytes",
            "Bytes of output handed to stdout (or the --output file).",
            s["printed_bytes"],
        ),
        _counter(
            "trio_echo_printed_lines",
            "Lines formatted for output (text, jsonl records, hex rows).",
            s["printed_lines"],
        ),
        _gauge(
            "trio_echo_output_queue_bytes",
            "Output waiting for stdout, in bytes (with a per-item overhead).",
            s["queue_bytes"],
        ),
        _gauge(
            "trio_echo_output_queue_limit_bytes",
            "What the output queue may hold before handlers wait.",
            s["queue_limit_bytes"],
        ),
        _gauge(
            "trio_echo_stdout_blocked_handlers",
            "Handlers waiting for room in the output queue now (stdout is slower than the "
            "clients).",
            s["blocked_handlers"],
        ),
        _counter(
            "trio_echo_stdout_blocked_seconds",
            "Time handlers spent waiting for room in the output queue, summed over handlers.",
            s["blocked_seconds"],
        ),
    ]
    if "workers" in s:
        out += [
            _gauge("trio_echo_workers", "Worker processes running now.", s["workers"]),
            _counter(
                "trio_echo_worker_restarts",
                "Workers started again after an unexpected exit.",
                s["worker_restarts"],
            ),
        ]
    return out


def render(metric_families: list[Family], *, openmetrics: bool) -> bytes:
    """The exposition text of ``metric_families``."""
    return "".join(_lines(metric_families, openmetrics)).encode()


def _lines(metric_families: list[Family], openmetrics: bool) -> Iterator[str]:
    for family in metric_families:
        # The classic format names a counter's family with its _total, OpenMetrics without.
        name = family.name
        if family.type == "counter" and not openmetrics:
            name += "_total"
        yield f"# HELP {name} {_escape(family.help, openmetrics, quote=False)}\n"
        yield f"# TYPE {name} {family.type}\n"
        for suffix, labels, value in family.samples:
            yield f"{family.name}{suffix}{_labels(labels, openmetrics)} {_number(value)}\n"
    if openmetrics:
        yield "# EOF\n"


def _labels(labels: Labels, openmetrics: bool) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value, openmetrics, quote=True)}"' for key, value in labels)
    return "{" + inner + "}"


def _escape(text: str, openmetrics: bool, *, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    if quote or openmetrics:
        text = text.replace('"', '\\"')
    return text


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def wants_openmetrics(accept: str) -> bool:
    """Whether a request's ``Accept`` header asks for OpenMetrics (as Prometheus's does)."""
    return "application/openmetrics-text" in accept.lower()


def content_type(openmetrics: bool) -> str:
    return OPENMETRICS_TYPE if openmetrics else TEXT_TYPE
