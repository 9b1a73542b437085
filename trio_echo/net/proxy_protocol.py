"""The PROXY protocol header (v1 text, v2 binary) that load balancers put in front of a client's
bytes, so that a server behind them learns who the client really is.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt.  HAProxy (``send-proxy``,
``send-proxy-v2``), nginx (``proxy_protocol on``) and the cloud balancers (AWS NLB, GCP, ...)
send it once, first thing on each connection.

Pure and bounded: :func:`parse` looks at the bytes received so far and says "need more", "here
is the header and where the client's own bytes begin", or "invalid" -- never guessing, as the
spec demands.  A v1 header is at most 107 bytes (a v1 receiver that has not seen its CRLF by
then refuses the connection); a v2 header announces its length in its first 16 bytes, so it is
at most 16 + 65,535 bytes (we refuse more than ``V2_MAX_LENGTH``).  Nothing here does I/O: the
server reads (under a timeout, in the client's own task) and calls :func:`parse` after each
receive.

What counts as the client's address, following the spec:

* v1 ``TCP4``/``TCP6`` and v2 ``PROXY`` over TCP or UDP on IPv4/IPv6: the header's source;
* v1 ``UNKNOWN``, v2 ``LOCAL`` (the balancer's own health checks) and v2 families we do not
  represent (``AF_UNSPEC``, ``AF_UNIX``): the real peer, i.e. ``source is None``.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

__all__ = [
    "HEADER_TIMEOUT",
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "parse",
]

V1_PREFIX = b"PROXY "
# "PROXY TCP6 ffff:...:ffff ffff:...:ffff 65535 65535\r\n": the longest valid v1 line.
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16
# Our bound on a whole v2 header (the spec allows 16 + 65,535 bytes): addresses take at most
# 216 bytes, and the TLVs balancers add (AWS's endpoint id, GCP's connection id, HAProxy's
# unique id and TLS details) a few hundred more.  A longer header is refused rather than held.
V2_MAX_LENGTH = 4096

# How long a client may take to send its header, from the accept: a balancer sends it at once,
# in the same segment as (or right before) the client's first bytes.
HEADER_TIMEOUT = 5.0

# v2 family/transport byte: the high nibble is the address family, the low one the transport.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_TRANSPORT_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
# How many address bytes each family needs (at least): addresses, then ports.
_ADDRESS_LENGTH = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why, in a few words
    for the ``refused`` log line."""


