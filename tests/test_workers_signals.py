"""``--workers``: stopping, forcing and orphaning workers, and what runs where (review findings
3, 4, 9, 10 and 12 of the workers issue).

End to end as in :mod:`test_workers` where the user can see it; a worker is also driven on
its own (``python -m trio_echo.workers.worker FD`` with the test as its supervisor), and the
signal watcher in-process, where the window to hit is too narrow to reach from outside.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

import attrs
import pytest
from conftest import (
    EVENT_TIMEOUT,
    SERVER_COMMAND,
    STARTUP_TIMEOUT,
    assert_no_traceback,
)

from trio_echo.cli.options import parse_args

REUSEPORT_MESSAGE = (
    "--workers needs SO_REUSEPORT, which this platform lacks (use --fd with one inherited "
    "socket, or run one process)"
)

# A sitecustomize that hides socket.SO_REUSEPORT, as on a platform without it.
# (Out of socket.__all__ too: trio copies every name listed there.)
NO_REUSEPORT_SITE = (
    'import socket\ndel socket.SO_REUSEPORT\nsocket.__all__.remove("SO_REUSEPORT")\n'
)

# How much later than grace + one drain period a stopped server may exit: the Python exit
# and the closing of the connections, not another drain period (which is at least 1 s).
SHUTDOWN_SLACK = 0.8

# The server of the -X dev test: two workers, loopback only.
DEV_ARGS = ("--port", "0", "--workers", "2", "--host", "127.0.0.1")


# ---- 9: no SO_REUSEPORT --------------------------------------------------------------------


def test_workers_without_reuseport_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--workers", "2", "--port", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert REUSEPORT_MESSAGE in err
    assert len(err.splitlines()) == 1


def test_workers_with_an_inherited_socket_need_no_reuseport(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = listener.fileno()
        config, _, _ = parse_args(["--workers", "2", "--fd", str(fd)])
    assert config.workers == 2
    assert config.fds == (fd,)


def test_one_worker_needs_no_reuseport(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    config, _, _ = parse_args(["--workers", "1", "--port", "0"])
    assert config.workers == 1


@pytest.fixture
def no_reuseport_env(tmp_path) -> dict[str, str]:
    """The environment of a program that runs where ``socket.SO_REUSEPORT`` does not exist."""
    (tmp_path / "sitecustomize.py").write_text(NO_REUSEPORT_SITE)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_workers_without_reuseport_is_one_line_end_to_end(no_reuseport_env):
    result = subprocess.run(
        [*SERVER_COMMAND, "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        env=no_reuseport_env,
        timeout=STARTUP_TIMEOUT,
    )
    assert result.returncode == 2
    assert result.stderr == f"trio-echo: error: {REUSEPORT_MESSAGE} (see --help)\n"
    assert result.stdout == ""


def test_workers_share_an_inherited_socket_without_reuseport(spawn, connect, no_reuseport_env):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd, port = listener.fileno(), listener.getsockname()[1]
        server = spawn(
            [*SERVER_COMMAND, "--workers", "2", "--fd", str(fd)],
            pass_fds=[fd],
            env=no_reuseport_env,
        )
    assert server.wait_listening().port == port
    client = connect(port)
    client.sendall(b"no reuseport\n")
    client.close()
    server.wait_stdout(b"] no reuseport\n")
    assert server.stop() == 0
    assert_no_traceback(server.all_stderr())


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
