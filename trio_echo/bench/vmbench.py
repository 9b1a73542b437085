"""MagicStack vmbench's ``echo_client``, the outside check's client: where it comes from, how
it runs, what it printed (:mod:`.outside` compares it with our load generator).

vmbench (https://github.com/MagicStack/vmbench, MIT licence) is the benchmark behind uvloop's
published echo figures.  Its ``echo_client`` is Python: ``--concurrency`` processes of a
``ProcessPoolExecutor``, one blocking socket each, a closed loop of ``sendall`` of ``--msize``
bytes (``x`` then a newline) and ``recv`` until as many came back; requests/s is the count over
``--duration`` (whole seconds, counted from before the pool starts), latency a histogram of
10 µs buckets.  It needs numpy and the ``fork`` start method (its worker function is defined
under ``if __name__ == '__main__'``, which a spawned worker does not run): Linux.

Not vendored: it is taken at a pinned commit, from ``VMBENCH_ECHO_CLIENT`` (the file),
``VMBENCH_GIT`` (a clone, bare or not), a copy fetched before, or a ``git clone`` (network),
and its SHA-256 must be the pinned one: the check runs the public client, unmodified.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from trio_echo.bench.scenarios.common import machine_busy_seconds
from trio_echo.bench.server import ServerProcess

__all__ = [
    "CLIENT_SHA256",
    "MISSING",
    "PIN_COMMIT",
    "OutsideError",
    "Run",
    "find_client",
    "parse_vmbench",
    "startup_cpu",
    "traffic_cores",
    "vmbench_run",
]

REPO_URL = "https://github.com/MagicStack/vmbench"
# vmbench's last commit (2018-08-30); the client has not changed since, and must not change
# under us: its SHA-256 at that commit is checked before it runs.
PIN_COMMIT = "5d39035423902f112c2405ae9b959f1dee102976"
CLIENT_SHA256 = "fdfd2097c09ce3329f9348cb451050e85fcf096d6de3c5aa82c5004460025912"
MISSING = (
    f"needs MagicStack/vmbench's echo_client at commit {PIN_COMMIT[:7]}: set VMBENCH_ECHO_CLIENT "
    f"to the file or VMBENCH_GIT to a clone of {REPO_URL}, or run with network access (git clone)"
)


class OutsideError(Exception):
    """The check cannot run, or the client failed; the message is one line."""


@attrs.frozen
class Run:
    """One client's measured run: requests/s, latency (ms) and CPU (cores)."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    client_cpu: float | None
    server_cpu: float | None = None
    other_cpu: float | None = None


