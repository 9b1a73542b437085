"""``--keepalive SECONDS``: the options read back from the server's own accepted socket.

The server runs in this process (``trio_echo.serve``), so the accepted connection is one of our
own descriptors: found by its addresses (the client's, swapped), its options read with
``getsockopt`` on a duplicate.  Both ways of setting them are checked: on the listening socket
only (where accepted sockets inherit them: Linux) and on every accepted socket (elsewhere).
"""

from __future__ import annotations

import os
import socket
import stat

import pytest
import trio
from conftest import run_cli

import trio_echo
from trio_echo.cli.options import parse_args
from trio_echo.net import keepalive as keepalive_module
from trio_echo.net.keepalive import MAX_INTERVAL, PROBES, Keepalive, parse_keepalive
from trio_echo.server import serve as serve_module

IDLE = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
INTERVAL = getattr(socket, "TCP_KEEPINTVL", None)
COUNT = getattr(socket, "TCP_KEEPCNT", None)


def accepted_socket(client: trio.SocketStream) -> socket.socket:
    """A duplicate of the server's end of ``client``'s connection (in this process); the
    caller closes it."""
    local, peer = client.socket.getsockname(), client.socket.getpeername()
    for name in os.listdir("/dev/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=os.dup(fd))
        try:
            if sock.family == socket.AF_INET and (sock.getpeername(), sock.getsockname()) == (
                local,
                peer,
            ):
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no accepted socket for {local}")


async def options_seen(config: trio_echo.Config) -> dict[str, int]:
    """The keepalive options of the connection a server with ``config`` accepts."""
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(trio_echo.serve, config)
        client = await trio.open_tcp_stream("127.0.0.1", handle.port)
        async with client:
            # The echo comes back: the server has accepted and served the connection.
            await client.send_all(b"x")
            with trio.fail_after(5):
                assert await client.receive_some(1) == b"x"
            with accepted_socket(client) as sock:
                seen = {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
                for key, option in (("idle", IDLE), ("interval", INTERVAL), ("count", COUNT)):
                    if option is not None:
                        seen[key] = sock.getsockopt(socket.IPPROTO_TCP, option)
        handle.shutdown()
    return seen


@pytest.mark.parametrize("inherited", [True, False])
async def test_accepted_connections_have_the_options(
    monkeypatch: pytest.MonkeyPatch, inherited: bool
) -> None:
    # False: set on every accepted socket, as where the platform does not inherit them.
    monkeypatch.setattr(serve_module, "KEEPALIVE_INHERITED", inherited)
    config = trio_echo.Config(hosts=["127.0.0.1"], port=0, echo=True, keepalive=7)
    seen = await options_seen(config)
    assert seen.pop("keepalive") != 0
    assert seen == {"idle": 7, "interval": 3, "count": 3}


async def test_off_by_default() -> None:
    seen = await options_seen(trio_echo.Config(hosts=["127.0.0.1"], port=0, echo=True))
    assert seen["keepalive"] == 0


@pytest.mark.parametrize(
    ("seconds", "interval"), [(1, 1), (2, 1), (7, 3), (60, 20), (225, 75), (7200, MAX_INTERVAL)]
)
def test_defaults(seconds: int, interval: int) -> None:
    keepalive = Keepalive.after(seconds)
    assert (keepalive.idle, keepalive.interval, keepalive.count) == (seconds, interval, PROBES)
    # A dead peer is found within about twice the idle time (the interval is rounded up to
    # whole seconds), or SECONDS + 225 s once the interval is capped.
    found_within = seconds + PROBES * keepalive.interval
    if seconds <= 3 * MAX_INTERVAL:
        assert found_within <= 2 * seconds + 2
    else:
        assert found_within == seconds + PROBES * MAX_INTERVAL


def test_options_missing_on_a_platform_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keepalive_module, "_INTERVAL", None)
    monkeypatch.setattr(keepalive_module, "_COUNT", None)
    options = Keepalive.after(30).options()
    assert [value for _, _, value in options] == [1, 30]


@pytest.mark.parametrize("text", ["0", "-5", "x", "1.5", "", "nan", "40000"])
def test_bad_values(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace(".", r"\.")):
        parse_keepalive(text)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--keepalive", text])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-echo: error: argument --keepalive: ")
    assert err.count("\n") == 1


def test_command_line() -> None:
    config, _, _ = parse_args(["--keepalive", "60"])
    assert config.keepalive == 60
    result = run_cli("--keepalive", "0")
    assert result.returncode == 2
    assert result.stderr == (
        "trio-echo: error: argument --keepalive: must be 1-32767 seconds, got '0' (see --help)\n"
    )
