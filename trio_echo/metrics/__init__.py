"""Seeing inside a running server: the OpenMetrics endpoint (``--metrics``), the status dump
(SIGUSR1) and the periodic line (``--stats-interval``).

The data flows one way: the server's counters (:class:`~trio_echo.stats.ServerStats`, the
output queue's) -> a :mod:`snapshot` (a plain, JSON-able dict, so that a ``--workers`` worker
can send its own to the supervisor, which adds them up) -> the text of a scrape
(:mod:`exposition`), served by :mod:`endpoint`; or -> the lines on stderr (:mod:`status`).

Why the exposition is written here rather than with ``prometheus-client``: the counters that
matter are bumped on the hot path, and there a plain integer addition costs about 30 ns, while
a ``prometheus_client`` counter takes a lock per increment (and a label lookup per labelled
one); reading our counters at scrape time instead (its "custom collector" pattern) would keep
the library only for a text format of about a hundred lines, and make it a runtime dependency
of the ``--metrics`` flag.  Its threaded HTTP server is not wanted either (no threads outside
the models that are about threads).  The tests check what we write with
``prometheus_client``'s own parsers, in both formats, and a real Prometheus scrapes it in
``nox -s prometheus``.
"""
