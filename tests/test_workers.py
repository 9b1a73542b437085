"""``--workers N``: a supervisor and N worker processes sharing the port (issue 7).

End to end, as a user runs it: ``python -m trio_echo --workers 2`` as a subprocess, real
loopback clients, signals to the supervisor, the workers found by the pids it logs.  The frame
format between a worker and its supervisor is tested on its own (:mod:`trio_echo.output.frames`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import (
    EVENT_TIMEOUT,
    LISTENING_RE,
    SERVER_COMMAND,
    STARTUP_TIMEOUT,
    ServerProcess,
    assert_no_traceback,
    assert_refused,
    one_line_clients,
    peer_name,
    run_cli,
)
from hypothesis import given
from hypothesis import strategies as st

from trio_echo.net.bind import REUSEPORT_BALANCES
from trio_echo.output.frames import FrameDecoder, frame_header

# For the tests that assert that both workers got clients of a short run: only the kernel's
# SO_REUSEPORT balancing promises that (2 ** -39 to fail with 40 clients).  Elsewhere every
# worker accepts from one shared socket, and one may well take them all.  The other --workers
# tests run either way (README, "Platforms"; nox -s portable shares the socket).
needs_balancing = pytest.mark.skipif(
    not REUSEPORT_BALANCES,
    reason="asserts that both workers got clients: needs SO_REUSEPORT's balancing (Linux; "
    "hidden by nox -s portable)",
)

SERVING_RE = r"worker (?P<number>\d+) \(pid (?P<pid>\d+)\) is serving"


def worker_pids(server: ServerProcess, count: int = 2) -> dict[int, int]:
    """Worker number -> pid, for the first ``count`` workers the supervisor logged."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        found = {int(m["number"]): int(m["pid"]) for m in re.finditer(SERVING_RE, server.stderr)}
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, server.stderr
            return found
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = EVENT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {timeout} s"
        time.sleep(0.01)


def jsonl_records(data: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in data.splitlines()]


