"""Parsing a command line into a :class:`~trio_echo.config.Config`: every flag, and the checks
that make a bad value a usage error (one line, exit status 2) before anything starts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from trio_echo import __version__
from trio_echo.cli import options_metrics, options_output, options_udp, options_unix
from trio_echo.cli.argtypes import (
    PROG,
    OneLineParser,
    fd_number,
    host_name,
    number_type,
    port_number,
    worker_count,
)
from trio_echo.config import DEFAULT_HOSTS, DEFAULT_PORT, Config
from trio_echo.logs import LEVELS
from trio_echo.models import (
    HARDENING_FLAGS,
    METRICS_FLAGS,
    MODELS,
    SCALE_OUT_FLAGS,
    UNIX_FLAGS,
)
from trio_echo.net.access import Network, parse_network
from trio_echo.net.bind import inherited_problem, systemd_fds
from trio_echo.net.tls import DEFAULT_HANDSHAKE_TIMEOUT, TLSSetupError, server_context
from trio_echo.output.format import DEFAULT_MAX_LINE, OutputFormat

__all__ = ["build_parser", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "A TCP server that prints what its clients send (or echoes it back), built on "
            "Trio's structured concurrency. Data goes to stdout, diagnostics to stderr. "
            "SIGINT/SIGTERM/SIGHUP: stop accepting, give clients --grace seconds, exit 0; a "
            "second signal closes everything at once (with --output, SIGHUP reopens the file)."
        ),
        epilog=(
            "exit status: 0 after a graceful shutdown, 1 on a runtime error (cannot listen, "
            "stdout closed), 2 on a usage error, 128+N when a second signal N forced the exit."
        ),
    )
    net = parser.add_argument_group("listening")
    net.add_argument(
        "--host",
        action="append",
        type=host_name,
        metavar="HOST",
        help="address to listen on, repeatable (default: loopback only, "
        f"{' and '.join(DEFAULT_HOSTS)}); use :: or 0.0.0.0 to open it to the network",
    )
    net.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    net.add_argument(
        "--max-connections",
        type=number_type("a whole number", 0, strict=True, integer=True),
        default=None,
        metavar="N",
        help="serve at most N clients at once; the rest wait in the kernel's listen backlog "
        "(their connect succeeds, their data waits) until a slot frees (default: no limit)",
    )
    net.add_argument(
        "--idle-timeout",
        type=number_type("a number of seconds", 0, strict=True),
        default=None,
        metavar="SECONDS",
        help="close a connection that sent nothing for this long, or did not read its echo "
        "for this long (default: off)",
    )
    net.add_argument(
        "--grace",
        type=number_type("a number of seconds", 0, strict=False),
        default=5.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long connected clients may go on before they are closed "
        "(default: %(default)g)",
    )
    net.add_argument(
        "--fd",
        action="append",
        type=fd_number,
        metavar="N",
        help="serve the listening TCP socket inherited as file descriptor N instead of "
        "opening one; repeatable; not with --host/--port (default: systemd's LISTEN_FDS when "
        "LISTEN_PID is ours and neither --host nor --port is given; trio model only)",
    )
    net.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="serve with N worker processes sharing the port, one per core with 'auto': on "
        "Linux each has its own sockets and SO_REUSEPORT spreads the clients, elsewhere they "
        "all accept from one shared listening socket; a supervisor restarts a worker that "
        "dies and stops them all on SIGINT/SIGTERM (default: %(default)s, this process "
        "serves; trio model only)",
    )
    net.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="behind a load balancer: every client starts with a PROXY protocol header (v1 "
        "or v2), and is shown by the address it names; a client without one is refused. "
        "--allow/--deny apply to the balancer's address (trio model only)",
    )
    options_udp.add_arguments(net)
    guard = parser.add_argument_group(
        "exposing the server (trio model only)",
        "For a server reachable from other machines: TLS, who may connect, how much one client "
        "may send. --idle-timeout and --max-connections bound slow clients too.",
    )
    guard.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS (1.2 or later) with this PEM certificate chain (default: plain TCP)",
    )
    guard.add_argument(
        "--tls-key",
        metavar="FILE",
        help="the PEM private key of --tls-cert, without a passphrase (default: in the "
        "--tls-cert file)",
    )
    guard.add_argument(
        "--tls-handshake-timeout",
        type=number_type("a number of seconds", 0, strict=True),
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="close a TLS client that has not completed its handshake this long after "
        "connecting (default: %(default)g)",
    )
    # CIDR blocks stay strings until the model is known (see parse_args).
    guard.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="accept only clients in this block (10.0.0.0/8, fd00::/8, or one address); "
        "repeatable. The most specific --allow/--deny rule that matches decides (deny on a "
        "tie); refused clients are closed at once and logged (default: everybody)",
    )
    guard.add_argument(
        "--deny",
        action="append",
        metavar="CIDR",
        help="refuse clients in this block; repeatable (see --allow)",
    )
    guard.add_argument(
        "--max-bytes",
        type=number_type("a number of bytes", 0, strict=True, integer=True),
        default=None,
        metavar="BYTES",
        help="close a connection once its client sends more than this in all; exactly BYTES "
        "are printed (default: no limit)",
    )
    options_unix.add_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--echo", action="store_true", help="also send every byte back to its client")
    out.add_argument(
        "--quiet", action="store_true", help="print no data on stdout (events still go to stderr)"
    )
    out.add_argument(
        "--format",
        choices=[f.value for f in OutputFormat],
        default=None,
        help="text: '[peer] line', control characters escaped; raw: the bytes exactly as "
        "received; jsonl: one JSON object per line and per open/close event; hex: hexdump "
        "-C's rows of 16 bytes, offsets within the connection (default: text)",
    )
    out.add_argument(
        "--raw", action="store_true", help="same as --format raw (for piping into a file)"
    )
    out.add_argument(
        "--max-line",
        type=number_type("a number of bytes", 4, strict=False, integer=True),
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="print a longer line in pieces of this size, marked as continued "
        "(default: %(default)s)",
    )
    options_output.add_arguments(out)
    options_metrics.add_arguments(parser)
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="trio",
        help="the concurrency model of the server (default: %(default)s): "
        + "; ".join(
            f"{m.name}: {m.summary}"
            + (
                f" (no {', '.join(sorted(flags))})"
                if (
                    flags := m.unsupported
                    - HARDENING_FLAGS
                    - SCALE_OUT_FLAGS
                    - UNIX_FLAGS
                    - METRICS_FLAGS
                )
                else ""
            )
            for m in MODELS.values()
        ),
    )
    parser.add_argument(
        "--no-accelerator",
        dest="accelerate",
        action="store_false",
        help="read sockets through Trio's own wait_readable instead of the epoll readiness "
        "hub, as where epoll is missing, copy --raw output instead of splicing it, and test "
        "text for unsafe bytes with bytes.translate instead of the C scan (for comparing; "
        "trio model only)",
    )
    parser.add_argument(
        "--log-level",
        choices=list(LEVELS),
        default="info",
        help="stderr detail: info has a line per connection, notice only start-up and "
        "shutdown (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, str, str]:
    """The :class:`Config`, the model and the log level for a command line (exits 2 on a usage
    error, including a flag the chosen model cannot honour or a model not installed here)."""
    parser = build_parser()
    # Known arguments first, so that "--model sync --proxy-protocol 2" says that the model does
    # not support the flag rather than complaining about the "2".
    args, extras = parser.parse_known_args(argv)
    model = MODELS[args.model]
    given = [arg.split("=", 1)[0] for arg in (argv if argv is not None else sys.argv[1:])]
    for flag in sorted(model.unsupported):
        # By value too: argparse also accepts an abbreviation (--max-conn 2).
        dest = parser._option_string_actions[flag].dest
        if flag in given or getattr(args, dest) != parser.get_default(dest):
            parser.error(f"--model {model.name} does not support {flag}")
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    options_udp.check(parser, args, given)  # --udp refuses the flags of a connection
    if (why_not := model.available()) is not None:
        parser.error(f"--model {model.name} is not available: {why_not}")
    if args.raw and args.format not in (None, "raw"):
        parser.error(f"--raw conflicts with --format {args.format}")
    fmt = OutputFormat.RAW if args.raw else OutputFormat(args.format or "text")
    allow = _networks(parser, "--allow", args.allow)
    deny = _networks(parser, "--deny", args.deny)
    _check_tls(parser, args.tls_cert, args.tls_key)
    unix = options_unix.parse_options(parser, args, given)
    if args.udp and unix.unix is not None:
        parser.error("--udp with --unix: Unix datagram sockets are not served; choose one")
    fds = (
        () if args.udp or unix.unix is not None else _listening_fds(parser, args, given, model.name)
    )
    timestamps, output = options_output.config_fields(parser, args, fmt)
    config = Config(
        hosts=args.host or DEFAULT_HOSTS,
        port=args.port,
        echo=args.echo,
        quiet=args.quiet,
        output_format=fmt,
        grace=args.grace,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        max_line=args.max_line,
        max_bytes=args.max_bytes,
        allow=allow,
        deny=deny,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_handshake_timeout=args.tls_handshake_timeout,
        proxy_protocol=args.proxy_protocol,
        fds=fds,
        workers=args.workers,
        accelerate=args.accelerate,
        udp=args.udp,
        unix=unix.unix,
        unix_mode=unix.unix_mode,
        keepalive=unix.keepalive,
        timestamps=timestamps,
        output=output,
        **options_metrics.config_fields(args),  # type: ignore[arg-type]
    )
    return config, args.model, args.log_level


def _networks(
    parser: argparse.ArgumentParser, flag: str, texts: list[str] | None
) -> tuple[Network, ...]:
    """The CIDR blocks of a repeated ``--allow``/``--deny``; a malformed one is a usage error.

    Parsed here rather than by argparse's ``type=``, so that ``--model sync --allow x``
    says the model does not support ``--allow`` instead of complaining about ``x``.
    """
    networks: list[Network] = []
    for text in texts or ():
        try:
            networks.append(parse_network(text))
        except ValueError as exc:
            parser.error(f"argument {flag}: {exc}")
    return tuple(networks)


def _listening_fds(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: list[str], model: str
) -> tuple[int, ...]:
    """The inherited listening sockets to serve: ``--fd``, else systemd's.

    Precedence: ``--fd`` (with ``--host``/``--port`` a usage error: which one is meant?); then
    an explicit ``--host``/``--port`` (the environment is ignored); then ``LISTEN_FDS`` when
    ``LISTEN_PID`` is our pid; then the default addresses.  A ``--fd`` that is not a listening
    TCP socket is a usage error (one line, exit status 2), checked now, before anything starts.
    """
    explicit = [flag for flag in ("--host", "--port") if flag in given]
    if args.host is not None and "--host" not in explicit:
        explicit.append("--host")  # given abbreviated (--ho)
    if args.fd:
        if explicit:
            parser.error(f"--fd conflicts with {explicit[0]}: serve either one or the other")
        for fd in args.fd:
            if (problem := inherited_problem(fd)) is not None:
                parser.error(f"argument --fd: file descriptor {fd} is {problem}")
        if len(set(args.fd)) != len(args.fd):
            parser.error("argument --fd: the same descriptor twice")
        return tuple(args.fd)
    if explicit or model != "trio" or args.port != DEFAULT_PORT:
        return ()
    try:
        return systemd_fds(os.environ) or ()
    except ValueError as exc:
        parser.error(str(exc))


def _check_tls(parser: argparse.ArgumentParser, cert: str | None, key: str | None) -> None:
    """Load the certificate and key now, so that a bad file is a usage error (one line, exit
    status 2) before anything listens.  The server loads them again when it starts."""
    if cert is None:
        if key is not None:
            parser.error("--tls-key needs --tls-cert")
        return
    try:
        server_context(cert, key)
    except TLSSetupError as exc:
        parser.error(str(exc))
