"""Zero-copy raw output (``trio_echo.output.splice``): exact bytes, the queue's order and its
backpressure kept, the copy path wherever splicing does not apply.

Unit tests drive a :class:`LeanSocketStream`'s ``splice_some`` over a TCP pair into a pipe;
end-to-end tests stream two clients at once through ``python -m trio_echo --raw`` into a pipe
(spliced) and into a file (copied) and check every client's bytes, in order, and the server's
count.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import EVENT_TIMEOUT, assert_no_traceback

from trio_echo.output.queue import OutputQueue
from trio_echo.output.splice import Splicer, open_splicer
from trio_echo.server import hub
from trio_echo.server.stream import LeanSocketStream

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice is Linux's")

KiB = 1024


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        server, _ = listening.accept()
    return client, server


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        os.close(fd)


@pytest.fixture(params=["hub", "trio"])
async def readiness(
    request: pytest.FixtureRequest, nursery: trio.Nursery
) -> AsyncIterator[hub.ReadinessHub | None]:
    if request.param == "trio":
        yield None
        return
    if not hub.AVAILABLE:
        pytest.skip("no epoll on this platform")
    readiness = hub.ReadinessHub()
    nursery.start_soon(readiness.run)
    yield readiness


def _read_all(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_splicer_only_where_it_applies(tmp_path: Path, pipe: tuple[int, int]) -> None:
    """A pipe: yes; a regular file (measured slower spliced), /dev/null and a socket: the copy
    path."""
    queue = OutputQueue()
    assert open_splicer(pipe[1], queue) is not None
    with open(tmp_path / "out", "wb") as plain:
        assert open_splicer(plain.fileno(), queue) is None
    with open(os.devnull, "wb") as null:
        assert open_splicer(null.fileno(), queue) is None
    a, b = socket.socketpair()
    with a, b:
        assert open_splicer(a.fileno(), queue) is None


async def test_splice_into_a_pipe_exact_and_counted(
    pipe: tuple[int, int], readiness: hub.ReadinessHub | None
) -> None:
    client, server = _tcp_pair()
    stream = LeanSocketStream(server, readiness)
    queue = OutputQueue()
    splicer = Splicer(pipe[1], queue)
    payload = os.urandom(48 * KiB)
    with client, contextlib.closing(stream):
        client.sendall(payload)
        moved = 0
        while moved < len(payload):
            got = await stream.splice_some(splicer, 64 * KiB)
            assert type(got) is int, "the queue is idle and the pipe has room: spliced"
            moved += got
        assert _read_all(pipe[0], len(payload)) == payload
        assert queue.written == len(payload)
        client.shutdown(socket.SHUT_WR)
        assert await stream.splice_some(splicer, 64 * KiB) == b""


async def test_a_busy_queue_gets_the_bytes_behind_what_it_holds(
    pipe: tuple[int, int], readiness: hub.ReadinessHub | None
) -> None:
    """While the queue holds output, the bytes come back to be queued behind it (the order)."""
    client, server = _tcp_pair()
    stream = LeanSocketStream(server, readiness)
    queue = OutputQueue()
    splicer = Splicer(pipe[1], queue)
    with client, contextlib.closing(stream):
        queue.put_nowait(b"queued first\n")
        client.sendall(b"after it")
        assert await stream.splice_some(splicer, 64 * KiB) == b"after it"
        assert queue.written == 0


async def test_a_full_stdout_holds_the_client_back(
    pipe: tuple[int, int], readiness: hub.ReadinessHub | None
) -> None:
    """stdout (the pipe) full: nothing is read from the client until it can take more, then
    the bytes are spliced after what filled it."""
    client, server = _tcp_pair()
    stream = LeanSocketStream(server, readiness)
    queue = OutputQueue()
    splicer = Splicer(pipe[1], queue)
    os.set_blocking(pipe[1], False)
    filled = 0
    try:
        while True:
            filled += os.write(pipe[1], b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(pipe[1], True)
    got: list[int | bytes] = []
    with client, contextlib.closing(stream), trio.fail_after(10):
        client.sendall(b"waiting")
        async with trio.open_nursery() as nursery:

            async def splice() -> None:
                got.append(await stream.splice_some(splicer, 64 * KiB))

            nursery.start_soon(splice)
            await trio.testing.wait_all_tasks_blocked()
            assert not got, "nothing can go while stdout is full"
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)  # still connected
            await trio.to_thread.run_sync(_read_all, pipe[0], filled)
        assert got == [len(b"waiting")]
        assert _read_all(pipe[0], len(b"waiting")) == b"waiting"


# ---- end to end --------------------------------------------------------------------------

CLIENT_BYTES = 8 * 1024 * KiB


def _pattern(alphabet: bytes, size: int) -> bytes:
    """A client's stream: its own letters, in a sequence whose order is checkable."""
    return bytes(alphabet[(i * 7 + i // 26) % 26] for i in range(4096)) * (size // 4096)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pipe", "file", "file --no-accelerator"])
def test_two_raw_clients_exact_bytes(tmp_path: Path, target: str) -> None:
    """Two clients stream at once into stdout (a pipe; a file, written through from the event
    loop or by the worker thread): each one's bytes arrive whole and in order, and the summary
    counts them all."""
    out_path = tmp_path / "out"
    flags = target.split()[1:]
    with open(out_path, "wb") as out_file:
        stdout = subprocess.PIPE if target == "pipe" else out_file
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trio_echo",
                "--raw",
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                *flags,
            ],
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
    try:
        assert proc.stderr is not None
        line = b""
        while b"listening on" not in line:
            line = proc.stderr.readline()
            assert line, "the server exited before listening"
        port = int(line.rsplit(b":", 1)[1].split()[0])
        collected = bytearray()
        reader = None
        if target == "pipe":
            assert proc.stdout is not None
            out = proc.stdout

            def drain() -> None:
                while chunk := out.read1(1 << 20):
                    collected.extend(chunk)

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
        payloads = [
            _pattern(b"abcdefghijklmnopqrstuvwxyz", CLIENT_BYTES),
            _pattern(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", CLIENT_BYTES),
        ]

        def send(payload: bytes) -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(30)
                assert sock.recv(1) == b""  # the server closed: it read everything

        senders = [threading.Thread(target=send, args=(p,)) for p in payloads]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(60)
            assert not thread.is_alive()
        proc.terminate()
        proc.wait(timeout=30)
        err = proc.stderr.read()
        if reader is not None:
            reader.join(30)
        assert proc.returncode == 0, err
        data = bytes(collected) if target == "pipe" else out_path.read_bytes()
        assert len(data) == 2 * CLIENT_BYTES
        upper, lower = bytes(range(0x41, 0x5B)), bytes(range(0x61, 0x7B))
        assert data.translate(None, upper) == payloads[0]
        assert data.translate(None, lower) == payloads[1]
        assert f"{2 * CLIENT_BYTES} bytes received".encode() in err
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.__exit__(None, None, None)  # waits, closes our ends of its pipes


def test_a_stalled_stdout_holds_the_client_and_shutdown_is_graceful(start_server, connect):
    """Nobody reads stdout: the client stalls with nothing taken beyond what the pipe holds
    (the server reads no more than stdout takes), SIGTERM closes it after the grace period,
    and the server exits 0 at once: nothing accepted is left to drain."""
    server = start_server("--raw", "--grace", "0.5", read_stdout=False)
    client = connect(server.port)
    client.setblocking(False)
    block = b"x" * 65536
    sent = 0
    while select.select([], [client], [], 0.5)[1]:  # until the client cannot send any more
        with contextlib.suppress(BlockingIOError):
            sent += client.send(block)
    signalled = server.send_signal(signal.SIGTERM)
    server.wait(timeout=0.5 + EVENT_TIMEOUT)
    elapsed = time.monotonic() - signalled
    assert server.proc.returncode == 0
    assert elapsed < 0.5 + 1.0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    # What the server counted is what the pipe took: read it all.
    assert server.proc.stdout is not None
    printed = len(server.proc.stdout.read())
    match = re.search(r"served 1 connection, (\d+) bytes received", stderr)
    assert match, stderr
    assert int(match[1]) == printed
    assert 0 < printed < sent
