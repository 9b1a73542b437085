"""``--udp`` on the command line: the flag, and the refusal of the flags that need a connection
(one line, exit status 2), checked before any of them is acted on (a ``--tls-cert`` file is
not even opened)."""

from __future__ import annotations

import argparse

__all__ = ["NOT_WITH_UDP", "add_arguments", "check"]

# The flags that make no sense without a connection, and why, for their one-line refusal.
# --max-line, --grace, --allow/--deny, --workers, --echo and the formats all apply to UDP.
NOT_WITH_UDP = {
    "--tls-cert": "TLS needs a stream (DTLS is not supported)",
    "--tls-key": "TLS needs a stream (DTLS is not supported)",
    "--tls-handshake-timeout": "TLS needs a stream (DTLS is not supported)",
    "--proxy-protocol": "a PROXY header starts a connection, and UDP has none",
    "--max-connections": "UDP has no connections to limit",
    "--idle-timeout": "UDP has no connections to time out",
    "--max-bytes": "it bounds a connection; a datagram is whole and at most 64 KiB",
    "--fd": "inherited sockets must be TCP listeners; --udp binds its own",
    "--keepalive": "TCP keepalive probes a connection, and UDP has none",
}


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Add ``--udp`` to the "listening" group of the parser."""
    group.add_argument(
        "--udp",
        action="store_true",
        help="serve UDP instead of TCP (the RFC 862 echo / RFC 863 discard service): one "
        "output record per datagram, named by its sender; --echo sends each datagram back; "
        "datagrams that arrive while stdout is stalled are dropped by the kernel, and counted "
        f"where it says (Linux). Not with {', '.join(NOT_WITH_UDP)} (trio model only)",
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace, given: list[str]) -> None:
    """With ``--udp``, refuse (one line, exit status 2) every flag of :data:`NOT_WITH_UDP`
    that was given: by name, or by value (an abbreviation, ``--tls-c``)."""
    if not args.udp:
        return
    for flag, why in NOT_WITH_UDP.items():
        dest = parser._option_string_actions[flag].dest
        if flag in given or getattr(args, dest) != parser.get_default(dest):
            parser.error(f"--udp with {flag}: {why}")
