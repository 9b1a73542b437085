"""``--allow``/``--deny`` rules written in IPv4-mapped IPv6 form (``::ffff:127.0.0.0/104``).

A client that reaches an IPv6 socket over IPv4 is seen (and printed) as ``::ffff:127.0.0.1``,
so a user who reads the log writes the rule that way.  The policy matches such a client as the
IPv4 address it is, so a rule left in IPv6 form would never match anything: it was silently
ignored, which for ``--deny`` is a hole.  Such rules are now turned into the IPv4 block they
mean; a mapped block shorter than /96 (which would reach beyond the mapped addresses) is a
one-line usage error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterator

import pytest
from conftest import SERVER_COMMAND, ServerProcess, peer_name, recv_eof, recv_exactly, run_cli

from trio_echo import Config
from trio_echo.cli.options import parse_args
from trio_echo.net.access import AccessPolicy, parse_network, to_networks

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("::ffff:127.0.0.0/104", V4("127.0.0.0/8")),
        ("::FFFF:127.0.0.0/104", V4("127.0.0.0/8")),
        ("::ffff:7f00:0/104", V4("127.0.0.0/8")),  # the same block in hexadecimal
        ("::ffff:10.1.2.3", V4("10.1.2.3/32")),
        ("::ffff:10.1.2.3/128", V4("10.1.2.3/32")),
        ("::ffff:0.0.0.0/96", V4("0.0.0.0/0")),  # every IPv4 client
        # Plain IPv4 and IPv6 blocks are what they were.
        ("127.0.0.0/8", V4("127.0.0.0/8")),
        ("::1", V6("::1/128")),
        ("::/0", V6("::/0")),
        ("fd00::/8", V6("fd00::/8")),
    ],
)
def test_mapped_rule_becomes_the_ipv4_block(text: str, network: V4 | V6) -> None:
    assert parse_network(text) == network


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Shorter than /96: it would span beyond the mapped range.
        ("::ffff:0.0.0.0/95", r"shorter than /96"),
        ("::ffff:0.0.0.0/80", r"shorter than /96"),
        ("::ffff:127.0.0.1/64", r"shorter than /96"),
        # Host bits set, in mapped form: the suggestion is the block it would mean.
        ("::ffff:127.0.0.1/104", r"host bits set \(did you mean 127\.0\.0\.0/8\?\)"),
    ],
)
def test_bad_mapped_rule_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_network(text)
    assert "\n" not in str(raised.value)
    assert text in str(raised.value)


def test_networks_given_as_objects_are_normalised_too() -> None:
    # Config (an embedder) takes network objects as well as strings.
    mapped = ipaddress.ip_network("::ffff:127.0.0.0/104")
    assert to_networks([mapped]) == (V4("127.0.0.0/8"),)
    assert Config(deny=[mapped]).deny == (V4("127.0.0.0/8"),)
    # And an AccessPolicy built directly, not through Config.
    assert AccessPolicy(deny=(mapped,)).deny == (V4("127.0.0.0/8"),)


@pytest.mark.parametrize("client", [("127.0.0.1", 1234), ("::ffff:127.0.0.1", 1234, 0, 0)])
def test_mapped_deny_refuses_both_address_forms(client: tuple[object, ...]) -> None:
    policy = AccessPolicy(deny=to_networks(["::ffff:127.0.0.0/104"]))
    assert policy.refusal(client) == "--deny 127.0.0.0/8"
    assert policy.refusal(("10.0.0.1", 1234)) is None
    assert policy.refusal(("::1", 1234, 0, 0)) is None


@pytest.mark.parametrize(
    ("client", "refusal"),
    [
        (("10.0.0.1", 1), None),
        (("::ffff:10.0.0.1", 1, 0, 0), None),
        (("11.0.0.1", 1), "no --allow matches"),
        (("::ffff:11.0.0.1", 1, 0, 0), "no --allow matches"),
        # A more specific plain IPv4 --deny wins over a mapped --allow...
        (("10.1.0.1", 1), "--deny 10.1.0.0/16"),
        # ...and a tie between the two forms of one block goes to --deny, as for any tie.
        (("::ffff:10.2.0.1", 1, 0, 0), "--deny 10.2.0.0/16"),
    ],
)
def test_mapped_allow_is_an_ipv4_allow(client: tuple[object, ...], refusal: str | None) -> None:
    policy = AccessPolicy(
        allow=to_networks(["::ffff:10.0.0.0/104", "::ffff:10.2.0.0/112"]),
        deny=to_networks(["10.1.0.0/16", "10.2.0.0/16"]),
    )
    assert policy.refusal(client) == refusal


# ---- the command line --------------------------------------------------------------------------


def test_cli_normalises_a_mapped_deny() -> None:
    config, _, _ = parse_args(["--deny", "::ffff:127.0.0.0/104", "--allow", "::ffff:10.0.0.1"])
    assert config.deny == (V4("127.0.0.0/8"),)
    assert config.allow == (V4("10.0.0.1/32"),)


@pytest.mark.parametrize(
    "args",
    [["--deny", "::ffff:0.0.0.0/80"], ["--allow", "::ffff:127.0.0.1/104"]],
    ids=" ".join,
)
def test_bad_mapped_rule_is_a_usage_error(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trio-echo: error: argument {args[0]}: ")


def test_bad_mapped_rule_end_to_end() -> None:
    result = run_cli("--port", "0", "--deny", "::ffff:0.0.0.0/80")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "--deny" in result.stderr
    assert "shorter than /96" in result.stderr


def closed_by_server(client: socket.socket) -> None:
    """The server closed (or reset) ``client`` without sending anything."""
    with contextlib.suppress(ConnectionResetError):  # closed with our data unread: a reset
        assert recv_eof(client) == b""


def test_mapped_deny_refuses_an_ipv4_client_end_to_end(
    start_server: Callable[..., ServerProcess],
    connect: Callable[..., socket.socket],
) -> None:
    server = start_server("--echo", "--deny", "::ffff:127.0.0.0/104")
    denied = connect(server.port)
    denied.sendall(b"let me in\n")
    closed_by_server(denied)
    server.wait_stderr(rf"refused {re.escape(peer_name(denied))} \(--deny 127\.0\.0\.0/8\)$")
    v6 = connect(server.port, socket.AF_INET6)  # not in the block: served
    v6.sendall(b"v6 is fine\n")
    assert recv_exactly(v6, 11) == b"v6 is fine\n"
    v6.close()  # or the shutdown would wait out the grace period for it
    assert server.stop() == 0
    assert b"let me in" not in server.all_stdout()


@pytest.fixture
def mapped_listener() -> Iterator[socket.socket]:
    """A dual-stack IPv6 socket on ``::ffff:127.0.0.1`` (loopback only): its IPv4 clients are
    seen in mapped form, as on a ``--host ::`` socket without ``IPV6_V6ONLY``."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0))
        sock.listen()
        yield sock


def test_mapped_deny_refuses_a_client_seen_in_mapped_form_end_to_end(
    spawn: Callable[..., ServerProcess],
    mapped_listener: socket.socket,
    connect: Callable[..., socket.socket],
) -> None:
    fd, port = mapped_listener.fileno(), mapped_listener.getsockname()[1]
    server = spawn(
        [*SERVER_COMMAND, "--fd", str(fd), "--echo", "--deny", "::ffff:127.0.0.0/104"], [fd]
    )
    server.wait_listening()
    mapped_listener.close()
    denied = connect(port)  # to 127.0.0.1: the server sees ::ffff:127.0.0.1
    denied.sendall(b"let me in\n")
    closed_by_server(denied)
    client_port = denied.getsockname()[1]
    server.wait_stderr(rf"refused \[::ffff:127\.0\.0\.1\]:{client_port} \(--deny 127\.0\.0\.0/8\)$")
    assert server.stop() == 0
    assert b"let me in" not in server.all_stdout()
