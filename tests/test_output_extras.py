"""End to end: ``--format hex``, ``--timestamps``, ``--output FILE`` with its SIGHUP reopen, and
what every signal does (README, "Signals").  Real ``python -m trio_echo`` processes, real
loopback clients, the helpers of ``conftest.py``."""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    EVENT_TIMEOUT,
    SERVER_COMMAND,
    STARTUP_TIMEOUT,
    assert_no_traceback,
    peer_name,
    recv_exactly,
    run_cli,
)

from trio_echo.cli.options import parse_args
from trio_echo.models import MODELS
from trio_echo.output.stamps import Timestamps

HEXDUMP = shutil.which("hexdump")
UTC_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z $")
RELATIVE_RE = re.compile(r"^\+(\d+)\.(\d{6}) $")


def split_stamp(line: str, peer: str) -> tuple[str, str]:
    """``(stamp with its space, the rest from the peer on)`` of a stamped line."""
    at = line.index(f"[{peer}]")
    return line[:at], line[at:]


def utc_seconds(stamp: str) -> float:
    match = UTC_RE.match(stamp)
    assert match, f"not an ISO 8601 UTC stamp with microseconds: {stamp!r}"
    *when, micro = (int(part) for part in match.groups())
    return calendar.timegm((*when, 0, 0, 0)) + micro / 1e6


def relative_seconds(stamp: str) -> float:
    match = RELATIVE_RE.match(stamp)
    assert match, f"not a relative stamp: {stamp!r}"
    return int(match[1]) + int(match[2]) / 1e6


def wait_until(predicate, what: str, timeout: float = EVENT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.005)


# ---- --format hex ----------------------------------------------------------------------------


def test_hex_prints_each_read_at_once_in_its_columns_and_echo_changes_nothing(
    start_server, connect
):
    server = start_server("--format", "hex", "--echo")
    client = connect(server.port)
    peer = peer_name(client)
    first, second = b"\x00\x01LOGIN", b" admin\r\n\xff\xfe\x7f binary tail, 2 rows"
    client.sendall(first)
    # Each part comes back before the next goes: the server read it on its own.
    assert recv_exactly(client, len(first)) == first
    server.wait_stdout(f"[{peer}] 00000000  00 01 4c 4f 47 49 4e ".encode())
    client.sendall(second)
    assert recv_exactly(client, len(second)) == second
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0
    lines = server.all_stdout().decode().splitlines()
    assert [line.removeprefix(f"[{peer}] ") for line in lines] == [
        "00000000  00 01 4c 4f 47 49 4e                              |..LOGIN|",
        "00000000                       20  61 64 6d 69 6e 0d 0a ff  |        admin...|",
        "00000010  fe 7f 20 62 69 6e 61 72  79 20 74 61 69 6c 2c 20  |.. binary tail, |",
        "00000020  32 20 72 6f 77 73                                 |2 rows|",
        "00000026",
    ]
    assert all(line.startswith(f"[{peer}] ") for line in lines)
    if HEXDUMP is not None:
        # The same bytes through the real hexdump: the rows that share an offset, merged.
        expected = subprocess.run(
            [HEXDUMP, "-Cv"], input=first + second, capture_output=True, check=True, timeout=10
        ).stdout.decode()
        assert expected.splitlines()[0] == (
            "00000000  00 01 4c 4f 47 49 4e 20  61 64 6d 69 6e 0d 0a ff  |..LOGIN admin...|"
        ), "the two rows at 00000000 merged"
        assert [line[len(peer) + 3 :] for line in lines[2:]] == expected.splitlines()[1:]


# ---- --timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "parse", "rows"),
    [
        pytest.param(["--timestamps"], utc_seconds, 1, id="utc-text"),
        pytest.param(
            ["--timestamps=relative", "--format", "hex"], relative_seconds, 2, id="rel-hex"
        ),
    ],
)
def test_every_line_starts_with_its_receive_time(start_server, connect, args, parse, rows):
    started = time.time()
    server = start_server(*args)
    client = connect(server.port)
    peer = peer_name(client)
    for n in range(3):
        client.sendall(b"line %d: 24 bytes a line\n" % n)  # 1.5 rows: reads end mid-row
        # A line, or two rows of 16 bytes, for each read.
        server.wait_stdout(lambda out, n=n: out.count(b"\n") >= rows * (n + 1))
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0
    lines = server.all_stdout().decode().splitlines()
    assert len(lines) == 3 * rows + (rows - 1)  # hex ends with the length row
    times = []
    for line in lines:
        stamp, rest = split_stamp(line, peer)
        assert rest.startswith(f"[{peer}] ")
        times.append(parse(stamp))
    assert times == sorted(times), "the times of one connection never go back"
    if parse is utc_seconds:
        assert started - 1 <= times[0] <= times[-1] <= time.time() + 1
    else:
        assert 0 < times[0] <= times[-1] < time.time() - started + 1


