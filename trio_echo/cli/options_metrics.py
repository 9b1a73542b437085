"""The flags of issue 15, seeing inside a running server: ``--metrics [HOST:]PORT`` and
``--stats-interval SECONDS`` (:mod:`trio_echo.metrics`; the SIGUSR1 status dump needs no
flag).  Kept apart from :mod:`trio_echo.cli.options`, which only calls :func:`add_arguments`
and :func:`config_fields`."""

from __future__ import annotations

import argparse

from trio_echo.cli.argtypes import metrics_address, number_type

__all__ = ["add_arguments", "config_fields"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the "observing" group to the parser."""
    group = parser.add_argument_group("observing (trio model only)")
    group.add_argument(
        "--metrics",
        type=metrics_address,
        default=None,
        metavar="[HOST:]PORT",
        help="serve OpenMetrics/Prometheus metrics at http://HOST:PORT/metrics (a bare PORT "
        "is on 127.0.0.1; port 0 picks a free one, named on stderr); with --workers, the "
        "supervisor serves every worker's figures added up. SIGUSR1 writes a status dump to "
        "stderr, with or without this",
    )
    group.add_argument(
        "--stats-interval",
        type=number_type("a number of seconds", 0, strict=True),
        default=None,
        metavar="SECONDS",
        help="every SECONDS, one 'stats:' line on stderr with the rates since the last one",
    )


def config_fields(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~trio_echo.config.Config` fields of these flags."""
    return {"metrics": args.metrics, "stats_interval": args.stats_interval}
