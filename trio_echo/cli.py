"""The command line: ``python -m trio_echo`` / ``trio-echo``.

Parses the flags into a :class:`~trio_echo.config.Config`, runs the server and turns every way it
can end into an exit status and at most one line on stderr -- never a traceback:

* 0: stopped by a signal after a graceful shutdown;
* 1: a runtime error (cannot listen, stdout closed, ...);
* 2: a usage error (bad flag or value);
* 128 + N: forced exit by a second signal N (130 for Ctrl-C twice, 143 for SIGTERM twice).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from . import __version__
from .access import Network, parse_network
from .config import DEFAULT_HOSTS, DEFAULT_PORT, Config
from .lifecycle import WorkerError
from .listen import ListenError, inherited_problem, systemd_fds
from .logs import LEVELS, LOGGER, NOTICE, setup_logging
from .models import HARDENING_FLAGS, MODELS, SCALE_OUT_FLAGS
from .output import DEFAULT_MAX_LINE, OutputFormat
from .stdout import StdoutClosed, StdoutError
from .tls import DEFAULT_HANDSHAKE_TIMEOUT, TLSSetupError, server_context

__all__ = ["OneLineParser", "main", "number_type", "parse_args"]

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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {text!r}")
    return value


def _fd(text: str) -> int:
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


def _workers(text: str) -> int:
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


def _host(text: str) -> str:
    # An empty name would reach getaddrinfo (and maybe a resolver) only to fail at run time
    # with status 1; it is a bad command line, status 2.
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a host name or address, got an empty string")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "A TCP server that prints what its clients send (or echoes it back), built on "
            "Trio's structured concurrency. Data goes to stdout, diagnostics to stderr. "
            "SIGINT/SIGTERM: stop accepting, give clients --grace seconds, exit 0; a second "
            "signal closes everything at once."
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
        type=_host,
        metavar="HOST",
        help="address to listen on, repeatable (default: loopback only, "
        f"{' and '.join(DEFAULT_HOSTS)}); use :: or 0.0.0.0 to open it to the network",
    )
    net.add_argument(
        "--port",
        type=_port,
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
        help="close a connection that sent nothing for this long (default: off)",
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
        type=_fd,
        metavar="N",
        help="serve the listening TCP socket inherited as file descriptor N instead of "
        "opening one; repeatable; not with --host/--port (default: systemd's LISTEN_FDS when "
        "LISTEN_PID is ours and neither --host nor --port is given; trio model only)",
    )
    net.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="serve with N worker processes sharing the port (SO_REUSEPORT), one per core "
        "with 'auto'; a supervisor restarts a worker that dies and stops them all on "
        "SIGINT/SIGTERM (default: %(default)s, this process serves; trio model only)",
    )
    net.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="behind a load balancer: every client starts with a PROXY protocol header (v1 "
        "or v2), and is shown by the address it names; a client without one is refused. "
        "--allow/--deny apply to the balancer's address (trio model only)",
    )
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
        "received; jsonl: one JSON object per line and per open/close event (default: text)",
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
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="trio",
        help="the concurrency model of the server (default: %(default)s): "
        + "; ".join(
            f"{m.name}: {m.summary}"
            + (
                f" (no {', '.join(sorted(flags))})"
                if (flags := m.unsupported - HARDENING_FLAGS - SCALE_OUT_FLAGS)
                else ""
            )
            for m in MODELS.values()
        ),
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
        dest = flag.lstrip("-").replace("-", "_")
        if flag in given or getattr(args, dest) != parser.get_default(dest):
            parser.error(f"--model {model.name} does not support {flag}")
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if (why_not := model.available()) is not None:
        parser.error(f"--model {model.name} is not available: {why_not}")
    if args.raw and args.format not in (None, "raw"):
        parser.error(f"--raw conflicts with --format {args.format}")
    fmt = OutputFormat.RAW if args.raw else OutputFormat(args.format or "text")
    allow = _networks(parser, "--allow", args.allow)
    deny = _networks(parser, "--deny", args.deny)
    _check_tls(parser, args.tls_cert, args.tls_key)
    fds = _listening_fds(parser, args, given, model.name)
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


def raise_fd_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit: every client costs a descriptor,
    and the usual soft limit (1024) is far below what one process may hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        LOGGER.debug("could not raise the file descriptor limit from %d: %s", soft, exc)
    else:
        LOGGER.debug("file descriptor limit raised from %d to %d", soft, target)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _fail(message: str, status: int = EXIT_ERROR) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def describe_failure(exc: BaseException) -> tuple[int, str | None]:
    """The exit status for whatever stopped the server, and the one line that says why
    (``None``: nothing to say, Ctrl-C before the signal handlers were in place)."""
    leaves = list(_leaves(exc))
    for kind in (ListenError, StdoutClosed, StdoutError, TLSSetupError, WorkerError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return EXIT_ERROR, str(leaf)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        # Ctrl-C before the signal handlers were in place: nothing to drain yet.
        return 128 + 2, None
    LOGGER.debug("unexpected error", exc_info=exc)
    first = leaves[0] if leaves else exc
    return EXIT_ERROR, f"unexpected {type(first).__name__}: {first} (run with --log-level debug)"


def _explain(exc: BaseException) -> int:
    """One line on stderr for whatever stopped the server, and the exit status."""
    status, message = describe_failure(exc)
    return status if message is None else _fail(message, status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-echo`` and ``python -m trio_echo``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        from .bench.cli import main as bench_main

        return bench_main(args[1:])
    config, model, log_level = parse_args(args)
    setup_logging(log_level)
    try:
        os.fstat(1)
    except OSError:
        return _fail("stdout is closed; redirect it, e.g. >/dev/null")
    raise_fd_limit()
    try:
        if config.workers > 1:
            from .supervisor import run_supervisor

            outcome = run_supervisor(config, log_level)
        else:
            outcome = MODELS[model].load()(config)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        return _explain(exc)
    if outcome.exit_status == EXIT_ERROR:
        return _fail(outcome.summary)
    LOGGER.log(NOTICE, "%s", outcome.summary)
    return outcome.exit_status