def test_the_time_is_when_the_bytes_came_not_when_they_were_printed(start_server, connect):
    # Nobody reads stdout for a while: 1 MiB of lines fills the pipe and waits in the queue
    # (under its 8 MiB, so the server still reads its client), then a marker line is received.
    # It is printed only once the test reads stdout, half a second later; its time must be the
    # moment it arrived.
    server = start_server("--timestamps", read_stdout=False)
    assert server.proc.stdout is not None
    client = connect(server.port)
    client.sendall((b"y" * 63 + b"\n") * 16384)
    sent = time.time()
    client.sendall(b"the marker\n")
    server.wait_stderr(r"open #1 ")
    time.sleep(0.5)  # not a synchronisation: the delay between arrival and printing
    reading = time.time()
    client.close()
    server.wait_stderr(r"close #1 ")
    server.send_signal(signal.SIGTERM)
    out = server.proc.stdout.read()
    assert server.wait() == 0
    marker = next(line for line in out.decode().splitlines() if line.endswith("the marker"))
    stamp = utc_seconds(marker.split(" ", 1)[0] + " ")
    assert sent - 0.05 <= stamp < reading - 0.25, (sent, stamp, reading)


# ---- --output FILE and SIGHUP ------------------------------------------------------------------


class Sender:
    """A client thread that sends numbered lines until told to stop; ``sent`` is everything."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            chunk = b"".join(b"line %08d\n" % i for i in range(n, n + 50))
            n += 50
            self.sock.sendall(chunk)
            self.sent += chunk
            time.sleep(0.001)  # a steady stream, not a flood

    def finish(self) -> bytes:
        self.stop.set()
        self.thread.join(EVENT_TIMEOUT)
        assert not self.thread.is_alive()
        return bytes(self.sent)


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --workers 2 (the supervisor writes the file) in the stress suite: it costs a second more.
@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.stress)])
def test_sighup_reopens_the_output_file_and_every_byte_lands_once(
    start_server, connect, tmp_path, workers
):
    out, rotated = tmp_path / "out.log", tmp_path / "out.log.1"
    out.write_bytes(b"from before\n")  # appended to, never truncated
    server = start_server("--raw", "--output", str(out), "--workers", workers)
    client = connect(server.port)
    sender = Sender(client)
    wait_until(lambda: size(out) > 4096, "output in the file")
    os.rename(out, rotated)  # what logrotate does, then its postrotate: kill -HUP
    wait_until(lambda: size(rotated) > size(out) + 8192, "more output in the moved file")
    if workers == "2":
        # `pkill -HUP trio-echo` reaches the workers too: they leave the file to the supervisor.
        pids = [int(pid) for pid in re.findall(r"worker \d \(pid (\d+)\)", server.stderr)]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGHUP)
    server.send_signal(signal.SIGHUP)
    server.wait_stderr(r"INFO SIGHUP: reopened ")
    wait_until(lambda: size(out) > 4096, "output in the new file")
    sent = sender.finish()
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0
    old, new = rotated.read_bytes(), out.read_bytes()
    assert old.startswith(b"from before\n")
    assert old[len(b"from before\n") :] + new == sent, "a byte lost or written twice"
    assert new, "nothing went to the reopened file"
    assert server.all_stdout() == b""
    stderr = server.all_stderr()
    assert "stopped accepting" not in stderr.split("SIGTERM")[0], "SIGHUP stopped something"
    assert stderr.count("INFO SIGHUP: reopened ") == 1
    assert_no_traceback(stderr)


def test_the_output_file_is_created_as_the_umask_says(start_server, connect, tmp_path):
    out = tmp_path / "new.log"
    server = start_server(
        "--output", str(out), "--format", "hex", preexec_fn=lambda: os.umask(0o027)
    )
    client = connect(server.port)
    peer = peer_name(client)
    client.sendall(b"hi")
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0
    assert out.stat().st_mode & 0o777 == 0o640
    assert out.read_text().splitlines() == [
        f"[{peer}] 00000000  68 69                                             |hi|",
        f"[{peer}] 00000002",
    ]


@pytest.mark.stress
def test_a_reopen_that_fails_keeps_writing_to_the_open_file(start_server, connect, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    out = folder / "out.log"
    server = start_server("--output", str(out))
    client = connect(server.port)
    client.sendall(b"one\n")
    wait_until(lambda: size(out) > 0, "the first line")
    os.rename(folder, tmp_path / "gone")  # the path's directory is no more
    server.send_signal(signal.SIGHUP)
    server.wait_stderr(r"WARNING SIGHUP: cannot open --output .*; still writing to the file")
    client.sendall(b"two\n")
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop() == 0
    assert (tmp_path / "gone" / "out.log").read_text().count("] ") == 2


# ---- signals ---------------------------------------------------------------------------------


def test_sighup_without_output_stops_gracefully_and_prints_what_was_queued(start_server, connect):
    # The terminal went away: a stop like SIGTERM, with every byte already accepted printed.
    server = start_server("--raw", read_stdout=False)
    assert server.proc.stdout is not None
    client = connect(server.port)
    client.setblocking(False)
    sent = bytearray()
    n = 0
    while select.select([], [client], [], 0.5)[1]:  # until stdout's backpressure stops us
        chunk = b"%08d" % n * 512
        with contextlib.suppress(BlockingIOError):
            sent += chunk[: client.send(chunk)]
        n += 1
    server.send_signal(signal.SIGHUP)
    server.wait_stderr(r"NOTICE SIGHUP: stopped accepting; waiting up to 5 s for 1 client")
    client.close()
    out = server.proc.stdout.read()
    assert server.wait() == 0
    assert out == bytes(sent)
    stderr = server.all_stderr()
    assert f"stopped: served 1 connection, {len(sent)} bytes received" in stderr
    assert_no_traceback(stderr)


MODELS_HERE = [name for name, model in MODELS.items() if model.available() is None]


OTHERS = [m for m in ["sync", "threads", "asyncio", "asyncio-sock"] if m in MODELS_HERE]


# The other models in the stress suite (as tests/test_models.py runs its newer ones there).
@pytest.mark.parametrize(
    "model", ["trio", *(pytest.param(m, marks=pytest.mark.stress) for m in OTHERS)]
)
def test_sighup_is_a_graceful_stop_that_a_second_one_does_not_force(start_server, connect, model):
    # In every model; and --format hex and --timestamps, printed through the shared output.
    server = start_server("--model", model, "--format", "hex", "--timestamps=relative")
    client = connect(server.port)
    client.sendall(b"hello")
    server.wait_stdout(b" 00000000  68 65 6c 6c 6f  ")
    server.send_signal(signal.SIGHUP)
    server.wait_stderr(r"SIGHUP: stopped accepting; .*\(SIGINT or SIGTERM to force\)")
    # The terminal going away delivers SIGHUP twice: the second is no "force".
    server.send_signal(signal.SIGHUP)
    client.sendall(b"!")
    server.wait_stdout(b" 00000000                 21  ")
    assert server.proc.poll() is None
    client.close()
    assert server.wait() == 0
    lines = server.all_stdout().decode().splitlines()
    assert len(lines) == 3
    assert re.match(r"^\+\d+\.\d{6} \[127\.0\.0\.1:\d+\] 00000000  68 65 6c 6c 6f  ", lines[0])
    stderr = server.all_stderr()
    assert "again" not in stderr
    assert "stopped: served 1 connection, 6 bytes received" in stderr
    assert_no_traceback(stderr)


def controlling_terminal() -> None:
    """A ``preexec_fn``: a session of its own whose controlling terminal is stdin (a pty)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_terminal_going_away_is_a_graceful_stop(tmp_path, connect):
    # The case, for real: the server runs in the foreground of an interactive shell on
    # a terminal (a pty), and the terminal goes away.  SIGHUP arrives twice (the shell forwards
    # it, then the kernel sends it as the shell exits); the client is still served and every
    # byte printed (stdout is a file here, not that terminal).
    out, err, pidfile = tmp_path / "out", tmp_path / "err", tmp_path / "pid"
    master, slave = pty.openpty()
    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-i"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    server_pid = None
    try:
        command = (
            f"sh -c 'echo $$ > {pidfile}; exec {' '.join(SERVER_COMMAND)} --port 0 "
            f"--log-level debug' > {out} 2> {err}\n"
        )
        os.write(master, command.encode())
        wait_until(lambda: "NOTICE listening on" in read(err), "the server", STARTUP_TIMEOUT)
        server_pid = int(pidfile.read_text())
        listening = re.search(r"127\.0\.0\.1:(\d+)", read(err))
        assert listening
        client = connect(int(listening[1]))
        client.sendall(b"before\n")
        wait_until(lambda: "] before\n" in read(out), "the first line")
        os.close(master)  # the terminal goes away
        master = -1
        wait_until(lambda: "SIGHUP: stopped accepting" in read(err), "the stop")
        client.sendall(b"after\n")
        wait_until(lambda: "] after\n" in read(out), "the line sent after the hangup")
        client.close()
        wait_until(lambda: "NOTICE stopped: served 1 connection" in read(err), "the summary")
        assert "forced" not in read(err)
        assert "again" not in read(err).replace("SIGHUP again: the stop goes on", "")
        shell.wait(EVENT_TIMEOUT)
    finally:
        if master >= 0:
            os.close(master)
        if shell.poll() is None:
            shell.kill()
            shell.wait(EVENT_TIMEOUT)
        if server_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGKILL)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.stress
