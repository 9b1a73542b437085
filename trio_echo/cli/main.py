"""The command line: ``python -m trio_echo`` / ``trio-echo``.

Parses the flags into a :class:`~trio_echo.config.Config`, runs the server and turns every way it
can end into an exit status and at most one line on stderr -- never a traceback:

* 0: stopped by a signal after a graceful shutdown;
* 1: a runtime error (cannot listen, stdout closed, ...);
* 2: a usage error (bad flag or value);
* 128 + N: forced exit by a second signal N (130 for Ctrl-C twice, 143 for SIGTERM twice).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from trio_echo.cli.argtypes import EXIT_ERROR, EXIT_USAGE, PROG

__all__ = ["exit_program", "main", "script"]

# The server needs POSIX (resource, fcntl, POSIX signals and sessions): on Windows, it says so in
# one line, before anything else is imported (README, "Platforms").
WINDOWS_REFUSAL = f"{PROG}: error: Windows is not supported; run it under WSL"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-echo`` and ``python -m trio_echo``; returns the exit status."""
    if sys.platform == "win32":
        print(WINDOWS_REFUSAL, file=sys.stderr)
        return EXIT_USAGE
    # SIGUSR1 asks for the status dump (trio_echo.metrics.status), which the trio model and
    # the supervisor give once they listen for it; until then (while the command line is
    # read, too), and in every other model, it does nothing rather than its default, killing
    # the server.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Imported here, after the platform check: they import POSIX-only modules (resource, ...).
    from trio_echo.cli.failures import explain, fail, raise_fd_limit
    from trio_echo.cli.options import parse_args
    from trio_echo.logs import LOGGER, NOTICE, setup_logging
    from trio_echo.models import MODELS

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        from trio_echo.bench.cli import main as bench_main

        return bench_main(args[1:])
    if args[:1] == ["replay"]:
        from trio_echo.replay.cli import main as replay_main

        return replay_main(args[1:])
    config, model, log_level = parse_args(args)
    setup_logging(log_level)
    try:
        if config.output is None:  # --output FILE: stdout is not used
            os.fstat(1)
    except OSError:
        return fail("stdout is closed; redirect it, e.g. >/dev/null")
    raise_fd_limit()
    try:
        if config.workers > 1:
            from trio_echo.workers.run import run_supervisor

            outcome = run_supervisor(config, log_level)
        else:
            outcome = MODELS[model].load()(config)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        return explain(exc)
    if outcome.exit_status == EXIT_ERROR:
        return fail(outcome.summary)
    LOGGER.log(NOTICE, "%s", outcome.summary)
    return outcome.exit_status


def exit_program(status: int) -> NoReturn:
    """Exit the program with ``status`` once :func:`main` has returned it.

    Every byte was written by then (the server's writer drains stdout before ``main``
    returns; Python flushes ``sys.stdout`` and ``sys.stderr`` and runs ``atexit`` as always).
    What this saves is the interpreter's final garbage collections over everything still
    allocated, which nobody will read: ``gc.freeze`` first makes them skip it, about a tenth
    of a second of a c10k SIGTERM -> exit (docs/performance.md, round 3).  Not under ``-X dev``,
    where those collections may still report an unclosed resource.  (Only here, where the
    process ends: tests call :func:`main` in-process.)"""
    if not sys.flags.dev_mode and hasattr(gc, "freeze"):
        gc.freeze()
    sys.exit(status)


def script() -> NoReturn:
    """The ``trio-echo`` command."""
    exit_program(main())
