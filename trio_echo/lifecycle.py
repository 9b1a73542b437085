"""The life of a server run, told alike by every model: the signals that stop it, the lines it
logs when it starts and stops, and how it ends (:class:`Outcome`).

No concurrency library is imported here, so the blocking models do not pay for Trio's import.
"""

from __future__ import annotations

import signal

import attrs

from trio_echo.config import Config
from trio_echo.logs import LOGGER, NOTICE
from trio_echo.net.bind import describe_addresses
from trio_echo.stats import ServerStats

__all__ = [
    "HANGUP_IGNORED",
    "MIN_DRAIN_TIMEOUT",
    "STOP_SIGNALS",
    "Outcome",
    "WorkerError",
    "force_hint",
    "forces",
    "log_forced",
    "log_listening",
    "log_stopping",
    "watched_signals",
]

# SIGHUP when we started was ignored: the server was started under `nohup` (or by something that
# meant the same), to outlive its terminal; then a hangup is left ignored, as it always was.
HANGUP_IGNORED = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN

# The signals that mean "please stop": Ctrl-C, what systemd, docker and kill send, and SIGHUP,
# the terminal went away (the same graceful stop: until issue 14 it killed the server outright,
# losing the output still queued).  SIGQUIT keeps its default, a core dump.  Every model.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + (() if HANGUP_IGNORED else (signal.SIGHUP,))


def forces(signum: int) -> bool:
    """Whether ``signum``, coming during a graceful stop, cuts it short.  SIGINT and SIGTERM do
    (Ctrl-C twice); SIGHUP does not: a terminal that goes away delivers it twice in a row (the
    shell forwards it to its jobs, then the kernel sends it to the foreground job as the shell
    exits), which is not a request to hurry.  Every model asks this."""
    return signum != signal.SIGHUP


def force_hint(signum: int) -> str:
    """How to force the stop that ``signum`` began: ``SIGINT again to force``."""
    if forces(signum):
        return f"{signal.Signals(signum).name} again to force"
    return "SIGINT or SIGTERM to force"


def watched_signals(reopen: bool) -> tuple[int, ...]:
    """The signals a server listens for: the stop signals, and with ``--output`` (``reopen``)
    SIGHUP always, even under ``nohup``: it is then logrotate's "reopen your file", never a
    stop (the trio model; :mod:`trio_echo.output.file`)."""
    if reopen and signal.SIGHUP not in STOP_SIGNALS:
        return (*STOP_SIGNALS, signal.SIGHUP)
    return STOP_SIGNALS


# At shutdown, once the clients are gone, stdout gets the grace period (but at least this many
# seconds) to take what is still queued: a reader that stopped reading must not keep a stopped
# server alive forever.
MIN_DRAIN_TIMEOUT = 1.0


class WorkerError(Exception):
    """A ``--workers`` worker could not start (its own error is on stderr above)."""


@attrs.frozen
class Outcome:
    """How a run ended: the exit status, the one-line summary for stderr, and the counts."""

    exit_status: int
    summary: str
    stats: ServerStats | None = attrs.field(default=None, eq=False)

    @classmethod
    def stopped(cls, stats: ServerStats) -> Outcome:
        """A graceful shutdown: exit status 0."""
        return cls(0, f"stopped: {stats.summary()}", stats)

    @classmethod
    def forced(cls, signum: int, stats: ServerStats, detail: str = "") -> Outcome:
        """A second signal cut the shutdown short: 128 + N, as a shell shows a signal death.
        ``detail``: how (a ``--workers`` supervisor names the workers that cut their
        clients off)."""
        how = f" ({detail})" if detail else ""
        return cls(128 + signum, f"forced exit{how}: {stats.summary()}", stats)

    @classmethod
    def orphaned(cls, stats: ServerStats) -> Outcome:
        """A ``--workers`` worker whose supervisor is gone closed every connection and
        stopped: a runtime error (exit status 1), not a graceful stop."""
        return cls(
            1, f"the supervisor is gone; every connection was closed: {stats.summary()}", stats
        )

    @classmethod
    def drain_failed(cls, drain_timeout: float, stats: ServerStats) -> Outcome:
        """stdout did not take the last output in time after the clients left: exit status 1."""
        return cls(
            1,
            f"stdout did not take the last output within {drain_timeout:g} s after the last "
            f"client left; the rest was dropped: {stats.summary()}",
            stats,
        )


def log_listening(addresses: list[tuple[object, ...]], config: Config) -> None:
    """The start-up line (tests and the bench parse it)."""
    LOGGER.log(
        NOTICE, "listening on %s (%s)", describe_addresses(addresses), config.describe_mode()
    )


def log_stopping(signum: int, grace: float, active: int, *, hint: bool = True) -> None:
    """The first signal's line (``hint``: how to force; not in a ``--workers`` worker, whose
    user signals the supervisor)."""
    name = signal.Signals(signum).name
    LOGGER.log(
        NOTICE,
        "%s: stopped accepting; waiting up to %g s for %d client%s%s",
        *(name, grace, active, "" if active == 1 else "s"),
        f" ({force_hint(signum)})" if hint else "",
    )


def log_forced(signum: int) -> None:
    """The second signal's line."""
    LOGGER.warning("%s again: closing every connection now", signal.Signals(signum).name)