def test_sigterm_after_sighup_forces(start_server, connect):
    server = start_server()
    client = connect(server.port)
    client.sendall(b"hello\n")
    server.wait_stdout(b"] hello\n")
    server.send_signal(signal.SIGHUP)
    server.wait_stderr(r"SIGHUP: stopped accepting")
    assert server.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert "SIGTERM again: closing every connection now" in server.all_stderr()


def signal_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {
            name: int(value, 16)
            for name, value in (line.split(":\t") for line in status if line.startswith("Sig"))
            if name in ("SigIgn", "SigCgt")
        }


def bit(signum: int) -> int:
    return 1 << (signum - 1)


def default_dispositions() -> None:
    """A ``preexec_fn``: SIGHUP and SIGQUIT as a terminal's foreground job gets them, whatever
    the test run inherited (a background job of a script ignores SIGQUIT)."""
    for signum in (signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_sighup_is_caught_and_sigquit_keeps_its_default(start_server):
    # SIGQUIT is not sent (it would dump core): its disposition is checked instead.
    server = start_server(preexec_fn=default_dispositions)
    masks = signal_masks(server.pid)
    assert masks["SigCgt"] & bit(signal.SIGHUP)
    assert masks["SigCgt"] & bit(signal.SIGTERM)
    assert not masks["SigCgt"] & bit(signal.SIGQUIT)
    assert not masks["SigIgn"] & bit(signal.SIGQUIT)
    assert server.stop() == 0


def test_under_nohup_a_hangup_is_still_ignored(start_server, connect):
    # Started with SIGHUP ignored, as nohup starts it: the user wants it to outlive the terminal.
    server = start_server(preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    server.send_signal(signal.SIGHUP)
    client = connect(server.port)
    client.sendall(b"still here\n")
    server.wait_stdout(b"] still here\n")
    assert server.proc.poll() is None
    client.close()
    assert server.stop() == 0
    assert "SIGHUP" not in server.all_stderr()


# ---- bad values ------------------------------------------------------------------------------


def test_bad_values_are_one_line_and_status_2(tmp_path):
    missing = tmp_path / "missing" / "dir" / "out.log"
    for args, message in [
        (
            ["--timestamps=bogus"],
            "argument --timestamps: invalid choice: 'bogus'",
        ),
        (["--output", str(missing)], f"no such directory {missing.parent}"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("trio-echo: error: "), line
        assert message in line, line
    assert not (tmp_path / "missing").exists(), "nothing is created on disk"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "{tmp}"], "argument --output: {tmp} is a directory"),
        (["--output", ""], "argument --output: an empty path"),
        (["--timestamps", "--format", "jsonl"], "jsonl records carry their time already"),
        (["--timestamps=utc", "--raw"], "--timestamps is for text and hex output"),
        (
            ["--format", "hex", "--timestamps", "--model", "sync", "--output", "x"],
            "support --output",
        ),
        (["--format", "bin"], "argument --format: invalid choice: 'bin'"),
    ],
)
def test_bad_combinations_are_usage_errors(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args([arg.format(tmp=tmp_path) for arg in args])
    assert exited.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err.splitlines()[-1]


def test_good_values_parse(tmp_path):
    config, _, _ = parse_args(["--timestamps", "--format", "hex", "--output", str(tmp_path / "o")])
    assert config.timestamps is Timestamps.UTC
    assert config.output == str(tmp_path / "o")
    assert not (tmp_path / "o").exists(), "created when the server listens, not when parsed"
    config, _, _ = parse_args(["--timestamps", "relative"])
    assert config.timestamps is Timestamps.RELATIVE
