"""``--keepalive SECONDS``: TCP keepalive on every accepted connection, so that a peer that
vanished (its machine lost power, a NAT or firewall in between forgot the connection) is
found and its connection closed, instead of holding a slot until the server stops.

After ``SECONDS`` without anything received, the kernel sends a probe every
:attr:`Keepalive.interval` seconds; after :attr:`Keepalive.count` probes without an answer it
gives up, and the handler's next receive fails (``close ... (connection lost (connection timed
out))``).  A live but silent client answers the probes (its kernel does) and stays.  Probes
also keep a NAT's or firewall's idle timer from dropping a quiet connection, if ``SECONDS`` is
below that timer.

Set on the *listening* socket where accepted sockets inherit it (Linux copies the listener's
socket, options included, to every connection it accepts): then it costs nothing per accept.
Elsewhere it is set on each accepted socket: four ``setsockopt`` calls, 4 to 7 us on our busy
2-core test machine, where a client's connect, accept and close take 100 to 150 us.
"""

from __future__ import annotations

import socket
import sys

import attrs

__all__ = [
    "KEEPALIVE_INHERITED",
    "MAX_INTERVAL",
    "MAX_SECONDS",
    "PROBES",
    "Keepalive",
    "parse_keepalive",
]

# The probes sent before a silent peer is declared dead: one or two may be lost on a healthy
# path; three unanswered in a row is a peer that is gone.  (Linux's default is 9, with 75 s
# between them: 11 minutes of probing, far slower than anyone who asks for keepalive wants.)
PROBES = 3

# The longest wait between probes: Linux's own default interval.  Below it, probes come every
# SECONDS/3, so that a dead peer is found within about 2 x SECONDS of its last word
# (SECONDS + PROBES x SECONDS/3); with a longer idle time, faster probes cost next to nothing
# (a probe is an empty segment) and still find it within SECONDS + 225 s.
MAX_INTERVAL = 75

# The longest idle time Linux accepts (MAX_TCP_KEEPIDLE); the option is a whole number of
# seconds everywhere.
MAX_SECONDS = 32767

# Does an accepted socket inherit the listening socket's keepalive options?  Linux: yes (the
# child socket is a copy of the listener's, SO_KEEPALIVE and the TCP_KEEP* values with it).
# Elsewhere we do not rely on it and set the options on every accepted socket.
KEEPALIVE_INHERITED = sys.platform.startswith("linux")

# The option names this platform has (getattr: each may be missing).  macOS names the idle
# time TCP_KEEPALIVE.
_IDLE = getattr(socket, "TCP_KEEPIDLE", None)
if _IDLE is None:
    _IDLE = getattr(socket, "TCP_KEEPALIVE", None)
_INTERVAL = getattr(socket, "TCP_KEEPINTVL", None)
_COUNT = getattr(socket, "TCP_KEEPCNT", None)


def parse_keepalive(text: str) -> int:
    """``--keepalive``: a whole number of seconds, 1 to :data:`MAX_SECONDS`; ``ValueError``
    naming the value otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number of seconds, got {text!r}") from None
    if not 1 <= value <= MAX_SECONDS:
        raise ValueError(f"must be 1-{MAX_SECONDS} seconds, got {text!r}")
    return value


@attrs.frozen
class Keepalive:
    """The keepalive settings of ``--keepalive SECONDS``: idle time, interval, probe count."""

    idle: int
    interval: int
    count: int

    @classmethod
    def after(cls, seconds: int) -> Keepalive:
        """Probe after ``seconds`` of silence, every ``seconds/3`` (rounded up, at most
        :data:`MAX_INTERVAL`), :data:`PROBES` times."""
        return cls(seconds, min(max(1, -(-seconds // 3)), MAX_INTERVAL), PROBES)

    def options(self) -> list[tuple[int, int, int]]:
        """The ``(level, option, value)`` this platform has, SO_KEEPALIVE first."""
        options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        for name, value in ((_IDLE, self.idle), (_INTERVAL, self.interval), (_COUNT, self.count)):
            if name is not None:
                options.append((socket.IPPROTO_TCP, name, value))
        return options

    def apply(self, sock: socket.socket) -> None:
        """Set the options on ``sock`` (a TCP socket, listening or connected)."""
        for level, name, value in self.options():
            sock.setsockopt(level, name, value)
