"""``--workers`` with ``--metrics``/``--stats-interval``/SIGUSR1: the supervisor's view of its
workers' counters, added up into one snapshot, so that a scrape sees the whole server.

Pull, not push: a scrape asks every live worker for a snapshot over its control socket
(``snapshot``) and waits for the answers (``{"snapshot": ...}``), at most ``ASK_TIMEOUT``; a
worker that does not answer in time counts with its last answer.  A worker that ends sends its
final counts with its last message, and they stay in the totals (``retired``), so that a
counter never goes down when a worker is replaced -- Prometheus would take that for a restart
of the whole server.
"""

from __future__ import annotations

import contextlib
import socket

import attrs
import trio

from trio_echo.metrics.snapshot import Snapshot, merge, take
from trio_echo.output.queue import OutputQueue
from trio_echo.stats import ServerStats

__all__ = ["ASK", "ASK_TIMEOUT", "GAUGES", "WorkerFigures"]

# The snapshot's figures that say what a server holds now rather than count what happened:
# a worker that is gone holds nothing.
GAUGES = ("active", "queue_bytes", "queue_limit_bytes", "blocked_handlers")

# What the supervisor sends a worker to ask for its snapshot (one line).
ASK = b"snapshot\n"

# How long a scrape waits for the workers' answers: a worker answers within a scheduler turn
# unless it is stuck, and a scraper's own timeout is seconds.
ASK_TIMEOUT = 1.0


@attrs.define(eq=False)
class WorkerFigures:
    """The workers' latest snapshots, and the totals of the workers that are gone."""

    # The supervisor's: its start, its output queue (the one that writes the real stdout).
    stats: ServerStats
    queue: OutputQueue
    latest: dict[int, Snapshot] = attrs.field(factory=dict)
    retired: list[Snapshot] = attrs.field(factory=list)
    _answers: dict[int, int] = attrs.field(factory=dict)
    _arrived: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def received(self, number: int, snapshot: Snapshot) -> None:
        """Worker ``number`` sent its snapshot (an answer, or its last message)."""
        self.latest[number] = snapshot
        self._answers[number] = self._answers.get(number, 0) + 1
        self._arrived.unpark_all()

    def retire(self, number: int) -> None:
        """Worker ``number`` is gone: its last counts stay in the totals, its gauges (what it
        held at that moment: clients, queued output) do not."""
        if (last := self.latest.pop(number, None)) is not None:
            self.retired = [merge([*self.retired, {**last, **dict.fromkeys(GAUGES, 0)}])]
        self._answers.pop(number, None)
        self._arrived.unpark_all()  # a scrape waiting for it waits no more

    async def gather(
        self, controls: dict[int, socket.socket], workers: int, restarts: int
    ) -> Snapshot:
        """Ask every worker in ``controls`` for its snapshot; the sum of all of them."""
        before = {number: self._answers.get(number, 0) for number in controls}
        for control in controls.values():
            with contextlib.suppress(OSError):  # a worker that is ending: its last counts
                control.send(ASK)
        with trio.move_on_after(ASK_TIMEOUT):
            # Until every worker asked has answered, or ended (and left ``controls``).
            while any(
                self._answers.get(number, 0) <= count
                for number, count in before.items()
                if number in controls
            ):
                await self._arrived.park()
        return self.total(workers, restarts)

    def total(self, workers: int, restarts: int) -> Snapshot:
        """The sum of every worker's last snapshot, live or gone, with the supervisor's own
        figures: its start, its uptime, what it wrote to stdout and what waits in its
        queue."""
        total = merge([*self.retired, *self.latest.values()])
        if not total:  # no worker has answered yet
            total = take(ServerStats(udp=self.stats.udp), None)
        queue = self.queue
        total.update(
            start_time=self.stats.started_wall,
            uptime=self.stats.uptime(),
            udp=self.stats.udp,
            printed_bytes=queue.written,
            queue_bytes=total.get("queue_bytes", 0) + queue.used,
            queue_limit_bytes=total.get("queue_limit_bytes", 0) + queue.limit,
            workers=workers,
            worker_restarts=restarts,
        )
        return total
