"""Helpers for the Unix socket tests (tests/test_unix.py, tests/test_unix_e2e.py): a short
private directory for socket paths (sun_path holds only 108 bytes, and pytest's tmp_path can be
longer), ``python -m trio_echo --unix`` as a subprocess, clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest
from conftest import EVENT_TIMEOUT, LISTENING_RE, STARTUP_TIMEOUT, ServerProcess

from trio_echo.net.peercred import peer_name

__all__ = [
    "ME",
    "linux_only",
    "peer_of",
    "run_client",
    "sock_dir",
    "stale_socket_file",
    "unix_connect",
    "unix_server",
]

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_PEERCRED and abstract names: Linux"
)


def _me() -> str:
    """How this test process is shown as a client: on Linux, written out (what SO_PEERCRED
    must give); elsewhere whatever the platform tells (see trio_echo.net.unix.peer_name)."""
    if sys.platform.startswith("linux"):
        return f"unix:pid={os.getpid()},uid={os.getuid()},gid={os.getgid()}"
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        return peer_name(a)


ME = _me()


def peer_of(pid: int) -> str:
    """How a client process of ours (same uid and gid) is shown."""
    return f"unix:pid={pid},uid={os.getuid()},gid={os.getgid()}"


@pytest.fixture
def sock_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="te-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def unix_server() -> Iterator[Callable[..., ServerProcess]]:
    """``unix_server(path, *args)``: ``python -m trio_echo --unix PATH ARGS``, once listening;
    killed at teardown whatever the test did."""
    with contextlib.ExitStack() as cleanup:

        def start(path: str, *args: str) -> ServerProcess:
            server = ServerProcess(["--unix", path, *args])
            cleanup.callback(server.close)
            server.wait_stderr(LISTENING_RE, STARTUP_TIMEOUT)
            return server

        yield start


@pytest.fixture
def unix_connect() -> Iterator[Callable[[str], socket.socket]]:
    """``unix_connect(path)``: a blocking client with a timeout, closed at teardown."""
    with contextlib.ExitStack() as cleanup:

        def connect(path: str) -> socket.socket:
            sock = cleanup.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.settimeout(EVENT_TIMEOUT)
            sock.connect(path)
            return sock

        yield connect


def stale_socket_file(path: str) -> None:
    """Leave a socket file at ``path`` that nothing listens on, as a killed server does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        sock.listen(1)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def run_client(argv: list[str], data: bytes) -> tuple[int, bytes]:
    """Run a client program with ``data`` on its stdin; its pid and what it printed."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        out, _ = proc.communicate(data, timeout=EVENT_TIMEOUT)
        assert proc.returncode == 0, (argv, proc.returncode)
        return proc.pid, out
