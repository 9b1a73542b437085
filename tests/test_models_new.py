"""The lab's newer models, each in one quick pass: ``anyio-asyncio``, ``asyncio-protocol``,
``uvloop-protocol``, ``gevent``.

``test_models.py`` runs its whole set of shared behaviours on them too, under the ``stress``
marker (nox -s stress); here, in the default suite, is what matters most per model, each run
under ``python -X dev -W error`` so that a warning (an unclosed transport, a never-awaited
coroutine, gevent's own) fails the test: echo and text output, a SIGTERM while a client is
streaming (every line sent before it is printed, exit 0), a second signal, and a stalled stdout
that must slow the client down with the server's memory flat (anyio's asyncio backend read
ahead without bound before the fix: GiBs in seconds).
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import sys
import threading
import time

import conftest
import pytest
from conftest import (
    EVENT_TIMEOUT,
    assert_no_traceback,
    peer_name,
    recv_eof,
    recv_exactly,
    rss_bytes,
    run_command,
)

from trio_echo.models import MODELS

MiB = 1024 * 1024

NEW = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            MODELS[name].available() is not None, reason=str(MODELS[name].available())
        ),
    )
    for name in ["anyio-asyncio", "asyncio-protocol", "uvloop-protocol", "gevent"]
]


@pytest.fixture(params=NEW)
def model(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def serve(start_server, model, monkeypatch):
    """``serve(*args)``: the model under test, in Python's development mode, warnings errors."""
    monkeypatch.setattr(
        conftest,
        "SERVER_COMMAND",
        (sys.executable, "-X", "dev", "-W", "error", "-m", "trio_echo"),
    )

    def start(*args: str, **kwargs: object):
        return start_server("--model", model, *args, **kwargs)

    return start


def assert_clean(stderr: str) -> None:
    """No traceback, and no warning of any kind (``-W error`` would have made it fatal, but a
    warning raised where nobody catches it is only printed)."""
    assert_no_traceback(stderr)
    assert "Warning" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


def test_echo_and_text_output(serve, connect):
    server = serve("--echo")
    client = connect(server.port)
    # More than the socket buffers hold, so the echo has to wait for the client to read.
    payload = b"hello\r\n\x1b[2Jworld\n" + (b"x" * 16383 + b"\n") * 64
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    try:
        assert recv_exactly(client, len(payload)) == payload
    finally:
        sender.join(EVENT_TIMEOUT)
    peer = peer_name(client)
    client.close()
    server.wait_stderr(r"close #1 .*\(closed by client\)")
    assert server.stop() == 0
    lines = server.all_stdout().decode().splitlines()
    assert lines[:2] == [f"[{peer}] hello", f"[{peer}] \\x1b[2Jworld"]
    assert lines[2:] == [f"[{peer}] " + "x" * 16383] * 64
    assert_clean(server.all_stderr())


def _stream_numbered_lines(client: socket.socket, sent: list[int], stop: threading.Event) -> None:
    """Send ``line N`` after line, recording in ``sent[0]`` how many went out whole."""
    with contextlib.suppress(OSError):  # the server closes us at the end of the grace period
        while not stop.is_set():
            client.sendall(f"line {sent[0]}\n".encode())
            sent[0] += 1


def test_sigterm_mid_stream_prints_every_line_sent_before_it(serve, connect):
    server = serve("--grace", "0.3")
    client = connect(server.port)
    peer = peer_name(client)
    sent = [0]
    stop = threading.Event()
    streamer = threading.Thread(target=_stream_numbered_lines, args=(client, sent, stop))
    streamer.start()
    try:
        server.wait_stdout(f"[{peer}] line 1000\n".encode())
        before = sent[0]  # every one of these returned from sendall before the signal
        signalled = server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
        assert time.monotonic() - signalled < 0.3 + 2.0
    finally:
        stop.set()
        streamer.join(EVENT_TIMEOUT)
    lines = server.all_stdout().decode().splitlines()
    prefix = f"[{peer}] "
    assert all(line.startswith(prefix) for line in lines), lines[:3]
    texts = [line.removeprefix(prefix) for line in lines]
    whole = texts[:-1]  # the last one may be a line the close cut short: printed in part
    assert whole == [f"line {i}" for i in range(len(whole))], "a line lost or out of order"
    assert f"line {len(whole)}".startswith(texts[-1])
    printed = len(whole) + (texts[-1] == f"line {len(whole)}")
    assert printed >= before, f"{before} lines sent before the signal, {printed} printed"
    stderr = server.all_stderr()
    assert "SIGTERM: stopped accepting; waiting up to 0.3 s for 1 client" in stderr
    assert "(grace period over)" in stderr
    assert_clean(stderr)


def test_second_signal_forces_exit(serve, connect):
    server = serve("--grace", "10")
    client = connect(server.port)
    client.sendall(b"hello\n")
    server.wait_stdout(b"] hello\n")
    server.send_signal(signal.SIGTERM)
    server.wait_stderr(r"SIGTERM: stopped accepting")
    sent = server.send_signal(signal.SIGTERM)
    assert server.wait() == 143
    assert time.monotonic() - sent < 1.0
    assert recv_eof(client) == b""
    stderr = server.all_stderr()
    assert "SIGTERM again: closing every connection now" in stderr
    assert "forced exit: served 1 connection," in stderr
    assert_clean(stderr)


# The server's resident memory with stdout stalled: an interpreter, the model's imports, the
# output budget (8 MiB) and the socket buffers, with room to spare; a read-ahead without bound
# passes it within a second on loopback.
RSS_LIMIT = 150 * 1000 * 1000


def test_stalled_stdout_slows_the_client_and_keeps_memory_flat(serve, connect):
    server = serve("--raw", "--grace", "0", read_stdout=False)
    client = connect(server.port)
    client.setblocking(False)
    block = b"x" * 65536
    sent, max_rss = 0, 0
    deadline = time.monotonic() + 20
    # Send until the client cannot send any more for 0.5 s: the server stopped reading it.
    while select.select([], [client], [], 0.5)[1]:
        with contextlib.suppress(BlockingIOError):
            sent += client.send(block)
        max_rss = max(max_rss, rss_bytes(server.pid))
        assert sent < 256 * MiB, f"{sent} bytes accepted with nobody reading stdout"
        assert time.monotonic() < deadline
    max_rss = max(max_rss, rss_bytes(server.pid))
    assert max_rss < RSS_LIMIT, f"RSS {max_rss / MiB:.0f} MiB with stdout stalled"
    assert sent < 64 * MiB, f"{sent / MiB:.0f} MiB accepted with nobody reading stdout"
    server.proc.kill()


@pytest.mark.parametrize("name", ["anyio-asyncio", "uvloop-protocol", "gevent"])
def test_a_missing_package_is_one_line_naming_the_extra(name):
    # The package hidden as Python hides a module it knows to be absent (sys.modules[...] = None).
    requires = MODELS[name].requires
    hide = (
        f"import sys; sys.modules[{requires!r}] = None; from trio_echo.cli.main import main; "
        f"sys.exit(main(['--model', {name!r}, '--port', '0']))"
    )
    result = run_command([sys.executable, "-c", hide])
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"trio-echo: error: --model {name} is not available: {requires} is not installed "
        "(pip install 'trio-echo[bench]') (see --help)"
    )
    assert_no_traceback(result.stderr)
