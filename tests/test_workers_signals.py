"""``--workers``: stopping, forcing and orphaning workers, and what runs where (review findings
3, 4, 9, 10 and 12 of the workers issue).

End to end as in :mod:`test_workers` where the user can see it; a worker is also driven on
its own (``python -m trio_echo.workers.worker FD`` with the test as its supervisor), and the
signal watcher in-process, where the window to hit is too narrow to reach from outside.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import attrs
import pytest
import trio
import trio.testing
from conftest import (
    EVENT_TIMEOUT,
    SERVER_COMMAND,
    STARTUP_TIMEOUT,
    ServerProcess,
    assert_no_traceback,
    assert_refused,
    one_line_clients,
)
from test_workers import alive, jsonl_records, needs_balancing, worker_pids

from trio_echo.cli.options import parse_args
from trio_echo.config import Config
from trio_echo.lifecycle import MIN_DRAIN_TIMEOUT
from trio_echo.net.bind import REUSEPORT_BALANCES, reuseport_balances
from trio_echo.server import app
from trio_echo.server.serve import ServerHandle
from trio_echo.workers.worker import WorkerSpec, force_message

# A sitecustomize that hides socket.SO_REUSEPORT, as on a platform without it.
# (Out of socket.__all__ too: trio copies every name listed there.)
# Already hidden under nox -s portable (tests/portable/hide_linux.py): then nothing to do.
NO_REUSEPORT_SITE = """\
import socket
if hasattr(socket, "SO_REUSEPORT"):
    del socket.SO_REUSEPORT
if "SO_REUSEPORT" in socket.__all__:
    socket.__all__.remove("SO_REUSEPORT")
"""

# A sitecustomize for a platform whose SO_REUSEPORT exists but does not balance (macOS): the
# real socket module, and trio_echo told it runs on macOS.  Trio, and the standard library it
# imports, are imported first and keep Linux (their I/O is epoll on this machine).
MACOS_SITE = """\
import sys
import trio

