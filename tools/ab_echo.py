"""Interleaved A/B of two trio_echo trees in echo: requests/s and the server's CPU µs per
request, pair by pair.

For a change too small for a bench ratio on a shared machine (docs/performance.md, round 3):
each round starts one tree's server (``--echo --quiet``, pinned to CPU 0), warms it with 0.5 s
of load, then measures ``duration`` seconds of ``loadgen echo`` (pinned to CPU 1) and the
server's CPU time from ``/proc/PID/stat`` (Linux); the trees take turns, in alternating order::

    python tools/ab_echo.py . build/baseline-3ef49ac --rounds 10    # bench --baseline exports it
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trio_echo.bench.loadgen import build


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _load(binary: Path, port: int, args: argparse.Namespace, seconds: float) -> dict[str, float]:
    command = ["taskset", "-c", "1", str(binary), "echo", "-p", str(port)]
    command += ["-c", str(args.connections), "-s", str(args.size), "-d", str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def one_run(tree: Path, binary: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) of one server of ``tree``."""
    port = _free_port()
    command = ["taskset", "-c", "0", sys.executable, "-m", "trio_echo", "--echo", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    with subprocess.Popen(
        [*command, "--port", str(port)], cwd=tree, env=env, stderr=subprocess.DEVNULL
    ) as server:
        try:
            deadline = time.monotonic() + 10
            while True:  # poll until it listens, within a deadline
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            _load(binary, port, args, 0.5)
            before = _cpu_seconds(server.pid)
            result = _load(binary, port, args, args.duration)
            used = _cpu_seconds(server.pid) - before
        finally:
            server.terminate()
    return result["requests"] / result["elapsed"], used * 1e6 / max(result["requests"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration", type=float, default=1.5)
    args = parser.parse_args()
    binary = build()
    trees = [args.a.resolve(), args.b.resolve()]
    runs: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for n in range(args.rounds):
        for tree in trees if n % 2 == 0 else trees[::-1]:
            runs[tree].append(one_run(tree, binary, args))
    for tree in trees:
        rates, costs = [r for r, _ in runs[tree]], [c for _, c in runs[tree]]
        print(
            f"{tree}: req/s median {statistics.median(rates):.0f} "
            f"({min(rates):.0f}-{max(rates):.0f}); CPU µs/request median "
            f"{statistics.median(costs):.2f} ({min(costs):.2f}-{max(costs):.2f})"
        )
    pairs = list(zip(runs[trees[0]], runs[trees[1]], strict=True))
    rate_ratios = sorted(a[0] / b[0] for a, b in pairs)
    cost_ratios = sorted(a[1] / b[1] for a, b in pairs)
    print(
        f"a ÷ b, pair by pair: req/s median {statistics.median(rate_ratios):.3f} "
        f"({rate_ratios[0]:.3f}-{rate_ratios[-1]:.3f}); CPU µs/request median "
        f"{statistics.median(cost_ratios):.3f} ({cost_ratios[0]:.3f}-{cost_ratios[-1]:.3f})"
    )


if __name__ == "__main__":
    main()
