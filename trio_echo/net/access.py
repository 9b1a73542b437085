"""``--allow`` / ``--deny``: which client addresses may connect, decided once per accept.

A server that prints whatever it is sent should be reachable only by those meant to use it.
The rules are CIDR blocks (``10.0.0.0/8``, ``fd00::/8``, or a single address), IPv4 and IPv6
alike, and the decision does not depend on their order on the command line:

* the most specific rule that matches the client (the longest prefix) decides; on a tie,
  ``--deny`` wins;
* a client that no rule matches is refused if there is any ``--allow`` (an allow list), and
  accepted otherwise (only ``--deny``: a block list).

So ``--allow 10.0.0.0/8 --deny 10.1.0.0/16`` and ``--deny 0.0.0.0/0 --allow 10.1.2.3`` both
mean what they say.  Pure: no I/O, no concurrency library.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

__all__ = ["AccessPolicy", "Network", "parse_network", "to_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> Network:
    """``10.0.0.0/8`` -> the network; a bare address is a block of one.

    Raises ``ValueError`` with a one-line message.  A block with host bits set
    (``10.1.2.3/8``) is refused rather than silently widened: it is most likely a typo, and
    the message says which block was probably meant.
    """
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"expected an IP address or a CIDR block such as 10.0.0.0/8 or fd00::/8, got {text!r}"
        ) from None
    raise ValueError(f"{text!r} has host bits set (did you mean {loose}?)")


def to_networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    """The ``Config`` converter: strings are parsed, networks kept."""
    return tuple(
        v if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else parse_network(v)
        for v in values
    )


def ip_of(address: object) -> Address | None:
    """The IP address of a socket address tuple (``None`` for anything else).  An IPv4 address
    mapped into IPv6 (``::ffff:10.1.2.3``) counts as the IPv4 address it is, so that IPv4
    rules apply to it."""
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None
    host = address[0].partition("%")[0]  # a link-local address's scope: fe80::1%eth0
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@attrs.frozen
class AccessPolicy:
    """The ``--allow`` and ``--deny`` rules; :meth:`refusal` decides for one client."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def of(cls, allow: tuple[Network, ...], deny: tuple[Network, ...]) -> AccessPolicy | None:
        """The policy, or ``None`` when there are no rules (then nothing is checked at all)."""
        return cls(allow, deny) if allow or deny else None

    def refusal(self, address: object) -> str | None:
        """``None`` if the client at ``address`` may connect, else why not (for the log line:
        the rule that refused it)."""
        ip = ip_of(address)
        if ip is None:
            return "not an IP address" if self.allow else None
        best: Network | None = None
        best_allows = False
        for rules, allows in ((self.deny, False), (self.allow, True)):
            for network in rules:
                # Strictly longer only: deny is looked at first, so it wins a tie.
                if ip in network and (best is None or network.prefixlen > best.prefixlen):
                    best, best_allows = network, allows
        if best is None:
            return "no --allow matches" if self.allow else None
        return None if best_allows else f"--deny {best}"
