"""HAProxy in front of two trio_echo backends, the way docs/deployment.md sets it up.

Run by ``nox -s haproxy`` (which installs Debian's haproxy if it is missing); skipped where no
``haproxy`` binary exists, and left out of the default run (marker ``haproxy``).  Everything is
on loopback: HAProxy's frontend, both backends, the clients.

It checks what a user of the deployment relies on: (a) the printed peer is the real client,
carried by the PROXY protocol v2 header (``send-proxy-v2``), not HAProxy's own address; (b) the
connections spread over both backends; (c) SIGTERM to one backend lets its connected clients
finish within the grace period while HAProxy sends new clients to the other one, and nothing
any client sent is lost.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EVENT_TIMEOUT, ServerProcess, assert_no_traceback

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

# The configuration of docs/deployment.md, with loopback ports filled in and quick checks.
CONFIG = """\
global
    maxconn 2000

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A backend that refuses a connection (it is shutting down) is retried on the other one.
    retries 3
    option redispatch 1

frontend echo
    bind 127.0.0.1:{front}
    default_backend trio_echo

backend trio_echo
    balance roundrobin
    # The health checks send a PROXY header too (v2 LOCAL), so the backends accept them.
    default-server send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 1
    server one 127.0.0.1:{one}
    server two 127.0.0.1:{two}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_connectable(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        assert proc.poll() is None, "haproxy exited at start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"haproxy is not listening on {port}"
            time.sleep(0.02)  # polling the listener with a deadline, not synchronising


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[int, int], int]]:
    """``haproxy(port_one, port_two)`` starts HAProxy in front of two backends; returns the
    frontend's port.  Stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(one: int, two: int) -> int:
        front = _free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(CONFIG.format(front=front, one=one, two=two))
        proc = subprocess.Popen(
            [shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        _wait_connectable(front, proc)
        return front

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _printed(server: ServerProcess) -> str:
    """Everything the backend printed so far."""
    return server.wait_stdout(lambda _: True).decode(errors="replace")


def _wait_printed(backends: list[ServerProcess], lines: list[str]) -> None:
    """Until every one of ``lines`` is printed by one of the backends."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        out = "".join(_printed(backend) for backend in backends)
        missing = [line for line in lines if line not in out]
        if not missing:
            return
        assert time.monotonic() < deadline, f"never printed: {missing[:3]}"
        time.sleep(0.02)  # polling the backends' output with a deadline


def _line(client: socket.socket, text: str) -> str:
    host, port = client.getsockname()[:2]
    return f"[{host}:{port}] {text}\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_haproxy_in_front_of_two_backends(
    start_server: Callable[..., ServerProcess],
    haproxy: Callable[[int, int], int],
    workers: int,
) -> None:
    # Backend one is a single process, then a supervisor with two workers (--workers 2).
    one = start_server("--proxy-protocol", "--grace", "5", "--workers", str(workers))
    two = start_server("--proxy-protocol", "--grace", "5")
    front = haproxy(one.port, two.port)

    # (a) and (b): twenty clients through HAProxy; each line is printed with the client's own
    # address and port (what the PROXY header carried), and both backends get some.
    clients = [socket.create_connection(("127.0.0.1", front)) for _ in range(20)]
    expected = []
    for i, client in enumerate(clients):
        client.sendall(f"client {i}\n".encode())
        expected.append(_line(client, f"client {i}"))
    _wait_printed([one, two], expected)
    on_one = [line for line in expected if line in _printed(one)]
    on_two = [line for line in expected if line in _printed(two)]
    assert len(on_one) + len(on_two) == len(expected)  # each printed once, by one backend
    assert on_one, "HAProxy sent no client to backend one"
    assert on_two, "HAProxy sent no client to backend two"
    assert f"[127.0.0.1:{front}]" not in _printed(one) + _printed(two)

    # (c): SIGTERM to backend one.  Its clients are still being served during the grace period;
    # new clients go to backend two (HAProxy retries the refused connection there).
    one.send_signal(signal.SIGTERM)
    if workers == 1:
        one.wait_stderr(r"SIGTERM: stopped accepting")
    else:
        for number in range(1, workers + 1):
            one.wait_stderr(rf"worker {number}: SIGTERM: stopped accepting")
    later = []
    for i, client in enumerate(clients):
        client.sendall(f"more from {i}\n".encode())
        later.append(_line(client, f"more from {i}"))
    newcomers = [socket.create_connection(("127.0.0.1", front)) for _ in range(10)]
    arrivals = []
    for j, client in enumerate(newcomers):
        client.sendall(f"newcomer {j}\n".encode())
        arrivals.append(_line(client, f"newcomer {j}"))
    _wait_printed([one, two], later)
    _wait_printed([two], arrivals)

    # The first backend's clients leave within its grace period: it exits 0, nothing lost.
    for client in clients:
        client.close()
    assert one.wait(timeout=5 + EVENT_TIMEOUT) == 0
    assert_no_traceback(one.all_stderr())
    for line in later:
        assert line in _printed(one) + _printed(two)
    for client in newcomers:
        client.close()
