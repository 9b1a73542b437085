"""What the JSON says about where the numbers come from: CPU, cores, OS, software versions; and
what the machine's counters say: its busy time (:func:`busy_cpu_seconds`) and a process tree's
CPU time, context switches, memory and threads (:func:`tree_counters`, :func:`tree_sum`).

Benchmark figures mean little without the machine; these are recorded with every run so that
two JSON files can be compared knowingly.

The counters of processes and of the machine come through ``psutil`` (in the ``bench`` extra), so
that the lab measures the same way on Linux, macOS and the BSDs; without it the bench says so in
one line (:data:`PSUTIL_MISSING`) rather than guessing from ``/proc``.  What psutil does not know
(the CPU's name, the listen backlog limit, each thread's context switches on Linux) comes from
``/proc`` on Linux and ``sysctl`` elsewhere.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "PSUTIL_MISSING",
    "Counters",
    "busy_cpu_seconds",
    "descendants",
    "load_psutil",
    "machine_info",
    "missing_process_figures",
    "process_tree",
    "tree_counters",
    "tree_sum",
]

PSUTIL_MISSING = (
    "psutil is not installed: the bench reads CPU time, memory, threads and context switches "
    "through it (pip install 'trio-echo[bench]')"
)


@functools.cache
def load_psutil() -> Any:
    """The ``psutil`` module, or None.  Imported on first use (and typed ``Any``: psutil ships no
    type hints), so that the rest of the package imports without it."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None


def missing_process_figures() -> str | None:
    """:data:`PSUTIL_MISSING` if psutil is missing (the bench cannot run without it), else None."""
    return PSUTIL_MISSING if load_psutil() is None else None


def _psutil() -> Any:
    psutil = load_psutil()
    if psutil is None:
        raise RuntimeError(PSUTIL_MISSING)  # the bench checks first (missing_process_figures)
    return psutil


def busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (all but idle and
    iowait), so that a scenario can tell how much of the machine went to something else than
    the server and the load generator: other work on a shared machine, and the kernel's network
    work that the scheduler charges to no process.  NaN without psutil."""
    psutil = load_psutil()
    if psutil is None:
        return float("nan")
    times = psutil.cpu_times()
    total = float(sum(times))
    # Linux counts a guest's time in user and nice already (psutil's own cpu_percent does this).
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return total - float(times.idle) - float(getattr(times, "iowait", 0.0))


# ---- a process tree ---------------------------------------------------------------------------


def _tree(pid: int) -> list[Any]:
    """``pid``'s psutil Process and every one below it (children, their children, ...), parents
    first; none if ``pid`` is gone.  psutil finds children from every process's parent pid, so
    a child forked by any thread of its parent is found (Trio starts processes from a worker
    thread)."""
    psutil = _psutil()
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]  # gone meanwhile


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children, ...), parents first."""
    return [process.pid for process in _tree(pid)] or [pid]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    return process_tree(pid)[1:]


# ``voluntary_ctxt_switches:\t12`` and ``nonvoluntary_ctxt_switches:\t3`` in a thread's status.
_SWITCHES_RE = re.compile(rb"^(non)?voluntary_ctxt_switches:\s*(\d+)", re.MULTILINE)


