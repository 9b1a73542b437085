"""The command line's vocabulary: exit statuses, a parser whose errors are one line, and the
value types of the flags (each error names the value and what was expected)."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_WORKERS",
    "PROG",
    "OneLineParser",
    "fd_number",
    "host_name",
    "number_type",
    "port_number",
    "worker_count",
]

PROG = "trio-echo"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a hint), not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def number_type(
    kind: str, minimum: float, *, strict: bool, integer: bool = False
) -> Callable[[str], float]:
    """An argparse ``type=`` that accepts numbers above (or from) ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if (
            math.isnan(value)
            or math.isinf(value)
            or value < minimum
            or (strict and value == minimum)
        ):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {text!r}")
    return value


def fd_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a file descriptor number, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
    return value


# More workers than this is a typo, not a machine: each one is a process with its own memory.
MAX_WORKERS = 1024


def worker_count(text: str) -> int:
    """``--workers``: a count, or ``auto`` for the cores this process may run on."""
    if text == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of processes or 'auto', got {text!r}"
        ) from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_WORKERS} or 'auto', got {text!r}")
    return value


def host_name(text: str) -> str:
    # An empty name would reach getaddrinfo (and maybe a resolver) only to fail at run time
    # with status 1; it is a bad command line, status 2.
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a host name or address, got an empty string")
    return text
