"""The observers a server runs beside its connections, in one nursery that lives as long as the
server: the ``--metrics`` endpoint and the ``--stats-interval`` line.  Both read a snapshot
through ``page``; what they read from is the server's business (one process, or a
``--workers`` supervisor adding up its workers)."""

from __future__ import annotations

from functools import partial

import trio

from trio_echo.logs import LOGGER, NOTICE
from trio_echo.metrics.endpoint import Page, serve_metrics
from trio_echo.metrics.status import interval_line

__all__ = ["observe", "report_every"]


async def report_every(interval: float, page: Page) -> None:
    """One ``stats:`` line on stderr every ``interval`` seconds, on rates since the last."""
    previous = await page()
    while True:
        await trio.sleep(interval)
        current = await page()
        LOGGER.log(NOTICE, "stats: %s", interval_line(previous, current))
        previous = current


async def observe(
    metrics: tuple[str, int] | None,
    interval: float | None,
    page: Page,
    until: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the endpoint (bound before ``started``: a port in use stops the start-up) and
    report every ``interval``, until ``until`` is set."""
    async with trio.open_nursery() as nursery:
        if metrics is not None:
            await nursery.start(partial(serve_metrics, *metrics, page))
        if interval is not None:
            nursery.start_soon(report_every, interval, page)
        task_status.started()
        await until.wait()
        nursery.cancel_scope.cancel()