def parse_vmbench(text: str, duration: float) -> Run:
    """vmbench's ``--output-format=json`` output as a :class:`Run` (without CPU figures).

    Its ``rps`` is kept as it prints it (``messages / duration``); its percentiles are a list of
    ``[percent, ms]`` pairs (25, 50, 75, 90, 99, 99.99)."""
    try:
        data = json.loads(text)
        percentiles = {float(p): float(ms) for p, ms in data["latency_percentiles"]}
        messages = int(data["messages"])
        rps = float(data["rps"])
        mean = float(data["latency_mean"])
    except (ValueError, KeyError, TypeError) as exc:
        first = text.strip().splitlines()[0] if text.strip() else "nothing"
        raise OutsideError(f"vmbench's echo_client printed no result we can read: {first}") from exc
    if messages and abs(messages / duration - rps) > 1:
        raise OutsideError(f"vmbench's rps {rps} is not messages/duration ({messages}/{duration})")
    return Run(rps, percentiles.get(50.0), percentiles.get(99.0), mean, None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _from_git(git_dir: str, target: Path) -> None:
    """``echo_client`` at the pinned commit from a clone (work tree or bare) into ``target``."""
    flag = "--git-dir" if Path(git_dir, "HEAD").is_file() else "-C"
    shown = subprocess.run(
        ["git", flag, git_dir, "show", f"{PIN_COMMIT}:echo_client"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if shown.returncode != 0:
        raise OutsideError(f"{MISSING} ({git_dir}: {shown.stderr.decode().strip()[:120]})")
    target.write_bytes(shown.stdout)


def find_client(work: Path, explicit: str | None = None) -> Path:
    """The pinned ``echo_client``: ``explicit`` or ``VMBENCH_ECHO_CLIENT``, else from
    ``VMBENCH_GIT``, else a copy ``work`` already holds, else a ``git clone`` (network)."""
    path = explicit or os.environ.get("VMBENCH_ECHO_CLIENT")
    if path:
        client = Path(path)
        if not client.is_file():
            raise OutsideError(f"{MISSING} (no file {client})")
    else:
        client = work / f"vmbench-{PIN_COMMIT[:7]}-echo_client"
        if not client.is_file() or _sha256(client) != CLIENT_SHA256:
            work.mkdir(parents=True, exist_ok=True)
            git_dir = os.environ.get("VMBENCH_GIT")
            if git_dir:
                _from_git(git_dir, client)
            else:
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    try:
                        cloned = subprocess.run(
                            ["git", "clone", "--quiet", "--bare", REPO_URL, tmp + "/vmbench"],
                            capture_output=True,
                            timeout=120,
                            check=False,
                        )
                    except (OSError, subprocess.TimeoutExpired) as exc:
                        raise OutsideError(f"{MISSING} ({exc})") from exc
                    if cloned.returncode != 0:
                        raise OutsideError(MISSING)
                    _from_git(tmp + "/vmbench", client)
    if _sha256(client) != CLIENT_SHA256:
        raise OutsideError(f"{client} is not vmbench's echo_client at {PIN_COMMIT[:7]} (SHA-256)")
    if importlib.util.find_spec("numpy") is None:
        raise OutsideError("vmbench's echo_client needs numpy: pip install numpy")
    if multiprocessing.get_start_method() != "fork":
        raise OutsideError("vmbench's echo_client needs the fork start method (Linux)")
    return client


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup_cpu() -> float:
    """CPU seconds that starting the client's interpreter with its imports costs, subtracted
    from each run's so that the client's figure is its traffic's."""
    imports = "import argparse, concurrent.futures, json, math, socket, time, numpy"
    before = _children_cpu()
    subprocess.run([sys.executable, "-c", imports], check=True, timeout=60)
    return _children_cpu() - before


# How often the client's worker processes' CPU time is read during a run (psutil).
SAMPLE_INTERVAL = 0.1
# The shortest window over which their CPU rate means something (10 ms ticks).
MIN_WINDOW = 0.3

Sample = tuple[float, float, int]  # (monotonic time, CPU seconds of the workers, how many)


def _load_psutil() -> Any:
    """psutil (the bench extra), or None; typed ``Any``: it ships no type hints."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None


def _workers_cpu(process: Any) -> Sample:
    total, count = 0.0, 0
    for child in process.children():
        try:
            times = child.cpu_times()
        except Exception:  # psutil.Error: the worker ended meanwhile
            continue
        total += times.user + times.system
        count += 1
    return time.monotonic(), total, count


def traffic_cores(samples: Sequence[Sample], workers: int, duration: float) -> float | None:
    """The CPU rate (cores) of the client's worker processes while they all ran, from the first
    sample that saw every one of them to at most ``duration`` later (their traffic ends by then:
    it is timed from before they were started): what the client spent on the traffic, without
    its interpreter's start, the pool's forks or the result gathering.  None when no two such
    samples are ``MIN_WINDOW`` apart."""
    full = [s for s in samples if s[2] >= workers]
    if not full:
        return None
    window = [s for s in full if s[0] <= full[0][0] + duration - SAMPLE_INTERVAL]
    first, last = window[0], window[-1]
    if last[0] - first[0] < MIN_WINDOW:
        return None
    return (last[1] - first[1]) / (last[0] - first[0])


def _watch(proc: subprocess.Popen[bytes], psutil: Any, deadline: float) -> list[Sample]:
    """Wait for the client to end (by ``deadline``), sampling its workers' CPU meanwhile."""
    watched = psutil.Process(proc.pid) if psutil is not None else None
    samples: list[Sample] = []
    while True:
        try:
            proc.wait(timeout=SAMPLE_INTERVAL)  # the pace of the samples, or the exit
            return samples
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise OutsideError("vmbench's echo_client did not end in time (killed)")
        if watched is not None:
            with contextlib.suppress(Exception):  # psutil.Error: it ended meanwhile
                samples.append(_workers_cpu(watched))


def vmbench_run(
    client: Path, server: ServerProcess, connections: int, size: int, duration: int, base: float
) -> Run:
    """One run of vmbench's client.  Its CPU: its worker processes' rate during the traffic
    (:func:`traffic_cores`, read with psutil), or without psutil the whole run's CPU from
    ``RUSAGE_CHILDREN`` (its workers are waited for by it, it by us) minus ``base``, the
    start-up's, over ``duration``: a little high (the pool's forks, the result gathering)."""
    psutil = _load_psutil()
    marks = (time.monotonic(), server.cpu_seconds(), machine_busy_seconds(), _children_cpu())
    argv = [
        *(sys.executable, str(client), "--output-format=json"),
        *(f"--addr=127.0.0.1:{server.port}", f"--msize={size}"),
        *(f"--concurrency={connections}", f"--duration={duration}"),
    ]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            samples = _watch(proc, psutil, marks[0] + duration + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        wall = time.monotonic() - marks[0]
        cpu = _children_cpu() - marks[3]
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        lines = stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise OutsideError(f"vmbench's echo_client failed: {lines[-1]}")
    server_cpu = server.cpu_seconds() - marks[1]
    other = machine_busy_seconds() - marks[2] - server_cpu - cpu
    cores = traffic_cores(samples, connections, duration)
    if cores is None:
        cores = max(0.0, cpu - base) / duration
    return attrs.evolve(
        parse_vmbench(stdout, duration),
        client_cpu=round(cores, 3),
        server_cpu=round(server_cpu / duration, 3),
        other_cpu=round(max(0.0, other / wall), 3),
    )
