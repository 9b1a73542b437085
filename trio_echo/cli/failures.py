"""Whatever stops the program becomes an exit status and at most one line on stderr, never a
traceback; and the process-wide set-up every server process does (the descriptor limit)."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from trio_echo.cli.argtypes import EXIT_ERROR, PROG
from trio_echo.lifecycle import WorkerError
from trio_echo.logs import LOGGER
from trio_echo.net.bind import ListenError
from trio_echo.net.tls import TLSSetupError
from trio_echo.output.stdout import StdoutClosed, StdoutError

__all__ = ["describe_failure", "explain", "fail", "raise_fd_limit"]


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


def fail(message: str, status: int = EXIT_ERROR) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def describe_failure(exc: BaseException) -> tuple[int, str | None]:
    """The exit status for whatever stopped the server, and the one line that says why
    (``None``: nothing to say, Ctrl-C before the signal handlers were in place)."""
    leaves = list(_leaves(exc))
    for kind in (ListenError, StdoutClosed, StdoutError, TLSSetupError, WorkerError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                # A --unix path problem is the command line's (UnixPathError): exit status 2.
                return getattr(leaf, "exit_status", EXIT_ERROR), str(leaf)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        # Ctrl-C before the signal handlers were in place: nothing to drain yet.
        return 128 + 2, None
    LOGGER.debug("unexpected error", exc_info=exc)
    first = leaves[0] if leaves else exc
    return EXIT_ERROR, f"unexpected {type(first).__name__}: {first} (run with --log-level debug)"


def explain(exc: BaseException) -> int:
    """One line on stderr for whatever stopped the server, and the exit status."""
    status, message = describe_failure(exc)
    return status if message is None else fail(message, status)
