"""``python -m trio_echo replay CAPTURE.jsonl --to HOST:PORT [--speed X]``.

Exit status: 0 when every connection was replayed, 1 when some failed (each said in one line as
it happens) or the host does not resolve, 2 on bad input -- a bad flag, a capture that is
missing, unreadable or not a jsonl capture -- found before anything is sent.  One summary line
on stderr at the end; nothing on stdout.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
from collections.abc import Sequence

from trio_echo.cli.argtypes import EXIT_ERROR, EXIT_OK, EXIT_USAGE, OneLineParser, host_and_port

__all__ = ["main", "parse_speed"]

PROG = "trio-echo replay"


def parse_speed(text: str) -> float:
    """``--speed``: a positive factor, ``inf`` for no waiting at all."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number (or inf), got {text!r}"
        ) from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be greater than 0 (2: twice as fast; inf: as fast as possible), got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Replay a capture of `python -m trio_echo --format jsonl` against a TCP server: "
            "every captured connection is opened at its captured time and sends exactly the "
            "bytes its client sent, at their times, concurrently as they happened. What the "
            "server answers is read and discarded."
        ),
        epilog=(
            "exit status: 0 when every connection was replayed, 1 when some failed (one line "
            "each) or HOST does not resolve, 2 on bad input (checked before anything is sent)."
        ),
    )
    parser.add_argument(
        "capture",
        metavar="CAPTURE.jsonl",
        help="the server's --format jsonl output; - reads standard input",
    )
    parser.add_argument(
        "--to",
        required=True,
        type=host_and_port,
        metavar="HOST:PORT",
        help="the server to replay against (an IPv6 address in brackets: [::1]:9000)",
    )
    parser.add_argument(
        "--speed",
        type=parse_speed,
        default=1.0,
        metavar="X",
        help="play X times as fast as captured: 2 halves every wait, 0.5 doubles them, inf "
        "opens every connection at once and sends without waiting (default: 1)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        return _replay(args)
    except KeyboardInterrupt:  # while reading a large capture, or resolving
        return _fail("interrupted", 128 + signal.SIGINT)


def _replay(args: argparse.Namespace) -> int:
    # Imported after the flags are checked: --help and a bad flag need no Trio.
    import trio

    from trio_echo.cli.failures import describe_failure, raise_fd_limit
    from trio_echo.replay.capture import CaptureError, read_capture
    from trio_echo.replay.play import ConnectionResult, ReplayResult, Target, replay

    try:
        capture = read_capture(args.capture)
    except CaptureError as exc:
        return _fail(str(exc), EXIT_USAGE)
    target = Target(*args.to)
    try:
        socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        return _fail(f"--to {target}: cannot resolve {target.host!r}: {why}", EXIT_ERROR)
    raise_fd_limit()  # a capture may hold thousands of concurrent connections

    def report(result: ConnectionResult) -> None:
        if result.error is not None:
            conn = result.connection
            print(
                f"{PROG}: connection {conn.label} from {conn.peer} (capture line {conn.line}): "
                f"{result.error}",
                file=sys.stderr,
            )

    async def replay_until_interrupted() -> ReplayResult | None:
        # Ctrl-C arrives as a message, not as a KeyboardInterrupt raised wherever the code
        # happens to be (say, between a connect and the ``async with`` that would close its
        # socket): every connection is cancelled at a checkpoint and closes what it holds.
        outcome: ReplayResult | None = None
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def play() -> None:
                    nonlocal outcome
                    outcome = await replay(capture, target, args.speed, report)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(play)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        return outcome

    try:
        outcome = trio.run(replay_until_interrupted)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        # Ctrl-C (however deep in exception groups): 130 and one line, like anything else.
        status, message = describe_failure(exc)
        return _fail(message or "interrupted", status)
    if outcome is None:
        return _fail("interrupted", 128 + signal.SIGINT)
    failed = len(outcome.failed)
    total = len(outcome.results)
    done = f"{total - failed} of {total}" if failed else f"{total}"
    print(
        f"{PROG}: replayed {done} connection{'s' * (total != 1)} to {target}: "
        f"{outcome.sent} of {capture.size} bytes sent, {outcome.received} received, "
        f"in {outcome.elapsed:.3f} s (captured: {capture.duration:.3f} s, speed {args.speed:g})"
        + (f"; {failed} failed" if failed else ""),
        file=sys.stderr,
    )
    return EXIT_ERROR if failed else EXIT_OK


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status