# ---- frames --------------------------------------------------------------------------------


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_frames_come_back_whole_however_the_pipe_splits_them(payloads, cuts):
    stream = b"".join(frame_header(len(p)) + p for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(stream[start:end])
    assert out == payloads
    assert decoder.pending == 0


def test_an_unfinished_frame_is_pending_not_returned():
    decoder = FrameDecoder()
    assert decoder.feed(frame_header(10) + b"12345") == []
    assert decoder.pending == 4 + 5
    assert decoder.feed(b"67890" + frame_header(1)) == [b"1234567890"]
    assert decoder.pending == 4


# ---- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "must be 1-1024 or 'auto', got '0'"),
        (["--workers", "1025"], "must be 1-1024 or 'auto', got '1025'"),
        (["--workers", "two"], "expected a number of processes or 'auto', got 'two'"),
        (["--workers", ""], "expected a number of processes or 'auto'"),
        (["--model", "asyncio", "--workers", "2"], "--model asyncio does not support --workers"),
        (["--model", "sync", "--workers", "auto"], "--model sync does not support --workers"),
    ],
)
def test_bad_workers_values_are_usage_errors(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


def test_workers_auto_is_the_number_of_cores(start_server):
    cores = len(os.sched_getaffinity(0))
    server = start_server("--workers", "auto")
    mode = server.wait_stderr(LISTENING_RE)["mode"]
    assert mode == ("print, text" if cores == 1 else f"print, text, {cores} workers")
    assert server.stop() == 0


def test_one_worker_is_the_plain_server(start_server, connect):
    server = start_server("--workers", "1")
    assert server.wait_stderr(LISTENING_RE)["mode"] == "print, text"
    client = connect(server.port)
    client.sendall(b"plain\n")
    server.wait_stdout(b"plain\n")
    # No supervisor: nobody logs workers, and the server has no child process.
    assert "worker" not in server.stderr
    with open(f"/proc/{server.pid}/task/{server.pid}/children") as children:
        assert children.read().split() == []
    client.close()
    assert server.stop() == 0


# ---- serving ---------------------------------------------------------------------------------


@needs_balancing
def test_both_workers_serve_and_jsonl_names_the_worker(start_server, connect):
    server = start_server("--workers", "2", "--format", "jsonl")
    assert server.wait_stderr(LISTENING_RE)["mode"] == "print, jsonl, 2 workers"
    pids = worker_pids(server)
    clients = 40
    one_line_clients(connect, server.port, [b"line %d\n" % i for i in range(clients)])
    server.wait_stdout(lambda data: data.count(b'"event": "close"') == clients)
    records = jsonl_records(server.stdout)
    data = [r for r in records if r["event"] == "data"]
    assert sorted(str(r["data"]) for r in data) == sorted(f"line {i}" for i in range(clients))
    # The kernel spread them (40 clients all hashed to one of two sockets: 2 ** -39).
    assert {r["worker"] for r in records} == set(pids) == {1, 2}
    # (worker, conn) names one connection: each has one open, one data, one close.
    keys = [(r["worker"], r["conn"]) for r in records]
    assert all(keys.count(key) == 3 for key in keys)
    assert server.stop() == 0
    assert f"stopped: served {clients} connections, " in server.all_stderr()


@needs_balancing
def test_workers_behind_a_balancer_name_the_real_clients(start_server, connect):
    """--workers with --proxy-protocol: every worker reads the PROXY header and names the
    client it gives."""
    server = start_server("--workers", "2", "--proxy-protocol", "--format", "jsonl")
    assert server.wait_stderr(LISTENING_RE)["mode"] == "print, jsonl, proxy protocol, 2 workers"
    clients = 30
    one_line_clients(
        connect,
        server.port,
        [b"PROXY TCP4 203.0.113.%d 10.0.0.1 4%04d 8888\r\nhi\n" % (i, i) for i in range(clients)],
    )
    server.wait_stdout(lambda data: data.count(b'"event": "close"') == clients)
    data = [r for r in jsonl_records(server.stdout) if r["event"] == "data"]
    assert sorted(str(r["peer"]) for r in data) == sorted(
        f"203.0.113.{i}:4{i:04d}" for i in range(clients)
    )
    assert {r["worker"] for r in data} == {1, 2}
    assert server.stop() == 0


@needs_balancing
def test_lines_from_different_workers_never_mix(start_server, connect):
    """Long lines (well over the 4 KiB a pipe writes in one piece) from clients on both
    workers at once: every printed line is one whole line of one client, in its order."""
    server = start_server("--workers", "2")
    worker_pids(server)
    clients = [connect(server.port) for _ in range(16)]
    lines, size = 60, 20_000

    def send(index: int, client: socket.socket) -> None:
        letter = b"ABCDEFGHIJKLMNOP"[index : index + 1]
        client.sendall(b"".join(b"%d:%s\n" % (n, letter * size) for n in range(lines)))
        client.close()

    senders = [threading.Thread(target=send, args=item) for item in enumerate(clients)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(EVENT_TIMEOUT)
    expected = len(clients) * lines
    server.wait_stdout(lambda data: data.count(b"\n") >= expected, timeout=30)
    assert server.stop() == 0
    printed = server.all_stdout().splitlines()
    assert len(printed) == expected
    seen: dict[str, list[int]] = {}
    for line in printed:
        match = re.fullmatch(rb"\[(?P<peer>[^\]]+)\] (?P<n>\d+):(?P<body>[A-P]+)", line)
        assert match, line[:80]
        body = match["body"]
        assert body == body[:1] * size, "a line mixed with another"
        seen.setdefault(match["peer"].decode(), []).append(int(match["n"]))
    assert len(seen) == len(clients)
    assert all(numbers == list(range(lines)) for numbers in seen.values())
    workers = set(re.findall(r"worker (\d+): open", server.all_stderr()))
    assert workers == {"1", "2"}


# ---- restarts --------------------------------------------------------------------------------


def test_a_worker_that_dies_is_restarted_with_a_growing_back_off(start_server, connect):
    server = start_server("--workers", "2")
    pids = worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    server.wait_stderr(r"WARNING worker 1 was killed by SIGKILL; starting a new worker in 0.1 s")
    pids = worker_pids(server, 3)
    assert alive(pids[3])
    assert alive(pids[2])
    # The replacement dies too: the next delay is twice as long.
    os.kill(pids[3], signal.SIGKILL)
    server.wait_stderr(r"WARNING worker 3 was killed by SIGKILL; starting a new worker in 0.2 s")
    pids = worker_pids(server, 4)
    # Meanwhile and after, every client is served.
    for i in range(20):
        client = connect(server.port)
        client.sendall(b"after %d\n" % i)
        client.close()
    server.wait_stdout(lambda data: data.count(b"] after ") == 20)
    assert server.stop() == 0
    stderr = server.all_stderr()
    assert "NOTICE workers restarted: 2" in stderr
    assert_no_traceback(stderr)


def test_a_worker_that_cannot_start_stops_the_server(tmp_path):
    # A sitecustomize that lets the supervisor start but makes every worker exit with 3
    # before it serves: the server cannot start, one line, status 1.
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('TRIO_ECHO_TEST_CHILD'):\n"
        "    os._exit(3)\n"
        "os.environ['TRIO_ECHO_TEST_CHILD'] = '1'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [*SERVER_COMMAND, "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=STARTUP_TIMEOUT,
    )
    assert result.returncode == 1
    assert re.search(
        r"error: worker [12] exited with status 3 before it was ready \(see its error above\)",
        result.stderr,
    ), result.stderr
    assert "listening on" not in result.stderr
    assert_no_traceback(result.stderr)


# ---- stopping --------------------------------------------------------------------------------


@needs_balancing
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_every_worker_within_one_grace_period(start_server, connect, signum):
    server = start_server("--workers", "2", "--grace", "1", "--format", "jsonl")
    pids = worker_pids(server)
    # Clients until both workers have some.
    clients: list[socket.socket] = []
    while len(clients) < 40:
        client = connect(server.port)
        client.sendall(b"hello\n")
        clients.append(client)
        server.wait_stdout(lambda data: data.count(b'"data": "hello"') == len(clients))
        workers = {r["worker"] for r in jsonl_records(server.stdout)}
        if workers == {1, 2} and len(clients) >= 4:
            break
    assert workers == {1, 2}
    sent = server.send_signal(signum)
    name = signal.Signals(signum).name
    server.wait_stderr(rf"NOTICE {name}: stopping 2 workers")
    # During the grace period every client may still send, and is printed.
    for client in clients:
        client.sendall(b"still here\n")
    server.wait_stdout(lambda data: data.count(b'"data": "still here"') == len(clients))
    # New clients are refused at once: both workers stopped accepting.
    server.wait_stderr(r"worker 1: \w+: stopped accepting")
    server.wait_stderr(r"worker 2: \w+: stopped accepting")
    assert_refused(server.port, socket.AF_INET)
    assert server.wait(timeout=EVENT_TIMEOUT) == 0
    elapsed = time.monotonic() - sent
    assert 1.0 <= elapsed < 3.0, elapsed
    for client in clients:
        client.close()
    for pid in pids.values():
        wait_gone(pid)
    stderr = server.all_stderr()
    assert f"stopped: served {len(clients)} connections, " in stderr
    assert_no_traceback(stderr)


def test_sigterm_to_every_process_is_still_one_graceful_shutdown(start_server, connect):
    """As systemd's default KillMode (and pkill) do: the supervisor and every worker get
    SIGTERM; a worker gets it twice (forwarded too), and still drains."""
    server = start_server("--workers", "2", "--grace", "1")
    pids = worker_pids(server)
    client = connect(server.port)
    client.sendall(b"before\n")
    server.wait_stdout(b"] before\n")
    sent = server.send_signal(signal.SIGTERM)
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    server.wait_stderr("NOTICE SIGTERM: stopping 2 workers")
    client.sendall(b"during\n")
    server.wait_stdout(b"] during\n")
    assert server.wait() == 0
    assert time.monotonic() - sent >= 1.0
    client.close()
    stderr = server.all_stderr()
    assert "forced" not in stderr
    assert "closing every connection now" not in stderr
    assert_no_traceback(stderr)


@needs_balancing
def test_a_second_signal_forces_every_worker(start_server, connect):
    server = start_server("--workers", "2", "--grace", "30")
    pids = worker_pids(server)
    # Clients on both workers, so that both are still draining at the second signal.
    clients: list[socket.socket] = []
    while len(clients) < 40 and not all(f"worker {n}: open" in server.stderr for n in pids):
        client = connect(server.port)
        client.sendall(b"stay\n")
        clients.append(client)
        server.wait_stdout(lambda data: data.count(b"] stay\n") == len(clients))
        server.wait_stderr(rf"worker \d: open #\d+ {peer_name(client)}$")
    server.send_signal(signal.SIGTERM)
    server.wait_stderr("NOTICE SIGTERM: stopping 2 workers")
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM
    for pid in pids.values():
        wait_gone(pid)
    for client in clients:
        client.close()
    stderr = server.all_stderr()
    assert "forced exit: " in stderr
    # Each worker closed its connections when told to, rather than being killed.
    for number in pids:
        assert f"worker {number}: forced by the supervisor: closing every connection now" in stderr
    assert "killed" not in stderr
    assert_no_traceback(stderr)


def test_workers_leave_when_the_supervisor_is_killed(start_server, connect):
    server = start_server("--workers", "2")
    pids = worker_pids(server)
    port = server.port
    client = connect(port)
    client.sendall(b"orphan?\n")
    server.wait_stdout(b"] orphan?\n")
    os.kill(server.pid, signal.SIGKILL)
    for pid in pids.values():
        wait_gone(pid)
    assert_refused(port, socket.AF_INET)
    client.close()


# ---- errors ----------------------------------------------------------------------------------


def processes_with(tag: str) -> list[int]:
    """The pids of the processes whose environment holds ``TRIO_ECHO_TEST_TAG=tag``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as environ:
                    if f"TRIO_ECHO_TEST_TAG={tag}".encode() in environ.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2, 0.4])
def test_a_signal_during_start_up_leaves_nothing_behind(delay):
    tag = f"{os.getpid()}-{delay}"
    proc = subprocess.Popen(
        [*SERVER_COMMAND, "--workers", "2", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TRIO_ECHO_TEST_TAG": tag},
    )
    time.sleep(delay)  # not synchronisation: the point is to land anywhere in the start-up
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=STARTUP_TIMEOUT)
    # Stopped (0), or killed by it before Python set up its handler (-15).
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert_no_traceback(stderr.decode())
    deadline = time.monotonic() + EVENT_TIMEOUT
    while left := [pid for pid in processes_with(tag) if alive(pid)]:
        assert time.monotonic() < deadline, f"workers left running: {left}"
        time.sleep(0.01)


def test_a_worker_run_by_hand_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "trio_echo.workers.worker"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "trio-echo worker: error: workers are started by `trio-echo --workers N`, not by hand\n"
    )


def test_port_in_use_is_one_line_even_against_another_workers_server(start_server):
    """The first server's workers share the port with SO_REUSEPORT (Linux) or accept from the
    supervisor's sockets (elsewhere): either way the second server's first bind, without
    SO_REUSEPORT, is refused, instead of its sockets silently joining the first's."""
    first = start_server("--workers", "2", "--host", "127.0.0.1")
    result = run_cli("--workers", "2", "--host", "127.0.0.1", "--port", str(first.port))
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"cannot listen on 127.0.0.1 port {first.port}: address already in use "
        f"(is another server running on port {first.port}?)"
    )
    assert len(result.stderr.splitlines()) == 1
    assert first.stop() == 0


def test_stdout_closed_stops_the_supervisor_with_one_line(start_server, connect):
    server = start_server("--workers", "2", read_stdout=False)
    pids = worker_pids(server)
    assert server.proc.stdout is not None
    server.proc.stdout.close()
    client = connect(server.port)
    client.sendall(b"into the void\n")
    assert server.wait() == 1
    client.close()
    stderr = server.all_stderr()
    assert "error: stdout was closed by its reader (broken pipe)" in stderr
    for pid in pids.values():
        wait_gone(pid)
    assert_no_traceback(stderr)


def test_workers_share_an_inherited_socket(spawn, connect):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd, port = listener.fileno(), listener.getsockname()[1]
    server = spawn([*SERVER_COMMAND, "--workers", "2", "--fd", str(fd)], pass_fds=[fd])
    listener.close()
    assert server.wait_listening().port == port
    for i in range(10):
        client = connect(port)
        client.sendall(b"shared %d\n" % i)
        client.close()
    server.wait_stdout(lambda data: data.count(b"] shared ") == 10)
    assert server.stop() == 0
    # Nobody holds the socket any more: closed, not a queue that nobody serves.
    assert_refused(port, socket.AF_INET)
