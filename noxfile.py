"""Developer tasks, one short session per job; dependencies come from pyproject.toml."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (unit, in-process and end-to-end) with pytest and pytest-trio."""
    # The bench extra, so that the uvloop model and `bench --plot` are tested too.
    session.install(".[bench]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style with ruff and types with mypy (strict)."""
    # The bench extra: mypy checks the bench's matplotlib calls against matplotlib's types.
    session.install(".[bench]", *nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(default=False)
def stress(session: nox.Session) -> None:
    """Run the stress tests of issue 6 (tests/test_stress.py, `pytest -m stress`): faulty
    clients around a good one, byte-exact accounting, `ulimit -n 256` with 1,000 clients, a
    60 s soak of connection churn, SIGTERM with 1,000 clients mid-stream, bad command lines.
    Then the output's property tests at their full example counts.  About 2.5 minutes on 2
    cores, a minute of it the soak; every wait in it is bounded.  Writes
    its figures to build/stress.json (docs/reliability.md says what each test proves).
    Arguments after -- go to pytest, e.g. `nox -s stress -- -k soak`."""
    session.install(".[bench]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", "-m", "stress", *session.posargs)
    # The output's property tests at their full example counts (the default suite runs a
    # quarter of them): about a minute.
    if not session.posargs:
        session.run("pytest", "tests/test_output.py", env={"TRIO_ECHO_PROPERTY_SCALE": "1"})


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the full benchmark (about 26 minutes on 2 cores; every wait in it is bounded) and
    regenerate docs/benchmarks.{json,png,md} and docs/lab.md from it.  Not part of CI: the
    figures depend on the machine (run it on a quiet one, from committed code: the page says
    when either was not so).  Arguments after -- replace the defaults, e.g.
    `nox -s bench -- --quick`."""
    session.install(".[bench]")
    args = session.posargs or [
        "--json",
        "docs/benchmarks.json",
        "--plot",
        "docs/benchmarks.png",
        "--markdown",
        "docs/benchmarks.md",
        "--lab-page",
        "docs/lab.md",
    ]
    session.run("python", "-m", "trio_echo", "bench", *args)


@nox.session(default=False)
def perf(session: nox.Session) -> None:
    """Check the performance targets of issues 5 and 15 (about three minutes on 2 cores): a short
    bench of the trio model, the bare trio.serve_tcp reference (trio-bare), asyncio and trio with
    --metrics scraped every second (trio-metrics), then `--check` fails the session if a target
    evaluated is missed.  The targets, ratios measured in the same run where possible (the
    machine is noisy; echo and storm compare the best of 3 runs each):
    echo 100 conn × 64 B >= 0.9x trio-bare and >= 1.0x warmed-up asyncio; --raw streaming
    >= 0.8x trio-bare; text mode >= 1M lines/s of 64 B lines and >= 1 GB/s of 4 KiB lines;
    1,000 new clients while 100 echo clients are busy all served in <= 0.1 s and >= 5x faster
    than trio-bare; 10,000 connections all served, <= 6000 B of RSS each, SIGTERM with --grace 1
    to exit 0 in <= 1.5 s; metrics overhead: trio-metrics ÷ trio >= 0.97x (median of runs in
    turns) on echo 100 × 64 B and 1000 × 1 KiB and on --raw and text streaming; issue 16: in
    both echo scenarios trio ÷ asyncio >= 1.0x (medians) with trio's slowest run >= 0.95x
    asyncio's median, and trio ÷ uvloop >= 1.0x (medians; the moonshot); then --raw streaming
    into a pipe and a file >= 1.0x the threads model and >= 0.8x the C sink (median of 5 runs
    in turns, build/perf-raw.json).  A failure
    measured while other work took the CPU says so (run again on a quiet machine).  Writes
    build/perf.json.  Arguments after -- replace the defaults, e.g.
    `nox -s perf -- --quick --check`.  Not part of CI: the figures need a quiet machine."""
    session.install(".[bench]")
    args = session.posargs or [
        "--models",
        "trio,trio-bare,asyncio,uvloop,trio-metrics",
        "--scenarios",
        "echo_100x64,echo_1000x1024,stream_raw,stream_text,storm_busy,c10k",
        "--duration",
        "2",
        "--check",
        "--json",
        "build/perf.json",
    ]
    session.run("python", "-m", "trio_echo", "bench", *args)
    if not session.posargs:
        # Issue 16's raw streaming targets: into a pipe and a file, trio against the threads
        # model and the C sink, in turns (about 40 s).
        session.run(
            "python", "-m", "trio_echo", "bench", "--models", "trio,threads,c-sink",
            "--scenarios", "stream_into", "--duration", "2", "--repeats", "5",
            "--check", "--json", "build/perf-raw.json",
        )  # fmt: skip


# The revision the core server's rewrite (serve_listeners, our own Listener and stream) is
# measured against: the last commit before that round of work.
COMPARE_BASELINE = "d8d1f1a"


@nox.session(default=False)
def compare(session: nox.Session) -> None:
    """Before/after in one bench run (about 5 minutes on 2 cores; every wait is bounded): the
    trio model now, the trio model of commit d8d1f1a (`--baseline`: exported to
    build/baseline-d8d1f1a and run as `trio@d8d1f1a`), the trio model without its epoll
    accelerator (`trio-nohub`) and asyncio for reference, in echo 100 × 64 B and 1000 × 1 KiB,
    the storm under load, 10,000 connections (memory, shutdown) and raw and text streaming, the
    echo runs and storms repeated 5 times and interleaved across the models.  The table ends
    with `trio ÷ trio@d8d1f1a` and `trio ÷ trio-nohub` (the accelerator's worth) per figure.
    Writes build/compare.json.  Arguments after -- are added (later flags win), e.g. `nox -s
    compare -- --quick --json build/compare-quick.json` (with --quick: the quick sizes, one
    run each, and no 1000-connection echo; under a minute).  Not part of CI: needs a quiet
    machine, and git history."""
    session.install(".[bench]")
    sizes = [] if "--quick" in session.posargs else ["--duration", "2", "--repeats", "5"]
    session.run(
        *("python", "-m", "trio_echo", "bench"),
        *("--models", "trio,trio-nohub,asyncio", "--baseline", COMPARE_BASELINE),
        *("--scenarios", "echo_100x64,echo_1000x1024,storm_busy,c10k,stream_raw,stream_text"),
        *sizes,
        *("--json", "build/compare.json"),
        *session.posargs,
    )


@nox.session(default=False)
def haproxy(session: nox.Session) -> None:
    """HAProxy in front of two trio_echo backends (tests/test_haproxy.py, `pytest -m haproxy`):
    the printed peer is the real client (PROXY protocol v2), connections spread over both
    backends, and SIGTERM to one drains its clients while HAProxy sends new ones to the other.
    Installs Debian's haproxy first if it is missing and we may (root with apt-get; best
    effort, bounded: without haproxy the test is skipped).  A few seconds once installed."""
    import os
    import shutil
    import subprocess

    if shutil.which("haproxy") is None and shutil.which("apt-get") and os.geteuid() == 0:
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "haproxy"],
        ):
            try:
                subprocess.run(command, check=False, timeout=180, capture_output=True)
            except subprocess.TimeoutExpired:
                session.warn(f"{' '.join(command)} timed out; the HAProxy test will be skipped")
                break
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", "-m", "haproxy", *session.posargs)


@nox.session(default=False)
def prometheus(session: nox.Session) -> None:
    """A real Prometheus scraping trio_echo's --metrics (tests/test_prometheus.py, `pytest -m
    prometheus`): known traffic to a single process, then to `--workers 2`, and the totals
    read back through Prometheus's query API must be exactly what was sent; the PromQL of
    docs/deployment.md must run.  All on loopback.  Installs Debian's prometheus first if it
    is missing and we may (root with apt-get, --no-install-recommends: 19 MB; best effort,
    bounded); without it the session skips with one line.  Under a minute once installed (43 s
    and 58 s measured on 2 cores shared with other work), half of it this session's virtualenv."""
    import os
    import shutil
    import subprocess

    why = "apt-get is not available" if shutil.which("apt-get") is None else "not root"
    if shutil.which("prometheus") is None and shutil.which("apt-get") and os.geteuid() == 0:
        why = "apt-get could not install it"
        for command, timeout in (
            (["apt-get", "update", "-qq"], 60),
            (["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"], 120),
        ):
            try:
                subprocess.run(command, check=False, timeout=timeout, capture_output=True)
            except subprocess.TimeoutExpired:
                why = f"{' '.join(command)} timed out after {timeout} s"
                break
    if shutil.which("prometheus") is None:
        session.skip(f"Debian's prometheus is not installed ({why})")
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", "-m", "prometheus", *session.posargs)


@nox.session(default=False)
def portable(session: nox.Session) -> None:
    """Run the default test selection of `nox -s tests` again with the Linux-only pieces hidden
    from trio_echo: select.epoll (and the EPOLL* constants) and socket.SO_REUSEPORT, as on
    macOS and the BSDs (README, "Platforms").  A .pth file in this session's virtualenv (and in
    no other) imports tests/portable/hide_linux.py at every interpreter start-up, so pytest, the
    `python -m trio_echo` servers the tests start and their --workers processes are all affected;
    Trio keeps the real modules.  The pytest header says so; tests that need a hidden piece skip
    with the reason.  Arguments after -- go to pytest."""
    import pathlib

    hide_dir = pathlib.Path("tests/portable").resolve()
    purelib = session.run(
        "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True
    )
    assert isinstance(purelib, str)
    pth = pathlib.Path(purelib.strip()) / "trio_echo_hide_linux.pth"
    # Installed without the hiding (pip is a Python process of this virtualenv too).
    pth.unlink(missing_ok=True)
    session.install(".[bench]", *nox.project.dependency_groups(PYPROJECT, "test"))
    pth.write_text(f"{hide_dir}\nimport hide_linux\n")
    session.log(f"hiding select.epoll, select.EPOLL* and socket.SO_REUSEPORT ({pth})")
    session.run("pytest", "-p", "hide_linux", *session.posargs)


@nox.session(default=False)
def outside(session: nox.Session) -> None:
    """The outside check of issue 13 (docs/outside-check.md): MagicStack vmbench's echo_client,
    the public client of uvloop's echo benchmark (taken at a pinned commit, not vendored), and
    our load generator against the same echo servers (trio, asyncio, uvloop, threads), in
    turns, at 1 and 10 connections of 64 B to 100 KiB; their requests/s must agree within
    ±15 % where neither client was saturated.  About 4 minutes on 2 cores; every wait is
    bounded.  Needs the client: VMBENCH_ECHO_CLIENT=the file, VMBENCH_GIT=a clone, or network
    for a git clone (without: one line, exit 1).  Writes build/outside.json and
    build/outside.md.  Arguments after -- are added, e.g. `nox -s outside -- --models trio
    --check`.  Not part of CI: needs the client and a quiet machine."""
    session.install(".[bench]", "numpy")  # numpy: vmbench's echo_client imports it
    session.run("python", "-m", "trio_echo.bench.outside", *session.posargs)