@attrs.frozen
class ProxyHeader:
    """A complete, valid header."""

    # 1 or 2.
    version: int
    # The client as the balancer saw it, or None: use the connection's real peer (v1 UNKNOWN,
    # v2 LOCAL, v2 AF_UNSPEC/AF_UNIX).
    source: Address | None
    # The address the client connected to, on the balancer (None as above).
    destination: Address | None
    # Bytes the header takes: the client's own data begins right after.
    length: int
    # v2 LOCAL: a connection the balancer made itself (a health check).
    local: bool = False


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or ``None`` if ``data`` is a valid beginning of
    one that needs more bytes.  Raises :class:`ProxyProtocolError` as soon as ``data`` cannot
    start a valid header (so a plain client is refused on its first bytes, not at a timeout).
    """
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError("no PROXY protocol signature")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyProtocolError("no PROXY protocol signature")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyProtocolError("v1 header ends without CRLF")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX_LENGTH} bytes")
        return None
    length = end + 2
    line = data[len(V1_PREFIX) : end]
    if b"\n" in line or b"\r" in line:
        raise ProxyProtocolError("v1 header ends without CRLF")
    protocol, _, rest = line.partition(b" ")
    if protocol == b"UNKNOWN":
        # The spec: whatever follows UNKNOWN up to the CRLF is to be ignored.
        return ProxyHeader(1, None, None, length)
    fields = rest.split(b" ")
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"v1 unknown protocol {_show(protocol)}")
    if len(fields) != 4:
        raise ProxyProtocolError("v1 header needs 4 fields after the protocol")
    version = ipaddress.IPv4Address if protocol == b"TCP4" else ipaddress.IPv6Address
    src, dst = (_v1_address(version, text) for text in fields[:2])
    sport, dport = (_v1_port(text) for text in fields[2:])
    return ProxyHeader(1, (src, sport), (dst, dport), length)


def _v1_address(
    version: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], text: bytes
) -> str:
    try:
        # ipaddress is strict (no leading zeros in IPv4, no whitespace), but takes an IPv6
        # scope ("fe80::1%eth0"), which has no place in a header.
        if b"%" in text:
            raise ValueError(text)
        return str(version(text.decode("ascii")))
    except ValueError:
        kind = "IPv4" if version is ipaddress.IPv4Address else "IPv6"
        raise ProxyProtocolError(f"v1 bad {kind} address {_show(text)}") from None


def _v1_port(text: bytes) -> int:
    # Decimal digits only, no sign, no leading zero, 0-65535 (int() alone would take " 1",
    # "+1" and "1_0").
    if (
        not text.isdigit()
        or not text.isascii()
        or (len(text) > 1 and text[:1] == b"0")
        or len(text) > 5
        or int(text) > 65535
    ):
        raise ProxyProtocolError(f"v1 bad port {_show(text)}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyProtocolError("no PROXY protocol signature")
    if len(data) < V2_HEADER_LENGTH:
        # Check what has already arrived, so that garbage is refused at once.
        if len(data) > 12:
            _v2_command(data[12])
        if len(data) > 13:
            _v2_family(data[13])
        return None
    local = _v2_command(data[12])
    family, transport = _v2_family(data[13])
    (size,) = struct.unpack_from("!H", data, 14)
    total = V2_HEADER_LENGTH + size
    if total > V2_MAX_LENGTH:
        raise ProxyProtocolError(f"v2 header longer than {V2_MAX_LENGTH} bytes ({total})")
    if len(data) < total:
        return None
    body = data[V2_HEADER_LENGTH:total]
    needed = _ADDRESS_LENGTH[family]
    if len(body) < needed:
        raise ProxyProtocolError(f"v2 address block too short ({size} bytes)")
    _check_tlvs(body[needed:])
    if local or family in (_AF_UNSPEC, _AF_UNIX) or transport == _TRANSPORT_UNSPEC:
        # LOCAL: the balancer's own connection; the rest: families we cannot show as a peer.
        # Either way the spec says to use the real connection's endpoints.
        return ProxyHeader(2, None, None, total, local=local)
    if family == _AF_INET:
        src4, dst4, sport, dport = struct.unpack_from("!4s4sHH", body)
        src, dst = str(ipaddress.IPv4Address(src4)), str(ipaddress.IPv4Address(dst4))
    else:
        src16, dst16, sport, dport = struct.unpack_from("!16s16sHH", body)
        src, dst = str(ipaddress.IPv6Address(src16)), str(ipaddress.IPv6Address(dst16))
    return ProxyHeader(2, (src, sport), (dst, dport), total)


def _v2_command(byte: int) -> bool:
    """True for LOCAL, False for PROXY."""
    if byte >> 4 != 2:
        raise ProxyProtocolError(f"v2 unsupported version {byte >> 4}")
    if byte & 0xF not in (0, 1):
        raise ProxyProtocolError(f"v2 unknown command {byte & 0xF}")
    return byte & 0xF == 0


def _v2_family(byte: int) -> tuple[int, int]:
    family, transport = byte >> 4, byte & 0xF
    if family not in _ADDRESS_LENGTH or transport not in (_TRANSPORT_UNSPEC, _STREAM, _DGRAM):
        raise ProxyProtocolError(f"v2 unknown address family/transport 0x{byte:02x}")
    if (family == _AF_UNSPEC) != (transport == _TRANSPORT_UNSPEC):
        raise ProxyProtocolError(f"v2 unknown address family/transport 0x{byte:02x}")
    return family, transport


def _check_tlvs(tlvs: bytes) -> None:
    """The TLVs after the addresses are skipped, but must be well framed: type (1 byte),
    length (2 bytes), value."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyProtocolError("v2 truncated TLV")
        (size,) = struct.unpack_from("!H", tlvs, at + 1)
        at += 3 + size
        if at > len(tlvs):
            raise ProxyProtocolError("v2 truncated TLV")


def _show(text: bytes) -> str:
    """A field of a bad header, for a log line: bounded and safe for a terminal."""
    return repr(text[:40].decode("ascii", "backslashreplace"))
