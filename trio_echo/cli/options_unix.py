"""The flags for Unix domain sockets and TCP keepalive (``--unix``, ``--unix-mode``,
``--keepalive``; trio model only): their help, and the checks that make a wrong value or a
wrong combination a usage error (one line, exit status 2).

The values are parsed here rather than by argparse's ``type=``, so that ``--model sync --unix
@x`` says that the model does not support ``--unix`` rather than complaining about ``@x``
(:func:`trio_echo.cli.options.parse_args` checks the model first).  What the filesystem says
about the path (a live socket, a file that is not a socket, a missing directory) is checked
where the socket is bound (:func:`trio_echo.net.unix.bind_unix`), once: also a usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

import attrs

from trio_echo.config import DEFAULT_PORT
from trio_echo.net.keepalive import MAX_INTERVAL, PROBES, parse_keepalive
from trio_echo.net.unix import parse_mode, path_problem

__all__ = ["UnixOptions", "add_arguments", "parse_options"]

T = TypeVar("T")


@attrs.frozen
class UnixOptions:
    """The :class:`~trio_echo.config.Config` fields of these flags."""

    unix: str | None = None
    unix_mode: int | None = None
    keepalive: int | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Unix domain sockets and keepalive (trio model only)",
        "--unix serves a Unix socket instead of TCP: it replaces --host/--port (not with "
        "them, nor with --fd, --allow/--deny or --keepalive); everything else works the same.",
    )
    group.add_argument(
        "--unix",
        metavar="PATH",
        help="listen on this Unix socket path, or @NAME in Linux's abstract namespace (no "
        "file), instead of TCP. A socket file left by a crash is replaced when nothing "
        "listens on it; the file is removed on exit. Clients are shown by the kernel's "
        "credentials, unix:pid=N,uid=N,gid=N",
    )
    group.add_argument(
        "--unix-mode",
        metavar="MODE",
        help="the --unix socket file's permissions in octal (660: its owner and group may "
        "connect), in force before anyone can connect (default: as the umask makes them)",
    )
    group.add_argument(
        "--keepalive",
        metavar="SECONDS",
        help="TCP keepalive on every connection: after SECONDS of silence, probe every "
        f"SECONDS/3 (at most {MAX_INTERVAL} s) and close the connection after {PROBES} "
        "unanswered probes: a peer that vanished (behind a NAT, a dead machine) goes within "
        "about 2 x SECONDS (default: off)",
    )


def parse_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: list[str]
) -> UnixOptions:
    """These flags' values from ``args`` (``given``: the flags as written, to tell an explicit
    ``--port`` from the default); a usage error exits 2 through ``parser``."""
    keepalive = _parse(parser, "--keepalive", args.keepalive, parse_keepalive)
    mode = _parse(parser, "--unix-mode", args.unix_mode, parse_mode)
    if args.unix is None:
        if mode is not None:
            parser.error("--unix-mode needs --unix")
        return UnixOptions(keepalive=keepalive)
    tcp = [
        flag
        for flag, used in (
            ("--host", args.host is not None),
            ("--port", "--port" in given or args.port != DEFAULT_PORT),
            ("--fd", bool(args.fd)),
        )
        if used
    ]
    if tcp:
        parser.error(f"--unix replaces the TCP listeners: give either --unix or {tcp[0]}")
    if args.allow or args.deny:
        parser.error(
            f"{'--allow' if args.allow else '--deny'} filters IP addresses, which --unix "
            "clients do not have: use --unix-mode or the directory's permissions"
        )
    if keepalive is not None:
        parser.error("--keepalive is for TCP connections, not --unix")
    if (problem := path_problem(args.unix, mode)) is not None:
        parser.error(f"argument --unix: {problem}")
    return UnixOptions(unix=args.unix, unix_mode=mode)


def _parse(
    parser: argparse.ArgumentParser, flag: str, text: str | None, parse: Callable[[str], T]
) -> T | None:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        parser.error(f"argument {flag}: {exc}")
