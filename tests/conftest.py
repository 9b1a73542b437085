"""Shared helpers for the tests: ``python -m trio_echo`` as a real subprocess, and loopback clients.

The end-to-end tests drive the program the way a user does: command line, signals, exit status,
stdout and stderr.  Everything here is blocking code (sockets, pipes, reader threads); the tests
that use it are plain sync functions.

Rules the helpers keep so that the tests are neither flaky nor leaky:

* Waiting for the server is always a poll with a deadline (a condition variable, ``select``,
  ``wait(timeout)``), never a fixed sleep.
* Every pipe of the child is read, or deliberately left unread by the test that asks for it: an
  unread pipe fills up and stalls the server.
* Teardown kills whatever is still running, joins the reader threads and closes every pipe and
  socket, so that a failing test does not also leak (``filterwarnings = error`` turns a leaked
  socket's ``ResourceWarning`` into a failure of the next test).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

import pytest

# How long a server may take to print its "listening on" line: a Python start-up plus importing
# trio takes a fraction of a second, but a loaded CI machine can be much slower.
STARTUP_TIMEOUT = 15.0

# Default deadline for anything the server should do "at once" (print a line, log an event):
# generous, since a poll returns as soon as the thing happens, so this only bounds a failure.
EVENT_TIMEOUT = 5.0

# How long teardown waits for a killed server and for its reader threads.
TEARDOWN_TIMEOUT = 5.0

# The stderr line that says the server is ready, e.g.
# ``01:04:27.446 NOTICE listening on 127.0.0.1:46253, [::1]:46253 (print, text)``.
LISTENING_RE = re.compile(r"NOTICE listening on (?P<addresses>.+) \((?P<mode>[^()]*)\)$")

# One bound address in that line: ``127.0.0.1:46253`` or ``[::1]:46253``.
ADDRESS_RE = re.compile(r"(?P<host>\[[^\]]+\]|[^\s,]+):(?P<port>\d+)")

SERVER_COMMAND = (sys.executable, "-m", "trio_echo")

# Linux-only pieces (README, "Platforms"): macOS and the BSDs have no epoll, and `--workers N`
# needs SO_REUSEPORT.  `nox -s portable` hides both (tests/portable/hide_linux.py), as there.
needs_epoll = pytest.mark.skipif(
    not hasattr(select, "epoll"),
    reason="needs select.epoll: Linux only (hidden by nox -s portable)",
)


class _PipeReader:
    """A daemon thread that reads one pipe of the child to EOF into a buffer.

    Reading continuously keeps the pipe from filling; the condition variable lets the test wait
    for what it expects with a deadline instead of sleeping.
    """

    def __init__(self, pipe: IO[bytes], name: str) -> None:
        self._pipe = pipe
        self._fd = pipe.fileno()
        self._data = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, 1 << 16):
                with self._cond:
                    self._data += chunk
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def data(self) -> bytes:
        with self._cond:
            return bytes(self._data)

    def wait_for(self, predicate: Callable[[bytes], object], timeout: float) -> object:
        """The first true value of ``predicate(everything read so far)`` within ``timeout``.

        Raises ``AssertionError`` (with what was read) on timeout or when the pipe reached EOF
        without the predicate becoming true.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(bytes(self._data))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "EOF" if self._eof else f"{timeout} s"
                    raise AssertionError(
                        f"{self._thread.name}: not found before {why}; read so far:\n"
                        + self._data.decode(errors="replace")[-4000:]
                    )
                self._cond.wait(remaining)

    def wait_eof(self, timeout: float) -> bytes:
        """Everything the pipe carried, once it reached EOF (the child has exited)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self._thread.name}: no EOF within {timeout} s"
        return self.data

    def close(self) -> None:
        """Wait for EOF (the child is gone) and close the pipe."""
        self._thread.join(TEARDOWN_TIMEOUT)
        self._pipe.close()


class ServerProcess:
    """A running ``python -m trio_echo``: its Popen, its port, and ways to watch and stop it.

    stderr is always read by a thread (see :meth:`wait_stderr`).  stdout is read by a thread too
    (see :meth:`wait_stdout`) unless the server was started with ``read_stdout=False``; then
    ``proc.stdout`` is the test's to read, or to leave unread, or to close.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        read_stdout: bool = True,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        # preexec_fn runs in the child before exec: e.g. lower its RLIMIT_NOFILE.
        self.proc = subprocess.Popen(
            [*SERVER_COMMAND, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=preexec_fn,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._stderr = _PipeReader(self.proc.stderr, "server stderr")
        self._stdout = _PipeReader(self.proc.stdout, "server stdout") if read_stdout else None
        self.port = 0
        self.addresses: list[tuple[str, int]] = []

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> ServerProcess:
        """Wait for the "listening on" line; set :attr:`port` and :attr:`addresses`."""
        match = self.wait_stderr(LISTENING_RE, timeout)
        self.addresses = [
            (m["host"].strip("[]"), int(m["port"])) for m in ADDRESS_RE.finditer(match["addresses"])
        ]
        ports = {port for _, port in self.addresses}
        assert len(ports) == 1, f"addresses on different ports: {match['addresses']}"
        (self.port,) = ports
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ---- watching ------------------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self._stderr.data.decode(errors="replace")

    @property
    def stdout(self) -> bytes:
        """Everything the server wrote to stdout so far (only with ``read_stdout=True``)."""
        assert self._stdout is not None, "stdout is not read by the helper"
        return self._stdout.data

    def wait_stderr(
        self, pattern: str | re.Pattern[str], timeout: float = EVENT_TIMEOUT
    ) -> re.Match[str]:
        """The first match of ``pattern`` (searched line by line) on stderr, within ``timeout``."""
        regex = re.compile(pattern)

        def find(data: bytes) -> re.Match[str] | None:
            for line in data.decode(errors="replace").splitlines():
                if match := regex.search(line):
                    return match
            return None

        return self._stderr.wait_for(find, timeout)  # type: ignore[return-value]

    def wait_stdout(
        self, expected: bytes | Callable[[bytes], object], timeout: float = EVENT_TIMEOUT
    ) -> bytes:
        """Wait until stdout contains ``expected`` (or ``expected(stdout)`` is true).

        Returns everything read from stdout so far.
        """
        assert self._stdout is not None, "stdout is not read by the helper"
        check = expected if callable(expected) else (lambda data: expected in data)
        self._stdout.wait_for(check, timeout)
        return self._stdout.data

    # ---- stopping ------------------------------------------------------------------------------

    def send_signal(self, signum: int = signal.SIGTERM) -> float:
        """Send ``signum``; return the ``time.monotonic()`` at which it was sent."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        return sent

    def wait(self, timeout: float = EVENT_TIMEOUT) -> int:
        """The exit status, once the server has exited (``subprocess.TimeoutExpired`` if not)."""
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = EVENT_TIMEOUT) -> int:
        """Send ``signum`` and wait for the exit status."""
        self.send_signal(signum)
        return self.wait(timeout)

    def all_stdout(self, timeout: float = EVENT_TIMEOUT) -> bytes:
        """All of stdout, once the server has exited and the pipe reached EOF."""
        assert self._stdout is not None, "stdout is not read by the helper"
        return self._stdout.wait_eof(timeout)

    def all_stderr(self, timeout: float = EVENT_TIMEOUT) -> str:
        """All of stderr, once the server has exited and the pipe reached EOF."""
        return self._stderr.wait_eof(timeout).decode(errors="replace")

    def close(self) -> None:
        """Kill the server if it is still running, then close every pipe.  Idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TEARDOWN_TIMEOUT)
        self._stderr.close()
        if self._stdout is not None:
            self._stdout.close()
        elif self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``start_server("--echo", ...)`` runs ``python -m trio_echo --port 0 ...``.

    Returns a :class:`ServerProcess` once its "listening on" line is out.  Pass
    ``port=N`` for a fixed port, ``read_stdout=False`` to handle stdout in the test and
    ``preexec_fn`` to run something in the child before the exec (see :func:`fd_limit`).
    Every server started is killed and its pipes closed at teardown, whatever the test did.
    """
    with contextlib.ExitStack() as cleanup:

        def start(
            *args: str,
            port: int = 0,
            read_stdout: bool = True,
            preexec_fn: Callable[[], object] | None = None,
        ) -> ServerProcess:
            server = ServerProcess(
                ["--port", str(port), *args], read_stdout=read_stdout, preexec_fn=preexec_fn
            )
            cleanup.callback(server.close)
            return server.wait_listening()

        yield start


class InheritingServer(ServerProcess):
    """``python -m trio_echo`` started with inherited descriptors (``pass_fds``); the rest as
    :class:`conftest.ServerProcess` (stdout and stderr read by threads, killed at close)."""

    def __init__(
        self, command: Sequence[str], pass_fds: Sequence[int], env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=env,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._stderr = _PipeReader(self.proc.stderr, "server stderr")
        self._stdout = _PipeReader(self.proc.stdout, "server stdout")
        self.port = 0
        self.addresses = []


@pytest.fixture
def spawn() -> Iterator[Callable[..., InheritingServer]]:
    with contextlib.ExitStack() as cleanup:

        def start(
            command: Sequence[str], pass_fds: Sequence[int], env: dict[str, str] | None = None
        ) -> InheritingServer:
            server = InheritingServer(command, pass_fds, env)
            cleanup.callback(server.close)
            return server

        yield start


def fd_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that sets the child's RLIMIT_NOFILE to ``limit``, soft *and* hard: the
    server raises its soft limit to the hard one at start-up, so only the hard limit sticks."""

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return set_limit


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` has open (``/proc/PID/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS`` in ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def read_line(fd: int, timeout: float = EVENT_TIMEOUT) -> bytes:
    """Read ``fd`` (a pipe) until it has given at least one whole line; return what was read."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no line on the pipe within {timeout} s, got {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"EOF before a whole line, got {data!r}"
        data += chunk
    return data


def assert_no_traceback(stderr: str) -> None:
    """The server never printed a Python traceback."""
    assert "Traceback" not in stderr, stderr


def run_command(
    argv: Sequence[str], timeout: float = STARTUP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion, no stdin, output captured as text."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(*args: str, timeout: float = STARTUP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trio_echo ARGS`` to completion (for flags that make it exit at once)."""
    return run_command([*SERVER_COMMAND, *args], timeout)


# ---- clients ---------------------------------------------------------------------------------


LOOPBACKS = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}

FAMILIES = (socket.AF_INET, socket.AF_INET6)


def peer_name(sock: socket.socket) -> str:
    """How the server names this client in text output: ``127.0.0.1:P`` or ``[::1]:P``."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def recv_exactly(sock: socket.socket, size: int, timeout: float = EVENT_TIMEOUT) -> bytes:
    """Exactly ``size`` bytes from ``sock`` (fewer only if it reached EOF), within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_eof(sock: socket.socket, timeout: float = EVENT_TIMEOUT) -> bytes:
    """Read until the server closes the connection; return what came before the EOF.

    A reset (``ConnectionResetError``) is not an EOF and propagates: it means data was lost.
    """
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(1 << 16)
        if not chunk:
            return bytes(data)
        data += chunk


def assert_refused(port: int, family: socket.AddressFamily) -> None:
    """Connecting to ``port`` is refused, now: not accepted into a backlog, not reset later.

    Every model logs "stopped accepting" only once its listeners are closed, and a balancer in
    front (tests/test_haproxy.py) relies on that: a client that connected after the line and
    was then reset would be lost.  So one attempt, no retry.
    """
    address = (LOOPBACKS[family], port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(EVENT_TIMEOUT)
        with pytest.raises(ConnectionRefusedError):
            sock.connect(address)


def one_line_clients(
    connect: Callable[..., socket.socket], port: int, lines: Sequence[bytes]
) -> None:
    """One short-lived client per line: connects, sends its line, closes (the way the
    ``--workers`` tests spread clients over the workers)."""
    for line in lines:
        client = connect(port)
        client.sendall(line)
        client.close()


@pytest.fixture
def connect() -> Iterator[Callable[..., socket.socket]]:
    """A factory: ``connect(port, family=socket.AF_INET)`` opens a blocking loopback client.

    The socket has a timeout (so that a test fails instead of hanging) and is closed at teardown
    if the test did not close it.
    """
    with contextlib.ExitStack() as cleanup:

        def open_client(
            port: int, family: socket.AddressFamily = socket.AF_INET, timeout: float = EVENT_TIMEOUT
        ) -> socket.socket:
            sock = cleanup.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.settimeout(timeout)
            sock.connect((LOOPBACKS[family], port))
            return sock

        yield open_client
