"""A ``--workers`` worker as a child process: its interpreter flags, its stdout pipe, and its
exit in words (for the supervisor's log lines)."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["PIPE_SIZE", "describe_exit", "grow_pipe", "interpreter_flags"]

# The size of a worker's stdout pipe (F_SETPIPE_SZ, best effort): a whole batch of the
# worker's writer (up to 1 MiB) fits, so the worker seldom waits for the supervisor.
PIPE_SIZE = 1024 * 1024


def describe_exit(returncode: int | None) -> str:
    """``exited with status 1`` / ``was killed by SIGKILL``."""
    if returncode is None:
        return "could not be started"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def interpreter_flags() -> list[str]:
    """The interpreter options of this process (``-X dev``, ``-W error``, ...) for a worker's
    command line, as :mod:`multiprocessing` passes them on: a program run under ``python -X
    dev -W error`` is run so in all its processes, workers included."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return flags


def grow_pipe(fd: int) -> None:
    """Make the pipe ``fd`` writes into ``PIPE_SIZE`` bytes, where the platform can (Linux)."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):
        pass  # the default (64 KiB on Linux) works too, with more round trips