sys.platform = "darwin"
"""

# The debug line of a supervisor whose workers share one set of listening sockets.
SHARED_LINE = "DEBUG the workers share one set of listening sockets"

# How much later than grace + one drain period a stopped server may exit: the Python exit
# and the closing of the connections; well under the two more drain periods (at least 2 s)
# that draining one after another in worker, relay and supervisor cost.
SHUTDOWN_SLACK = 1.0

# The server of the -X dev test: two workers, loopback only.
DEV_ARGS = ("--port", "0", "--workers", "2", "--host", "127.0.0.1")


# ---- 9: where SO_REUSEPORT does not balance: one shared set of sockets -------------------------


@pytest.mark.parametrize(
    ("platform", "has_reuseport", "balances"),
    [
        ("linux", True, True),
        ("dragonfly", True, True),
        ("darwin", True, False),
        ("freebsd14", True, False),
        ("openbsd7", True, False),
        ("netbsd10", True, False),
        ("linux", False, False),
        ("sunos5", False, False),
    ],
)
def test_only_linux_and_dragonfly_balance_with_reuseport(platform, has_reuseport, balances):
    assert reuseport_balances(platform, has_reuseport) is balances


def test_this_process_decides_by_its_own_platform():
    assert REUSEPORT_BALANCES is reuseport_balances(sys.platform, hasattr(socket, "SO_REUSEPORT"))


def test_workers_without_reuseport_are_no_usage_error(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    config, _, _ = parse_args(["--workers", "2", "--port", "0"])
    assert config.workers == 2
    assert config.fds == ()


def test_workers_with_an_inherited_socket_need_no_reuseport(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = listener.fileno()
        config, _, _ = parse_args(["--workers", "2", "--fd", str(fd)])
    assert config.workers == 2
    assert config.fds == (fd,)


def test_one_worker_needs_no_reuseport(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    config, _, _ = parse_args(["--workers", "1", "--port", "0"])
    assert config.workers == 1


def _site_env(tmp_path, site: str) -> dict[str, str]:
    """The environment of a program that runs with ``site`` as its sitecustomize."""
    (tmp_path / "sitecustomize.py").write_text(site)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


@pytest.fixture
def no_reuseport_env(tmp_path) -> dict[str, str]:
    """The environment of a program that runs where ``socket.SO_REUSEPORT`` does not exist."""
    return _site_env(tmp_path, NO_REUSEPORT_SITE)


# Where the workers share one set of sockets: SO_REUSEPORT missing, or there but not balancing
# (then, under nox -s portable, missing too: the hiding wins).
SHARED_PLATFORMS = [
    pytest.param(NO_REUSEPORT_SITE, "SO_REUSEPORT is missing", id="no-reuseport"),
    pytest.param(
        MACOS_SITE,
        "SO_REUSEPORT does not balance here"
        if hasattr(socket, "SO_REUSEPORT")
        else "SO_REUSEPORT is missing",
        id="macos",
    ),
]


@pytest.mark.parametrize(("site", "why"), SHARED_PLATFORMS)
def test_workers_share_one_set_of_sockets_where_reuseport_does_not_balance(
    spawn, connect, tmp_path, site, why
):
    server = spawn(
        [*SERVER_COMMAND, *DEV_ARGS, "--log-level", "debug"], (), env=_site_env(tmp_path, site)
    )
    server.wait_listening()
    assert f"{SHARED_LINE} ({why})" in server.stderr
    pids = worker_pids(server)
    clients = 10
    one_line_clients(connect, server.port, [b"shared %d\n" % i for i in range(clients)])
    server.wait_stdout(lambda data: data.count(b"] shared ") == clients)
    assert all(alive(pid) for pid in pids.values())
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert f"NOTICE stopped: served {clients} connections, " in stderr
    assert "restarted" not in stderr
    assert_no_traceback(stderr)
    # The supervisor's copy closed too: refused, not a queue that nobody serves.
    assert_refused(server.port, socket.AF_INET)


def test_workers_share_an_inherited_socket_without_reuseport(spawn, connect, no_reuseport_env):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd, port = listener.fileno(), listener.getsockname()[1]
        server = spawn(
            [*SERVER_COMMAND, "--workers", "2", "--fd", str(fd), "--log-level", "debug"],
            pass_fds=[fd],
            env=no_reuseport_env,
        )
    assert server.wait_listening().port == port
    assert "DEBUG the workers share the inherited listening sockets" in server.stderr
    client = connect(port)
    client.sendall(b"no reuseport\n")
    client.close()
    server.wait_stdout(b"] no reuseport\n")
    assert server.stop() == 0
    assert_no_traceback(server.all_stderr())


def _served_by(server: ServerProcess, port: int, count: int, tag: bytes) -> set[object]:
    """The workers that served ``count`` new clients, each sending one ``tag`` line (jsonl)."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=EVENT_TIMEOUT)
        client.sendall(tag + b"\n")
        clients.append(client)
    text = tag.decode()
    try:
        server.wait_stdout(lambda data: data.count(f'"data": "{text}"'.encode()) == count)
    finally:
        for client in clients:
            client.close()
    return {r["worker"] for r in jsonl_records(server.stdout) if r.get("data") == text}


def test_every_worker_accepts_from_the_shared_socket(spawn, no_reuseport_env):
    """Stop one worker (SIGSTOP), and the other serves every new client; then the other way
    round.  With SO_REUSEPORT's per-worker sockets, the stopped worker's share of the clients
    would wait; with one shared socket, whichever worker is free accepts.  (Which worker takes
    a client is the kernel's choice: with 50 clients at once one worker may still take all, so
    this is what can be tested reliably.)"""
    server = spawn(
        [*SERVER_COMMAND, *DEV_ARGS, "--format", "jsonl", "--log-level", "debug"],
        (),
        env=no_reuseport_env,
    )
    server.wait_listening()
    assert SHARED_LINE in server.stderr
    pids = worker_pids(server)
    for stopped, serving in ((1, 2), (2, 1)):
        os.kill(pids[stopped], signal.SIGSTOP)
        try:
            tag = b"while %d is stopped" % stopped
            assert _served_by(server, server.port, 5, tag) == {serving}
        finally:
            os.kill(pids[stopped], signal.SIGCONT)
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert "NOTICE stopped: served 10 connections, " in stderr
    assert_no_traceback(stderr)


