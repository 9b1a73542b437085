"""End-to-end tests of the lab's concurrency models: ``--model trio|sync|threads|asyncio|...``.

Every model must behave like the trio one wherever it can: the same output, the same start-up
and shutdown lines, the same exit statuses, never a traceback.  The tests that apply to every
model run on all of them, trio included.  Then what sets them apart: ``sync`` serves one client
at a time, the others serve clients concurrently; a model refuses the flags it cannot honour.
The helpers live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from conftest import (
    EVENT_TIMEOUT,
    FAMILIES,
    LOOPBACKS,
    assert_no_traceback,
    assert_refused,
    peer_name,
    read_line,
    recv_eof,
    recv_exactly,
    run_cli,
)

from trio_echo.cli.options import parse_args
from trio_echo.models import MODELS
from trio_echo.net.bind import BACKLOG

UVLOOP = pytest.param(
    "uvloop",
    marks=pytest.mark.skipif(
        importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
    ),
)
ANYIO = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec("anyio") is None, reason="anyio is not installed"
        ),
    )
    for name in ["anyio-trio"]
]
# The newer models: tests/test_models_new.py checks the essentials of each in the default suite;
# this whole file runs on them in the stress suite (it costs ~10 s a model).
NEWER = [
    pytest.param(
        name,
        marks=[
            pytest.mark.stress,
            pytest.mark.skipif(
                MODELS[name].available() is not None, reason=str(MODELS[name].available())
            ),
        ],
    )
    for name in ["anyio-asyncio", "asyncio-protocol", "uvloop-protocol", "gevent"]
]
CONCURRENT = ["trio-stock", "threads", "asyncio", "asyncio-sock", UVLOOP, *ANYIO, *NEWER]
# trio is the reference: every test that applies to it runs on it too, and is its only test of
# that behaviour (test_e2e.py keeps what is trio's alone and the deeper tests), which shows that
# what they check is the behaviour, not one model's quirks.
ALL = ["trio", "sync", *CONCURRENT]
# The models that serve clients at once: all but sync.
AT_ONCE = ["trio", *CONCURRENT]


@pytest.fixture(params=ALL)
def model(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def serve(start_server, model):
    """``serve(*args)``: ``start_server("--model", model, *args)`` for the model under test."""

    def start(*args: str, **kwargs: object):
        return start_server("--model", model, *args, **kwargs)

    return start


# ---- output ----------------------------------------------------------------------------------


def test_text_output_names_each_client_and_escapes_control_characters(serve, model, connect):
    server = serve()
    # sync serves one client at a time: v6 waits in the listen backlog until v4 has gone.
    v4 = connect(server.port, socket.AF_INET)
    v6 = connect(server.port, socket.AF_INET6)
    p4, p6 = peer_name(v4), peer_name(v6)
    assert p6.startswith("[::1]:")

    v4.sendall(b"hello from v4\n")
    v6.sendall(b"hello from v6\r\nsecond ")
    v6.sendall(b"line\n")
    # Clear the screen, set the window title, ring the bell, colour: all must come out inert.
    v4.sendall(b"\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m\n")
    v4.sendall(b"hello\r\n\x1b[2J\x1b]0;pwned\x07 caf\xc3\xa9 \xff back\\slash\nno newline")
    expected = [
        f"[{p4}] hello from v4",
        f"[{p6}] hello from v6",
        f"[{p6}] second line",
        f"[{p4}] \\x1b[2J\\x1b]0;pwned\\a\\x1b[31mred\\x1b[0m",
        f"[{p4}] hello",
        f"[{p4}] \\x1b[2J\\x1b]0;pwned\\a café \\xff back\\\\slash",
        f"[{p4}] no newline",
    ]

    def printed(lines: list[str]):
        return lambda out: all(f"{line}\n".encode() in out for line in lines)

    if model != "sync":
        # Both clients served at once: every whole line is out while both are connected.
        server.wait_stdout(printed(expected[:-1]))
    v4.close()  # its unfinished last line is printed now
    server.wait_stdout(printed(expected))
    v6.close()
    assert server.stop() == 0

    out = server.all_stdout()
    assert b"\x1b" not in out
    assert b"\x07" not in out
    lines = out.decode().splitlines()
    assert sorted(lines) == sorted(expected)
    # Each client's lines in the order it sent them.
    assert [line for line in lines if line.startswith(f"[{p4}]")] == [expected[0], *expected[3:]]
    assert [line for line in lines if line.startswith(f"[{p6}]")] == expected[1:3]
    assert_no_traceback(server.all_stderr())


def test_echo_sends_every_byte_back_and_still_prints(serve, connect):
    server = serve("--echo")
    assert "(echo and print, text)" in server.stderr
    client = connect(server.port)
    # Several MiB, more than the socket buffers hold: a client that only sent would deadlock
    # with the server blocked echoing to it, so send from a thread while this one receives.
    payload = bytes(range(256)) * (16 * 1024) + b"\nlast line\n"
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    try:
        assert recv_exactly(client, len(payload)) == payload
    finally:
        sender.join(EVENT_TIMEOUT)
    server.wait_stdout(f"[{peer_name(client)}] last line\n".encode())


@pytest.mark.parametrize(
    ("echo", "mode"),
    [
        pytest.param(False, "(print, quiet)", id="print"),
        pytest.param(True, "(echo, quiet)", id="echo"),
    ],
)
def test_quiet_prints_nothing_but_logs_connections(serve, connect, echo, mode):
    server = serve("--quiet", *(["--echo"] if echo else []))
    assert mode in server.stderr
    client = connect(server.port)
    peer = peer_name(client)
    payload = b"secret\nmore secret\n"
    client.sendall(payload)
    if echo:
        assert recv_exactly(client, len(payload)) == payload
    client.close()
    server.wait_stderr(rf"close #1 {re.escape(peer)}: 19 bytes in .* \(closed by client\)")
    assert server.stop() == 0
    assert server.all_stdout() == b""
    stderr = server.all_stderr()
    assert f"open #1 {peer}" in stderr
    assert "secret" not in stderr


def test_raw_writes_the_bytes_exactly(serve, connect):
    server = serve("--raw")
    client = connect(server.port)
    # Every byte value, CRLF, invalid UTF-8, an escape sequence, and no final newline.
    payload = b"line one\r\n" + bytes(range(256)) + b"\xff\xfe\x1b[31m\n" + b"no newline at the end"
    client.sendall(payload)
    client.close()
    server.wait_stderr(r"close #1 .*\(closed by client\)")
    assert server.stop() == 0
    assert server.all_stdout() == payload


def test_jsonl_gives_open_data_and_close_events(serve, connect):
    server = serve("--format", "jsonl")
    client = connect(server.port, socket.AF_INET6)
    peer = peer_name(client)
    payload = b"one\ntwo\r\n\xffbad\ntail"
    client.sendall(payload)
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0

    events = [json.loads(line) for line in server.all_stdout().splitlines()]
    assert [e["event"] for e in events] == ["open", "data", "data", "data", "data", "close"]
    assert all(e["conn"] == 1 and e["peer"] == peer and e["time"] for e in events)
    assert [(e["data"], e["eol"]) for e in events[1:5]] == [
        ("one", "\n"),
        ("two", "\r\n"),
        ("\ufffdbad", "\n"),
        ("tail", ""),
    ]
    assert events[3]["data_b64"] == "/2JhZA=="  # b"\xffbad", exactly
    assert events[-1]["bytes"] == len(payload)
    assert events[-1]["reason"] == "closed by client"


# ---- shutdown --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_an_idle_server_at_once(serve, connect, signum):
    server = serve()
    client = connect(server.port)
    client.sendall(b"hello\n")
    client.close()
    server.wait_stderr(r"close #1 ")

    sent = server.send_signal(signum)
    assert server.wait() == 0
    assert time.monotonic() - sent < 1.0
    stderr = server.all_stderr()
    assert f"{signal.Signals(signum).name}: stopped accepting" in stderr
    assert re.search(r"NOTICE stopped: served 1 connection, 6 bytes received", stderr), stderr
    assert_no_traceback(stderr)


def test_grace_period_serves_connected_client_then_closes_it(serve, connect):
    server = serve("--grace", "1")
    client = connect(server.port)
    peer = peer_name(client)
    client.sendall(b"before the signal\n")
    server.wait_stdout(f"[{peer}] before the signal\n".encode())

    sent = server.send_signal(signal.SIGTERM)
    server.wait_stderr(r"SIGTERM: stopped accepting; waiting up to 1 s for 1 client \(")
    for family in FAMILIES:
        assert_refused(server.port, family)
    client.sendall(b"during the grace period\n")
    server.wait_stdout(f"[{peer}] during the grace period\n".encode())
    client.sendall(b"a partial line")  # no newline: still printed when the client is closed

    assert recv_eof(client) == b""
    closed_after = time.monotonic() - sent
    assert 0.9 <= closed_after < 2.0, f"closed {closed_after:.3f} s after the signal"
    assert server.wait() == 0
    assert server.all_stdout().decode().splitlines() == [
        f"[{peer}] before the signal",
        f"[{peer}] during the grace period",
        f"[{peer}] a partial line",
    ]
    stderr = server.all_stderr()
    assert re.search(rf"close #1 {re.escape(peer)}: .*\(grace period over\)", stderr), stderr
    assert "open #2" not in stderr
    assert "stopped: served 1 connection," in stderr
    assert_no_traceback(stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_grace_period_refuses_new_clients_and_ends_when_the_last_one_leaves(serve, connect, signum):
    name = signal.Signals(signum).name
    server = serve("--grace", "5")
    client = connect(server.port)
    peer = peer_name(client)
    client.sendall(b"before the signal\n")
    server.wait_stdout(f"[{peer}] before the signal\n".encode())

    sent = server.send_signal(signum)
    server.wait_stderr(rf"{name}: stopped accepting; waiting up to 5 s for 1 client \(")
    for family in FAMILIES:
        assert_refused(server.port, family)

    client.sendall(b"during the grace period\n")
    server.wait_stdout(f"[{peer}] during the grace period\n".encode())
    assert server.proc.poll() is None, "the server left before its client did"
    assert "open #2" not in server.stderr, "a connection was accepted after the signal"

    client.close()
    assert server.wait() == 0
    assert time.monotonic() - sent < 3.0, "the server waited for the grace period to end"
    stderr = server.all_stderr()
    assert re.search(rf"close #1 {re.escape(peer)}: .*\(closed by client\)", stderr), stderr
    assert "stopped: served 1 connection," in stderr
    assert_no_traceback(stderr)


@pytest.mark.parametrize(
    ("signum", "status"),
    [
        pytest.param(signal.SIGINT, 130, id="SIGINT-130"),
        pytest.param(signal.SIGTERM, 143, id="SIGTERM-143"),
    ],
)
def test_second_signal_forces_exit(serve, connect, signum, status):
    name = signal.Signals(signum).name
    server = serve("--grace", "5")
    client = connect(server.port)
    client.sendall(b"hello\n")
    server.wait_stdout(b"] hello\n")

    server.send_signal(signum)
    # Trio coalesces a signal that arrives twice before it is handled: wait for the first.
    server.wait_stderr(rf"{name}: stopped accepting")
    sent = server.send_signal(signum)
    assert server.wait() == status
    assert time.monotonic() - sent < 1.0
    assert recv_eof(client) == b""
    stderr = server.all_stderr()
    assert f"{name} again: closing every connection now" in stderr
    assert "forced exit: served 1 connection," in stderr
    assert_no_traceback(stderr)


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "args"),
    [
        pytest.param(socket.AF_INET, ["--host", "127.0.0.1"], id="ipv4-only"),
        # The default hosts: 127.0.0.1 binds, then ::1 fails, and must be closed again; the
        # error must name ::1.
        pytest.param(socket.AF_INET6, [], id="default-hosts-ipv6-taken"),
    ],
)
def test_port_in_use_is_one_line_and_status_1(model, family, args):
    host = LOOPBACKS[family]
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.bind((host, 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("--model", model, *args, "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"trio-echo: error: cannot listen on {host} port {port}:")
    assert "address already in use" in lines[0]


def test_listen_backlog_is_as_deep_as_the_kernel_allows(serve):
    # A shallow backlog (asyncio.start_server re-listens with 100 unless told) makes a burst
    # of clients wait for SYN retransmissions.  ss shows a listener's backlog as its Send-Q.
    if shutil.which("ss") is None:
        pytest.skip("no ss to read the listen backlog")
    server = serve()
    result = subprocess.run(
        ["ss", "-Hltn", f"sport = :{server.port}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=EVENT_TIMEOUT,
    )
    backlogs = [int(row.split()[2]) for row in result.stdout.splitlines()]
    with open("/proc/sys/net/core/somaxconn") as f:
        expected = min(int(f.read()), BACKLOG)
    assert backlogs == [expected, expected], result.stdout


def test_closed_stdout_stops_the_server_with_one_line(serve, connect):
    server = serve(read_stdout=False)
    assert server.proc.stdout is not None
    client = connect(server.port)
    client.sendall(b"first line\n")
    assert read_line(server.proc.stdout.fileno()).startswith(b"[127.0.0.1:")
    server.proc.stdout.close()  # like `| head -1`
    deadline = time.monotonic() + 3.0
    while server.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the server is going away: that is the point
            client.sendall(b"nobody reads this line\n")
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=0.02)
    assert server.proc.poll() is not None, "the server kept running with nobody reading stdout"
    assert server.proc.returncode == 1
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    mentions = [line for line in stderr.splitlines() if "broken pipe" in line]
    assert mentions == ["trio-echo: error: stdout was closed by its reader (broken pipe)"]
    assert stderr.splitlines()[-1] == mentions[0]


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        (name, flag)
        for name, model in MODELS.items()
        for flag in sorted(model.unsupported)
        if model.available() is None
    ],
)
def test_unsupported_flag_is_a_usage_error(name, flag, capsys):
    # In-process: the refusal is parse_args' (a process each would cost ~10 s for them all);
    # the test below checks one flag per model through the real command.
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", name, flag, "2"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"trio-echo: error: --model {name} does not support {flag} (see --help)"
    )


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        (name, sorted(model.unsupported)[0])
        for name, model in MODELS.items()
        if model.unsupported and model.available() is None
    ],
)
def test_unsupported_flag_is_one_line_and_status_2(name, flag):
    result = run_cli("--model", name, flag, "2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"trio-echo: error: --model {name} does not support {flag} (see --help)"
    ]


def test_unsupported_flag_is_refused_even_abbreviated():
    result = run_cli("--model", "sync", "--max-conn", "2")
    assert result.returncode == 2, result.stderr
    assert "--model sync does not support --max-connections" in result.stderr


def test_help_lists_every_model():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in MODELS:
        assert name in result.stdout


# ---- what sets the models apart --------------------------------------------------------------


MAX_1 = ["--max-connections", "1"]


@pytest.mark.parametrize(
    ("name", "args", "second_family"),
    [
        pytest.param("sync", [], socket.AF_INET6, id="sync"),
        pytest.param("trio", MAX_1, socket.AF_INET, id="trio-max-connections-1-same-listener"),
        # The other listener's accept loop may take the client, but must not serve it yet.
        pytest.param("trio", MAX_1, socket.AF_INET6, id="trio-max-connections-1-other-listener"),
        pytest.param("threads", MAX_1, socket.AF_INET6, id="threads-max-connections-1"),
        pytest.param("asyncio-sock", MAX_1, socket.AF_INET6, id="asyncio-sock-max-connections-1"),
        # Its two StreamServers share one Pool: a full pool stops both.
        pytest.param(
            "gevent",
            MAX_1,
            socket.AF_INET6,
            id="gevent-max-connections-1",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("gevent") is None, reason="gevent is not installed"
            ),
        ),
    ],
)
def test_one_client_at_a_time(start_server, connect, name, args, second_family):
    server = start_server("--model", name, *args)
    first = connect(server.port)
    first.sendall(b"first 1\n")
    server.wait_stdout(f"[{peer_name(first)}] first 1\n".encode())

    second = connect(server.port, second_family)  # succeeds: it waits in the listen backlog
    second_peer = peer_name(second)
    second.sendall(b"second 1\n")
    # The first client still gets through; by then the second's line would long be out.
    first.sendall(b"first 2\n")
    server.wait_stdout(f"[{peer_name(first)}] first 2\n".encode())
    # A negative check needs some time: wait 0.3 s for the line that must not come.
    with pytest.raises(AssertionError, match=r"not found before 0\.3 s"):
        server.wait_stdout(b"second 1", timeout=0.3)
    assert "open #2" not in server.stderr

    first.close()
    server.wait_stdout(f"[{second_peer}] second 1\n".encode())
    # stderr is another pipe, read by another thread: wait for it to catch up.
    server.wait_stderr(rf"open #2 {re.escape(second_peer)}$")
    stderr = server.stderr
    assert stderr.index("close #1 ") < stderr.index(f"open #2 {second_peer}")


@pytest.mark.parametrize("model", CONCURRENT, indirect=True)
def test_clients_are_served_concurrently(serve, connect):
    server = serve()
    a = connect(server.port)
    b = connect(server.port, socket.AF_INET6)
    pa, pb = peer_name(a), peer_name(b)
    for client, peer, line in [(a, pa, "a1"), (b, pb, "b1"), (a, pa, "a2"), (b, pb, "b2")]:
        client.sendall(f"{line}\n".encode())
        server.wait_stdout(f"[{peer}] {line}\n".encode())
    a.close()
    b.close()
    assert server.stop() == 0
    assert server.all_stdout().decode().splitlines() == [
        f"[{pa}] a1",
        f"[{pb}] b1",
        f"[{pa}] a2",
        f"[{pb}] b2",
    ]


@pytest.mark.parametrize("model", AT_ONCE, indirect=True)
def test_idle_timeout_closes_silent_clients_only(serve, connect):
    server = serve("--idle-timeout", "0.5")
    silent = connect(server.port)
    chatty = connect(server.port, socket.AF_INET6)
    silent_peer, chatty_peer = peer_name(silent), peer_name(chatty)
    started = time.monotonic()

    # The chatty client speaks every 0.2 s for twice the timeout, and keeps its connection;
    # meanwhile the silent one is cut off after about 0.5 s.
    for i in range(6):
        # Pacing, not synchronisation: the client has to stay quiet for a while.
        time.sleep(max(started + 0.2 * i - time.monotonic(), 0))
        chatty.sendall(f"tick {i}\n".encode())
        last_tick = time.monotonic()
        server.wait_stdout(f"[{chatty_peer}] tick {i}\n".encode())
    chatty.settimeout(0.05)
    with pytest.raises(TimeoutError):
        chatty.recv(1)  # still open: no EOF
    assert f"{chatty_peer}: " not in server.stderr

    assert recv_eof(silent) == b""
    server.wait_stderr(
        rf"close #\d+ {re.escape(silent_peer)}: 0 bytes in 0\.[4-9]\d* s \(idle for 0\.5 s\)"
    )

    # Once the chatty client falls silent too, the timer (restarted by every receive) runs out.
    assert recv_eof(chatty) == b""
    silent_for = time.monotonic() - last_tick
    assert 0.4 <= silent_for < 1.5, f"closed {silent_for:.3f} s after its last line"
    server.wait_stderr(rf"close #\d+ {re.escape(chatty_peer)}: 42 bytes .* \(idle for 0\.5 s\)")


@pytest.mark.parametrize("model", ["sync"], indirect=True)
def test_idle_timeout_closes_a_silent_client_one_at_a_time(serve, connect):
    # sync serves one client at a time, so the test above (two clients at once) cannot apply.
    server = serve("--idle-timeout", "0.5")
    client = connect(server.port)
    client.sendall(b"one line\n")
    sent = time.monotonic()
    assert recv_eof(client) == b""
    assert 0.4 <= time.monotonic() - sent < 1.5
    server.wait_stderr(r"close #1 .*: 9 bytes in .* \(idle for 0\.5 s\)")


# Not sync: by design a stalled stdout blocks that whole server until it moves.
@pytest.mark.parametrize("model", AT_ONCE, indirect=True)
def test_stalled_stdout_does_not_keep_a_stopped_server_alive(serve, model, connect):
    # Nobody reads stdout: the client stalls (backpressure), then SIGTERM.  The client is closed
    # after the grace period; stdout then gets the grace period (at least 1 s) to take the rest,
    # and the server gives up with one line and status 1 instead of hanging forever.  (The trio
    # model's splicing holds the client back without taking its bytes first, so nothing is
    # left to drain: tests/test_splice.py; here its copy path, without accelerators.)
    copy_path = ("--no-accelerator",) if model == "trio" else ()
    server = serve("--raw", "--grace", "0.5", *copy_path, read_stdout=False)
    client = connect(server.port)
    client.setblocking(False)
    block = b"x" * 65536
    while select.select([], [client], [], 0.5)[1]:  # until the client cannot send any more
        with contextlib.suppress(BlockingIOError):
            client.send(block)
    signalled = server.send_signal(signal.SIGTERM)
    server.wait(timeout=0.5 + 1.0 + EVENT_TIMEOUT)
    elapsed = time.monotonic() - signalled
    assert server.proc.returncode == 1
    assert 1.4 < elapsed < 0.5 + 1.0 + 2.0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert stderr.splitlines()[-1].startswith(
        "trio-echo: error: stdout did not take the last output within 1 s"
    )