def _switches(process: Any) -> tuple[int, int, int]:
    """(voluntary, involuntary) context switches of every thread of ``process``, and its
    threads.  The one figure not from psutil on Linux: there psutil's ``num_ctx_switches`` is
    the main thread's alone (``/proc/PID/status`` is the leader's), so each thread's own
    ``/proc/PID/task/TID/status`` is read (a quarter of the time of a psutil Process per
    thread, which counts with a thousand threads sampled while the load runs).  Elsewhere
    psutil's figure is the whole process's."""
    psutil = _psutil()
    if not psutil.LINUX:
        counts = process.num_ctx_switches()
        return int(counts.voluntary), int(counts.involuntary), int(process.num_threads())
    tasks = f"/proc/{process.pid}/task"
    try:
        threads = os.listdir(tasks)
    except OSError:
        raise psutil.NoSuchProcess(process.pid) from None
    voluntary = involuntary = 0
    for thread in threads:
        try:
            with open(f"{tasks}/{thread}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue  # the thread ended meanwhile (its switches went with it)
        for non, count in _SWITCHES_RE.findall(status):
            if non:
                involuntary += int(count)
            else:
                voluntary += int(count)
    return voluntary, involuntary, len(threads)


@attrs.frozen
class Counters:
    """A process tree's running totals at one moment; two of them, subtracted, are what a
    measurement cost.  CPU time has the kernel's tick as resolution (10 ms on Linux); the
    switches are those of the threads alive (a thread that ends takes its own along)."""

    cpu_seconds: float  # user + system, of every thread, and of children that were waited for
    voluntary_switches: int  # it waited (for the network, a lock, a timer)
    involuntary_switches: int  # the kernel took its CPU away (its time slice ran out)
    threads: int = 0  # the threads alive


def tree_counters(pid: int) -> Counters:
    """CPU time (every thread of every process, and the children that already exited and were
    waited for: a worker that died has its time in its parent's children times) and context
    switches so far of ``pid``'s process tree; CPU time NaN if ``pid`` is gone."""
    psutil = _psutil()
    cpu, voluntary, involuntary, threads = 0.0, 0, 0, 0
    tree = _tree(pid)
    for process in tree:
        try:
            times = process.cpu_times()
            switches = _switches(process)
        except psutil.Error:
            if process.pid == pid:
                tree = []
                break
            continue  # a worker that ended meanwhile
        cpu += times.user + times.system + times.children_user + times.children_system
        voluntary += switches[0]
        involuntary += switches[1]
        threads += switches[2]
    if not tree:
        return Counters(float("nan"), 0, 0)  # gone
    return Counters(cpu, voluntary, involuntary, threads)


def tree_sum(pid: int, figure: Callable[[Any], int]) -> int | None:
    """``figure`` (of a psutil Process) of every process of ``pid``'s tree, summed; None if
    ``pid`` is gone."""
    psutil = _psutil()
    total = 0
    tree = _tree(pid)
    for process in tree:
        try:
            total += figure(process)
        except psutil.Error:
            if process.pid == pid:
                return None
    return total if tree else None


# ---- the machine ------------------------------------------------------------------------------


def _sysctl_command(name: str) -> str | None:
    """``sysctl -n NAME`` (macOS, the BSDs), or None."""
    # Not on a user's PATH on some systems: /usr/sbin is for administrators.
    sysctl = shutil.which("sysctl") or shutil.which("sysctl", path="/usr/sbin:/sbin")
    if sysctl is None:
        return None
    try:
        result = subprocess.run(
            [sysctl, "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        # macOS names its CPU in machdep.cpu.brand_string, the BSDs in hw.model.
        for name in ("machdep.cpu.brand_string", "hw.model"):
            if found := _sysctl_command(name):
                return found
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gb() -> float | None:
    psutil = load_psutil()
    return None if psutil is None else round(psutil.virtual_memory().total / 2**30, 1)


def _physical_cores() -> int | None:
    psutil = load_psutil()
    return None if psutil is None else psutil.cpu_count(logical=False)


def _sysctl(linux: str, bsd: str) -> str | None:
    """A kernel setting: ``/proc/sys/...`` on Linux (``linux`` in dotted form), ``sysctl -n``
    of ``bsd`` elsewhere."""
    try:
        with open("/proc/sys/" + linux.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None if sys.platform.startswith("linux") else _sysctl_command(bsd)


def _source_revision() -> str | None:
    """The git commit of the trio_echo source (``+dirty`` with local changes), when it runs
    from a checkout: the figures belong to that code."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, kernel, Python, and the versions of the event loops."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "trio": _version("trio"),
        "asyncio": f"stdlib (Python {sys.version.split()[0]})",
        "uvloop": _version("uvloop"),
        "anyio": _version("anyio"),
        "gevent": _version("gevent"),
        "trio_echo": _version("trio-echo"),
        "trio_echo_source": _source_revision(),
        "psutil": _version("psutil"),
        "somaxconn": _sysctl("net.core.somaxconn", "kern.ipc.somaxconn"),
    }