# ---- 10: clean under -X dev -W error ---------------------------------------------------------


def test_workers_run_clean_under_dev_mode_and_warnings_as_errors(connect):
    # Not ServerProcess: the interpreter flags go before "-m trio_echo".
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", "-W", "error", "-m", "trio_echo", *DEV_ARGS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        watched = _Watched(proc)
        port = int(watched.wait_stderr_line(b"NOTICE listening on ").rsplit(b":", 1)[1].split()[0])
        client = connect(port)
        client.sendall(b"dev mode\n")
        client.close()
        watched.wait_stderr_line(b": close #")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=EVENT_TIMEOUT)
        stderr = watched.stderr + stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = stderr.decode(errors="replace")
    assert proc.returncode == 0, text
    assert b"] dev mode\n" in stdout
    assert "Warning" not in text
    assert "Traceback" not in text
    assert "Exception ignored" not in text


@attrs.define
class _Watched:
    """stderr of a process read line by line with a deadline (select), up to a wanted line."""

    proc: subprocess.Popen[bytes]
    stderr: bytes = b""

    def wait_stderr_line(self, wanted: bytes, timeout: float = STARTUP_TIMEOUT) -> bytes:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stderr.splitlines():
                if wanted in line:
                    return line
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            assert ready, f"no {wanted!r} on stderr within {timeout} s: {self.stderr!r}"
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before {wanted!r}: {self.stderr!r}"
            self.stderr += chunk


# ---- 3: a signal before the worker serves ----------------------------------------------------


async def _never() -> str:
    """A ``stop_when`` that never fires: the supervisor is not part of this test."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def test_a_signal_before_a_worker_serves_is_a_graceful_stop(monkeypatch):
    """The forwarded SIGTERM lands after the worker listens for signals but before its server
    is up: it is remembered, the server stops as soon as it is up, and the worker exits 0."""
    real_serve = app.serve
    signalled = []

    async def serve_after_a_signal(*args: object, **kwargs: object) -> object:
        signal.raise_signal(signal.SIGTERM)
        # The watcher has seen it (and, before the fix, cancelled everything).
        await trio.testing.wait_all_tasks_blocked()
        signalled.append(True)
        return await real_serve(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "serve", serve_after_a_signal)
    announced: list[ServerHandle] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = Config(
            hosts=("127.0.0.1",), port=0, quiet=True, fds=(listener.fileno(),), worker_id=1
        )
        null = os.open(os.devnull, os.O_WRONLY)
        served = socket.socket(fileno=os.dup(listener.fileno()))
        try:
            with trio.fail_after(EVENT_TIMEOUT):
                outcome = await app.run(
                    config,
                    null,
                    sockets=[served],
                    framed=True,
                    announce=announced.append,
                    stop_when=_never,
                )
        finally:
            served.close()
            os.close(null)
    assert signalled == [True]
    assert outcome.exit_status == 0, outcome.summary
    assert outcome.summary.startswith("stopped: ")
    assert len(announced) == 1
    assert announced[0].shutting_down


# A sitecustomize for the end-to-end case: every worker starts with SIGTERM blocked; worker 1,
# before it serves, signals its supervisor (the user's SIGTERM, during the start-up) and waits
# until the forwarded SIGTERM is pending; then every worker lets its signal in.  So the
# forwarded signal reaches worker 1 while its signal watcher is up and its server is not.
EARLY_SIGNAL_SITE = """\
import os
import signal
import time

