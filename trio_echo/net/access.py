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

An IPv4 client that reaches an IPv6 socket (dual stack) is seen, and logged, as
``::ffff:127.0.0.1``; it is matched as the IPv4 address it is, so that IPv4 rules apply to it.
A rule written the way such a client is logged (``::ffff:127.0.0.0/104``) is therefore turned
into the IPv4 block it means (``127.0.0.0/8``): left in IPv6 form it would never match any
client, and a ``--deny`` would be silently ignored.  A mapped block shorter than /96 would
reach beyond the mapped addresses, so it is refused.  Plain IPv6 rules (``::/0``) do not apply
to mapped clients: those are IPv4 clients.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

__all__ = ["AccessPolicy", "Network", "parse_network", "to_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# Where IPv4 addresses are mapped into IPv6: ::ffff:a.b.c.d (RFC 4291, section 2.5.5.2).
MAPPED_PREFIXLEN = 96


def parse_network(text: str) -> Network:
    """``10.0.0.0/8`` -> the network; a bare address is a block of one.

    Raises ``ValueError`` with a one-line message.  A block with host bits set
    (``10.1.2.3/8``) is refused rather than silently widened: it is most likely a typo, and
    the message says which block was probably meant.  A block in IPv4-mapped form
    (``::ffff:127.0.0.0/104``) becomes the IPv4 block it means (see the module docstring).
    """
    try:
        loose = ipaddress.ip_network(text, strict=False)
        written = ipaddress.ip_interface(text)  # the address as written, host bits and all
    except ValueError:
        raise ValueError(
            f"expected an IP address or a CIDR block such as 10.0.0.0/8 or fd00::/8, got {text!r}"
        ) from None
    if isinstance(written, ipaddress.IPv6Interface) and written.ip.ipv4_mapped is not None:
        if loose.prefixlen < MAPPED_PREFIXLEN:
            raise ValueError(
                f"{text!r} is an IPv4-mapped block shorter than /{MAPPED_PREFIXLEN}, so it "
                "reaches beyond IPv4 addresses: write the IPv4 block, such as 10.0.0.0/8"
            )
        meant = normalise(loose)
        if written.ip.ipv4_mapped != meant.network_address:
            raise ValueError(f"{text!r} has host bits set (did you mean {meant}?)")
        return meant
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValueError(f"{text!r} has host bits set (did you mean {loose}?)") from None


def normalise(network: Network) -> Network:
    """An IPv4-mapped IPv6 block (``::ffff:127.0.0.0/104``) as the IPv4 block it means
    (``127.0.0.0/8``), since mapped clients are matched as IPv4; any other block as it is."""
    mapped = network.network_address
    if (
        isinstance(mapped, ipaddress.IPv6Address)
        and mapped.ipv4_mapped is not None
        and network.prefixlen >= MAPPED_PREFIXLEN
    ):
        return ipaddress.IPv4Network((mapped.ipv4_mapped, network.prefixlen - MAPPED_PREFIXLEN))
    return network


def to_networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    """The ``Config`` and ``AccessPolicy`` converter: strings are parsed, networks normalised
    (a mapped block given as an object must not slip past :func:`parse_network`)."""
    return tuple(
        normalise(v)
        if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network))
        else parse_network(v)
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

    # Normalised here too, for a policy built without Config: a mapped rule would never match.
    allow: tuple[Network, ...] = attrs.field(default=(), converter=to_networks)
    deny: tuple[Network, ...] = attrs.field(default=(), converter=to_networks)

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
