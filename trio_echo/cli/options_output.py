"""The flags of issue 14's output part: ``--timestamps[=utc|relative]`` and ``--output FILE``
(``--format hex`` is one more value of ``--format``, in :mod:`trio_echo.cli.options`).

Kept apart from :mod:`trio_echo.cli.options`, which only calls :func:`add_arguments` and
:func:`config_fields`.  Bad values are usage errors, one line and exit status 2, before anything
starts -- and before anything is created on disk: ``--output`` in a missing directory is refused
by looking, not by trying (the file itself is created once the server listens).
"""

from __future__ import annotations

import argparse
import os

from trio_echo.output.format import OutputFormat
from trio_echo.output.stamps import Timestamps

__all__ = ["add_arguments", "config_fields", "output_problem"]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the flags to the parser's output group."""
    group.add_argument(
        "--timestamps",
        nargs="?",
        const=Timestamps.UTC.value,
        choices=[form.value for form in Timestamps],
        default=None,
        metavar="utc|relative",
        help="start every text and hex line with the time its bytes were received: "
        "2026-12-02T01:02:03.456789Z (utc, the default form), or +12.345678, seconds since "
        "the server started (--timestamps=relative); jsonl records carry their time already",
    )
    group.add_argument(
        "--output",
        metavar="FILE",
        help="append the output to FILE instead of stdout (created if missing); SIGHUP "
        "reopens it by its name, for logrotate (default: stdout; trio model only)",
    )


def config_fields(
    parser: argparse.ArgumentParser, args: argparse.Namespace, fmt: OutputFormat
) -> tuple[Timestamps | None, str | None]:
    """The :class:`~trio_echo.config.Config` fields ``timestamps`` and ``output`` of these flags
    (a usage error exits)."""
    timestamps = None if args.timestamps is None else Timestamps(args.timestamps)
    if timestamps is not None and fmt in (OutputFormat.RAW, OutputFormat.JSONL):
        why = (
            "jsonl records carry their time already"
            if fmt is OutputFormat.JSONL
            else "raw output is the bytes exactly as received"
        )
        parser.error(f"--timestamps is for text and hex output: {why}")
    if args.output is not None and (problem := output_problem(args.output)) is not None:
        parser.error(f"argument --output: {problem}")
    output: str | None = args.output
    return timestamps, output


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be the ``--output`` file, checked by looking, without creating
    anything; ``None`` if it looks fine.  (Here, not in :mod:`trio_echo.output.file`: the
    command line of the blocking models must not import Trio.)"""
    if not path:
        return "an empty path"
    if os.path.isdir(path):
        return f"{path} is a directory"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{path}: no such directory {directory}"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return f"{path}: not writable"
    elif not os.access(directory, os.W_OK | os.X_OK):
        return f"{path}: cannot create a file in {directory}"
    return None