if os.environ.get("TRIO_ECHO_TEST_CHILD"):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    import trio
    import trio.testing
    from trio_echo.server import app

    real_serve = app.serve

    async def serve(config, *args, **kwargs):
        if config.worker_id == 1:
            os.kill(os.getppid(), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while signal.SIGTERM not in signal.sigpending():
                assert time.monotonic() < deadline, "no forwarded SIGTERM"
                await trio.sleep(0.01)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        await trio.testing.wait_all_tasks_blocked()
        return await real_serve(config, *args, **kwargs)

    app.serve = serve
else:
    os.environ["TRIO_ECHO_TEST_CHILD"] = "1"
"""


def test_a_signal_during_the_workers_start_up_is_a_graceful_stop(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(EARLY_SIGNAL_SITE)
    result = subprocess.run(
        [*SERVER_COMMAND, "--workers", "2", "--port", "0", "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=STARTUP_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "worker 1: stopped: " in result.stderr
    assert "forced" not in result.stderr
    assert "NOTICE stopped: " in result.stderr
    assert_no_traceback(result.stderr)


# ---- 4: a forced or orphaned worker says so ----------------------------------------------------


@attrs.define
class LoneWorker:
    """A worker started by the test, which plays its supervisor: the control socket, the
    process, its listening port."""

    proc: subprocess.Popen[bytes]
    control: socket.socket
    port: int

    def message(self, key: str, timeout: float = STARTUP_TIMEOUT) -> dict[str, object]:
        """The next JSON line from the worker that has ``key``."""
        import json

        deadline = time.monotonic() + timeout
        pending = b""
        while True:
            for line in pending.splitlines():
                found = json.loads(line)
                if key in found:
                    return found  # type: ignore[no-any-return]
            self.control.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.control.recv(4096)
            assert data, f"the worker closed its control socket before {key!r}"
            pending += data


@pytest.fixture
def lone_worker() -> Iterator[LoneWorker]:
    with start_lone_worker() as worker:
        yield worker


@contextlib.contextmanager
def start_lone_worker() -> Iterator[LoneWorker]:
    """A worker serving a loopback port, the test its supervisor; killed at the end."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ours, theirs = socket.socketpair()
        config = Config(
            hosts=("127.0.0.1",),
            port=0,
            fds=(listener.fileno(),),
            worker_id=1,
            grace=30,
        )
        ours.sendall(pickle.dumps(WorkerSpec(config, "info")))
        proc = subprocess.Popen(
            [sys.executable, "-m", "trio_echo.workers.worker", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(listener.fileno(), theirs.fileno()),
            start_new_session=True,
        )
        theirs.close()
        port = listener.getsockname()[1]
    try:
        yield LoneWorker(proc, ours, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=EVENT_TIMEOUT)
        ours.close()


def _connected_client(worker: LoneWorker, watched: _Watched) -> socket.socket:
    """A client the worker has accepted (it says ``open`` on stderr)."""
    worker.message("ready")
    client = socket.create_connection(("127.0.0.1", worker.port), timeout=EVENT_TIMEOUT)
    client.sendall(b"hello\n")
    watched.wait_stderr_line(b"worker 1: open #1 ", EVENT_TIMEOUT)
    return client


def test_a_forced_worker_says_so_and_exits_128_plus_the_signal(lone_worker):
    watched = _Watched(lone_worker.proc)
    with _connected_client(lone_worker, watched):
        lone_worker.proc.send_signal(signal.SIGTERM)
        watched.wait_stderr_line(b"worker 1: SIGTERM: stopped accepting", EVENT_TIMEOUT)
        lone_worker.control.sendall(force_message(signal.SIGINT))
        last = lone_worker.message("status")
        status = lone_worker.proc.wait(EVENT_TIMEOUT)
    stderr = (watched.stderr + lone_worker.proc.communicate()[1]).decode()
    assert status == last["status"] == 128 + signal.SIGINT, stderr
    assert "worker 1: forced by the supervisor: closing every connection now" in stderr
    assert "worker 1: forced exit: served 1 connection, 6 bytes received" in stderr
    assert "stopped: " not in stderr
    assert_no_traceback(stderr)


# Rounds of the race below: it went wrong about one round in two.
FORCE_RACE_ROUNDS = 6


def test_a_worker_forced_with_its_sigterm_still_pending_reports_forced():
    """The supervisor's SIGTERM and, at once, its FORCE (a second signal right after the
    first): when the FORCE won, Trio gave the still pending SIGTERM back to Python's default
    handler as the worker stopped, and the worker died of it before reporting."""
    for _ in range(FORCE_RACE_ROUNDS):
        with start_lone_worker() as worker:
            watched = _Watched(worker.proc)
            # A client, so that the worker is still draining when the FORCE comes.
            with _connected_client(worker, watched):
                worker.proc.send_signal(signal.SIGTERM)
                worker.control.sendall(force_message(signal.SIGTERM))
                status = worker.proc.wait(EVENT_TIMEOUT)
            last = worker.message("status")
            stderr = (watched.stderr + worker.proc.communicate()[1]).decode()
            assert status == last["status"] == 128 + signal.SIGTERM, stderr
            assert_no_traceback(stderr)


def test_an_orphaned_worker_says_so_and_exits_1(lone_worker):
    watched = _Watched(lone_worker.proc)
    with _connected_client(lone_worker, watched):
        lone_worker.control.close()
        status = lone_worker.proc.wait(EVENT_TIMEOUT)
    stderr = (watched.stderr + lone_worker.proc.communicate()[1]).decode()
    assert status == 1, stderr
    assert "worker 1: the supervisor is gone: closing every connection now" in stderr
    assert "stopped: " not in stderr
    assert "supervisor is gone; every connection was closed: served 1 connection" in stderr
    assert_no_traceback(stderr)


@needs_balancing
def test_the_supervisor_summary_names_the_forced_workers(start_server, connect):
    server = start_server("--workers", "2", "--grace", "30", "--host", "127.0.0.1")
    pids = worker_pids(server)
    # A client on each worker, so that both are still draining at the second signal.
    clients: list[socket.socket] = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not all(f"worker {n}: open" in server.stderr for n in pids):
        assert time.monotonic() < deadline, server.stderr
        client = connect(server.port)
        client.sendall(b"stay\n")
        clients.append(client)
        server.wait_stdout(lambda data: data.count(b"] stay\n") == len(clients))
    server.send_signal(signal.SIGTERM)
    server.wait_stderr("NOTICE SIGTERM: stopping 2 workers")
    server.wait_stderr(r"worker 1: \w+: stopped accepting")
    server.wait_stderr(r"worker 2: \w+: stopped accepting")
    server.send_signal(signal.SIGINT)
    assert server.wait() == 128 + signal.SIGINT
    for client in clients:
        client.close()
    stderr = server.all_stderr()
    assert "worker 1: forced exit: " in stderr
    assert "worker 2: forced exit: " in stderr
    assert "NOTICE forced exit (workers 1, 2 closed every connection): served " in stderr
    assert_no_traceback(stderr)


# ---- 12: a stalled stdout costs grace + one drain period ---------------------------------------


# The client has filled every buffer between it and the stalled stdout once its socket has not
# become writable for this long (the server moves data on in microseconds while it can).
STALL_QUIET = 0.5


def _fill_until_stalled(port: int) -> socket.socket:
    """A client that sends until nothing moves any more: the server's stdout is stalled, and
    every queue and pipe on the way is full."""
    client = socket.create_connection(("127.0.0.1", port), timeout=EVENT_TIMEOUT)
    client.setblocking(False)
    line = b"y" * 4095 + b"\n"
    chunk = line * 64
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the server never stalled"
        try:
            client.send(chunk)
        except BlockingIOError:
            _, writable, _ = select.select([], [client], [], STALL_QUIET)
            if not writable:
                return client


def test_a_stalled_stdout_bounds_the_workers_shutdown_by_grace_and_one_drain(start_server):
    grace = 0.5
    drain = max(grace, MIN_DRAIN_TIMEOUT)
    server = start_server(
        "--workers", "2", "--grace", str(grace), "--host", "127.0.0.1", read_stdout=False
    )
    worker_pids(server)
    with _fill_until_stalled(server.port):
        sent = server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=grace + 3 * drain + EVENT_TIMEOUT)
        elapsed = time.monotonic() - sent
    stderr = server.all_stderr()
    assert status == 1, stderr
    assert elapsed < grace + drain + SHUTDOWN_SLACK, (elapsed, stderr)
    assert f"stdout did not take the last output within {drain:g} s" in stderr
    assert_no_traceback(stderr)
