"""One ``--workers`` worker: ``python -m trio_echo.workers.worker CONTROL_FD``, started by the
supervisor (:mod:`trio_echo.workers.supervisor`), never by hand.

A worker is the ordinary Trio server (:func:`trio_echo.server.app.run`) with three differences:

* it serves the listening sockets its supervisor opened for it (its own ``SO_REUSEPORT`` set
  where the kernel balances those, else the one set every worker shares, bound by the
  supervisor or inherited) and does not bind anything itself;
* its stdout is a pipe to the supervisor, written in frames (:mod:`trio_echo.output.frames`): the
  supervisor alone writes the real stdout, whole batches at a time;
* it talks to the supervisor over the control socket ``CONTROL_FD``: the :class:`WorkerSpec`
  comes in first, ``FORCE`` on the second signal; ``ready`` goes out once it listens, its
  counts when it ends.  End of stream from the supervisor means it is gone (killed), and with
  it the only reader of the worker's output: the worker closes every connection and exits
  rather than serve on unsupervised (status 1, "the supervisor is gone"; forced, it exits
  128 + N as its supervisor does).

Signals come from the supervisor: the worker runs in a session of its own, so a Ctrl-C on the
terminal reaches the supervisor, which forwards a SIGTERM (the graceful shutdown), and forces
the exit over the control socket on a second signal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import signal
import socket
import sys
from collections.abc import Sequence
from functools import partial
from types import FrameType

import attrs
import trio

from trio_echo.config import Config
from trio_echo.lifecycle import STOP_SIGNALS, Outcome
from trio_echo.logs import LOGGER, setup_logging
from trio_echo.metrics.snapshot import Snapshot, take
from trio_echo.metrics.status import STATUS_SIGNAL
from trio_echo.server.app import run
from trio_echo.server.serve import ServerHandle
from trio_echo.stats import ServerStats
from trio_echo.workers.figures import ASK

__all__ = ["FORCE", "WorkerSpec", "force_message", "main", "send_message"]

# What the supervisor sends a worker on the second signal (``force N``, N the signal that forced
# it; see force_message): close every connection now.  The
# worker ignores further signals of its own, which may be the first one reaching it twice
# (systemd's default KillMode signals every process of the service; so does pkill).
FORCE = b"force"


# A whole FORCE line, with the signal number when there is one.
_FORCE_RE = re.compile(rb"%s(?: (\d+))?\n" % FORCE)


def force_message(signum: int) -> bytes:
    """``FORCE`` and the signal that forced the supervisor (``force 2``): the worker's exit
    status is then 128 + that signal, as the supervisor's is."""
    return b"%s %d\n" % (FORCE, signum)


@attrs.frozen
class WorkerSpec:
    """What a worker serves: the configuration (``fds``: its listening sockets, ``worker_id``:
    its number) and the stderr detail."""

    config: Config
    log_level: str


def send_message(control: socket.socket, **fields: object) -> None:
    """One JSON line on the control socket (a few dozen bytes: the socket buffer takes it at
    once, so this does not block)."""
    control.sendall(json.dumps(fields).encode() + b"\n")


@attrs.define
class _Cut:
    """Whether the supervisor cut the worker short, and how: the worker's exit status and
    summary say so (the server itself only knows that everything was cancelled)."""

    # The signal that forced the supervisor (its ``force N``), if it did.
    forced_by: int | None = None
    # The supervisor is gone (end of stream on the control socket).
    orphaned: bool = False

    def outcome(self, outcome: Outcome) -> Outcome:
        """``outcome`` of the server, or the cut that ended it."""
        stats = outcome.stats or ServerStats()
        if self.forced_by is not None:
            return Outcome.forced(self.forced_by, stats)
        if self.orphaned:
            return Outcome.orphaned(stats)
        return outcome


@attrs.define
class _SignalMemo:
    """The stop signals that reach the worker while Trio does not listen for them: before the
    server's signal receiver is open, and after it is closed.

    Trio gives a signal still pending when its receiver closes back to the handler it found;
    Python's default for SIGTERM is death.  A forced worker whose forwarded SIGTERM was still
    pending (the supervisor sends it just before ``FORCE``) died of it before it could report,
    its counts lost.  With this handler a late signal is noted and nothing else (the worker is
    ending anyway), and an early one is delivered again once Trio listens (:meth:`replay`).
    """

    received: list[int] = attrs.field(factory=list)

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)
        # The status dump's signal, forwarded by the supervisor: by default it would kill a
        # worker that is not yet (or no longer) listening for it.
        signal.signal(STATUS_SIGNAL, signal.SIG_IGN)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def replay(self) -> None:
        """The signals noted so far, raised again: from inside ``run``, Trio's receiver gets
        them."""
        early, self.received = self.received, []
        for signum in early:
            signal.raise_signal(signum)


