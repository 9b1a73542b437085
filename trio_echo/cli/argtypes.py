"""The command line's vocabulary: exit statuses, a parser whose errors are one line, and the
value types of the flags (each error names the value and what was expected)."""

from __future__ import annotations

import argparse
import ipaddress
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
    "host_and_port",
    "host_name",
    "metrics_address",
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


def host_and_port(text: str, *, port_zero: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (replay's ``--to``, ``--metrics``): the host without
    brackets, and the port (0, "any free port", only with ``port_zero``)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{host!r} in brackets is not an IPv6 address, in {text!r}"
            ) from None
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"an IPv6 address goes in brackets, as in [::1]:PORT, got {text!r}"
        )
    if not host.strip():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port number after ':', got {text!r}"
        ) from None
    if not (0 if port_zero else 1) <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"the port must be {0 if port_zero else 1}-65535, got {text!r}"
        )
    return host, number


def metrics_address(text: str) -> tuple[str, int]:
    """``--metrics``: ``HOST:PORT``, ``[IPv6]:PORT``, or a bare ``PORT`` on 127.0.0.1 (metrics
    stay on this machine unless a host says otherwise); port 0 picks a free one."""
    if text.isdigit():
        return host_and_port(f"127.0.0.1:{text}", port_zero=True)
    return host_and_port(text, port_zero=True)


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
