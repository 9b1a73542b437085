"""Several load generators as one (:mod:`trio_echo.bench.fleet`): how many the bench starts on
a machine of N CPUs, which CPUs they and the servers get, and that their results add up to one
of the same shape, checked against what the server itself counted."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from test_loadgen import TIMEOUT, StallingEcho, needs_cc

from trio_echo.bench import cli, fleet, loadgen
from trio_echo.bench.scenarios.common import loadgen_cpu


@pytest.mark.parametrize(
    ("cpus", "share"), [(1, 1), (2, 1), (3, 1), (4, 1), (8, 3), (16, 6), (64, 24)]
)
def test_the_load_generators_share_of_the_cpus(cpus: int, share: int) -> None:
    assert fleet.loadgen_share(cpus) == share


@pytest.mark.parametrize(
    ("cpus", "servers", "loadgens"),
    [(2, (0,), (1,)), (16, tuple(range(10)), tuple(range(10, 16)))],
)
def test_pin_cpus_gives_the_last_ones_to_the_load_generators(
    monkeypatch: pytest.MonkeyPatch, cpus: int, servers: tuple[int, ...], loadgens: tuple[int, ...]
) -> None:
    pinned: list[set[int]] = []
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(
        cli.os, "sched_setaffinity", lambda pid, mask: pinned.append(set(mask)), raising=False
    )
    assert cli.pin_cpus() == (servers, loadgens)
    assert pinned == [set(loadgens)]  # the bench itself, whose children inherit it


def _result(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event": "result",
        "mode": "echo",
        "connections": 3,
        "connected": 3,
        "served_connections": 3,
        "requests": 100,
        "bytes": 6400,
        "elapsed": 1.0,
        "wall": 1.0,
        "cpu": 0.5,
        "timed_out": False,
        "errors": 0,
        "connect_failures": 0,
        "eofs": 0,
        "resets": 0,
        "still_open": 0,
        "warmed": 0,
        "latency_us": [[10, 60], [20, 40]],
        "latency_max_us": 25,
    }
    return {**base, **fields}


def test_merge_sums_counts_keeps_the_longest_times_and_adds_histograms() -> None:
    merged = fleet.merge(
        [
            _result(),
            _result(
                connections=2,
                served_connections=2,
                requests=50,
                wall=1.2,
                elapsed=1.1,
                cpu=1.14,
                latency_us=[[20, 10], [30, 40]],
                latency_max_us=31,
                timed_out=True,
            ),
        ]
    )
    assert merged["connections"] == 5
    assert merged["served_connections"] == 5
    assert merged["requests"] == 150
    assert merged["bytes"] == 12800
    assert merged["wall"] == 1.2
    assert merged["elapsed"] == 1.1
    assert merged["latency_us"] == [[10, 60], [20, 50], [30, 40]]
    assert merged["latency_max_us"] == 31
    assert merged["timed_out"] is True
    assert merged["processes"] == 2
    assert merged["busiest_cpu"] == pytest.approx(0.95)
    # Their CPU summed (1.37 cores), saturated because one of them used 0.95 of its core.
    assert loadgen_cpu(merged) == {"loadgen_cpu": round(1.64 / 1.2, 3), "loadgen_saturated": True}
    assert fleet.merge([_result()]) == _result()  # one: as it is


@needs_cc
def test_two_load_generators_drive_one_server_as_one() -> None:
    binary = loadgen.build()
    starts: list[str] = []
    lock = threading.Lock()

    def started() -> None:
        with lock:
            starts.append(threading.current_thread().name)

    with StallingEcho() as server:
        result = fleet.run(
            binary,
            "echo",
            server.port,
            cpus=(0, 1),
            timeout=TIMEOUT,
            on_start=started,
            c=7,
            s=64,
            d=0.3,
            t=20,
        )
        lines = server.lines
    assert result["processes"] == 2
    assert result["connections"] == result["served_connections"] == 7
    assert result["errors"] == result["connect_failures"] == 0
    # Every request counted once, in one load generator or the other: the server saw those,
    # plus one unmeasured warm-up request per connection and at most one in flight at the end.
    assert result["warmed"] == 7
    assert 0 < result["requests"] + 7 <= lines <= result["requests"] + 2 * 7
    assert sum(count for _, count in result["latency_us"]) == result["requests"]
    assert len(starts) == 1  # the CPU window opens once, when the last one starts


@needs_cc
def test_one_cpu_is_one_load_generator_unchanged() -> None:
    binary = loadgen.build()
    with StallingEcho() as server:
        result = fleet.run(
            binary, "echo", server.port, cpus=(1,), timeout=TIMEOUT, c=3, s=64, d=0.2, t=20
        )
    assert "processes" not in result  # loadgen.run's own result
    assert result["served_connections"] == 3