async def _until_forced(
    control: socket.socket, cut: _Cut, memo: _SignalMemo, serving: _Serving
) -> str:
    """Return (why) once the supervisor forces the exit (``FORCE`` on the control socket) or
    its end of the control socket closes; ``cut`` records which.  Meanwhile, answer its
    requests for a snapshot (:mod:`trio_echo.workers.figures`) with the ``serving`` server's.

    Started by ``run`` once it listens for signals: the signals ``memo`` noted before, it
    replays first."""
    memo.replay()
    received = b""
    while True:
        await trio.lowlevel.wait_readable(control)
        try:
            data = control.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            cut.orphaned = True
            return "the supervisor is gone"
        received += data
        if (match := _FORCE_RE.search(received)) is not None:
            cut.forced_by = int(match[1]) if match[1] else signal.SIGTERM
            return "forced by the supervisor"
        while ASK in received:
            received = received.replace(ASK, b"", 1)
            serving.answer(control)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve as the supervisor asks; the exit status as ``trio-echo`` would give it."""
    memo = _SignalMemo()
    memo.install()
    args = list(sys.argv[1:] if argv is None else argv)
    control: socket.socket | None = None
    try:
        control = socket.socket(fileno=int(args[0]))
        with control.makefile("rb") as stream:
            spec: WorkerSpec = pickle.load(stream)
    except (IndexError, ValueError, OSError, EOFError, pickle.UnpicklingError):
        if control is not None:
            control.close()
        print(
            "trio-echo worker: error: workers are started by `trio-echo --workers N`, not by hand",
            file=sys.stderr,
        )
        return 2
    try:
        return _serve(spec, control, memo)
    finally:
        # Ours to close: left to the garbage collector it is a ResourceWarning (-X dev).
        control.close()


@attrs.define
class _Serving:
    """The worker's server, once it is up: what a snapshot is taken from."""

    handle: ServerHandle | None = None

    def snapshot(self) -> Snapshot | None:
        handle = self.handle
        return None if handle is None else take(handle.stats, handle.output)

    def answer(self, control: socket.socket) -> None:
        """Send the supervisor a snapshot (none before the server is up: it then counts the
        worker as empty).  A few kB, into a socket buffer that the supervisor keeps empty;
        if it is full all the same, this answer is skipped and the supervisor counts the last
        one."""
        if (snapshot := self.snapshot()) is not None:
            with contextlib.suppress(BlockingIOError):
                send_message(control, snapshot=snapshot)


def _serve(spec: WorkerSpec, control: socket.socket, memo: _SignalMemo) -> int:
    """Run the server of ``spec``, tell the supervisor how it ended; the exit status."""
    # Imported here: cli imports the models, which a worker only needs for its error messages.
    from trio_echo.cli.failures import describe_failure, raise_fd_limit

    config = spec.config
    setup_logging(spec.log_level, tag=f"worker {config.worker_id}")
    raise_fd_limit()
    sockets = [socket.socket(fileno=fd) for fd in config.fds]
    control.setblocking(False)
    cut = _Cut()
    serving = _Serving()

    def announce(handle: ServerHandle) -> None:
        serving.handle = handle
        # The supervisor logs it, and the start-up line once every worker is ready.
        send_message(control, ready=os.getpid())

    try:
        outcome = trio.run(
            partial(
                run,
                config,
                sockets=sockets,
                framed=True,
                announce=announce,
                stop_when=partial(_until_forced, control, cut, memo, serving),
            )
        )
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        status, message = describe_failure(exc)
        if message is not None:
            LOGGER.error("%s", message)
        _report(control, status=status)
        return status
    finally:
        # The server closes them once it serves; not if it stopped before.
        for sock in sockets:
            sock.close()
    outcome = cut.outcome(outcome)
    stats = outcome.stats
    _report(
        control,
        status=outcome.exit_status,
        connections=stats.connections if stats else 0,
        bytes=stats.bytes_received if stats else 0,
        # --udp
        datagrams=stats.datagrams if stats else 0,
        refused=stats.refused if stats else 0,
        kernel_drops=stats.kernel_drops if stats else None,
        # Its final counts, which stay in the supervisor's metrics.
        snapshot=serving.snapshot(),
    )
    # A cut short worker's line is a warning: its clients were cut off.
    LOGGER.log(logging.INFO if outcome.exit_status == 0 else logging.WARNING, "%s", outcome.summary)
    return outcome.exit_status


def _report(control: socket.socket, **fields: object) -> None:
    """The worker's last message; nobody to tell if the supervisor is gone."""
    try:
        control.setblocking(True)
        send_message(control, **fields)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
