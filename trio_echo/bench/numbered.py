"""Numbered lines: what the shutdown-correctness clients send, and the count of what a server
printed of them.

Every line names its client and its number, has a fixed length and ends in a checksum of the
rest (``c07 000123 ........ 1a2b3c4d``), so each line the server printed can be told apart
without trusting the server: whole (and whose, and which), cut short (a prefix of one that was
sent), printed twice, or something no client sent.  Because every line has the same length, a
client needs no record per line: the bytes it got into its socket say how many lines went in
whole (:class:`Sent`), and how many of them before the signal.

:class:`Client` is one such client on a non-blocking socket, driven by a selector loop (the
scenario's, :mod:`.scenarios.correctness`): it queues the lines that are due, writes what the
socket takes, and notes how its connection ended -- a clean close (EOF) or a reset.
:func:`tally` is pure, so the counting is tested on made-up output.
"""

from __future__ import annotations

import re
import socket
import zlib
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["LINE_BYTES", "MAX_CLIENTS", "Client", "Sent", "Tally", "numbered_line", "tally"]

# Bytes per line, newline included: short enough for thousands a second from a Python client,
# long enough that a cut is likely to fall inside the padding, where only the length tells.
LINE_BYTES = 64
# Two digits of client number in the line.
MAX_CLIENTS = 100
# Six digits of line number: at 100 lines a second, hours of streaming.
MAX_LINES = 10**6

# The start of a line: its client and its number (a torn line keeps at least this much to be
# attributed).
HEAD_RE = re.compile(r"c(\d{2}) (\d{6})")
# A line cut before its number was complete: torn, but whose cannot be told.
SHORT_RE = re.compile(r"c(\d(\d( \d{0,5})?)?)?")
# A line cut inside that prefix: torn, whose cannot be told.
PEER_CUT_RE = re.compile(r"\[\S*")
# What the text format puts before each line: the client's address in brackets and a space
# (``[127.0.0.1:40312] ``; an IPv6 address has brackets of its own, hence no ``]`` exclusion).
PEER_RE = re.compile(r"\[\S*\] ")


def numbered_line(client: int, number: int) -> bytes:
    """Line ``number`` of ``client``: ``LINE_BYTES`` bytes, ending in the CRC-32 of the rest
    and a newline."""
    if not (0 <= client < MAX_CLIENTS and 0 <= number < MAX_LINES):
        raise ValueError(f"no numbered line {client}/{number}")
    head = f"c{client:02d} {number:06d} "
    body = head + "." * (LINE_BYTES - len(head) - 10)  # 10: " ", 8 hex digits, "\n"
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


@attrs.frozen
class Sent:
    """What one client got into its socket, in lines (numbered from 0, in order): the first
    ``written`` whole, the first ``before_signal`` of them before the server was signalled, and
    ``started`` lines at least in part (``written`` or one more: a line it was cut in)."""

    written: int
    before_signal: int
    started: int

    @classmethod
    def from_bytes(cls, written_bytes: int, before_signal_bytes: int) -> Sent:
        return cls(
            written=written_bytes // LINE_BYTES,
            before_signal=before_signal_bytes // LINE_BYTES,
            started=-(-written_bytes // LINE_BYTES),
        )


@attrs.frozen
class Tally:
    """The count of what a server printed against what its clients sent (``lines_*``)."""

    lines_sent: int  # written whole into the sockets
    lines_sent_before_signal: int
    lines_printed: int  # distinct lines printed whole
    # Written whole before the signal, never printed, not even in part: what a shutdown lost.
    lines_lost: int
    # Written whole after the signal (during the grace period), never printed: those a client
    # sent after the server stopped reading it, or that the server dropped.
    lines_lost_after_signal: int
    # Printed cut short though written whole (or too short to tell whose: cut before the line's
    # number, or inside the client's address the server puts before it).
    lines_torn: int
    # Printed cut short where the client itself got only that part into its socket: correct.
    lines_partial_printed: int
    lines_duplicated: int  # printed whole once more
    lines_corrupt: int  # printed, but no client sent it (nor a prefix of it)
    lines_out_of_order: int  # printed whole after a later line of the same client

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


def tally(sent: Sequence[Sent], printed: Iterable[str]) -> Tally:
    """Count the server's text-format output lines (``printed``, without their newlines)
    against what each client (``sent[i]`` is client ``i``) got into its socket."""
    whole: set[tuple[int, int]] = set()
    torn: set[tuple[int, int]] = set()
    last = [-1] * len(sent)
    duplicated = corrupt = out_of_order = partial = unattributed = 0
    for line in printed:
        peer = PEER_RE.match(line)
        if peer is None:
            if PEER_CUT_RE.fullmatch(line):
                unattributed += 1
            else:
                corrupt += 1
            continue
        text = line[peer.end() :]
        head = HEAD_RE.match(text)
        if head is None:
            if text and SHORT_RE.fullmatch(text):
                unattributed += 1
            else:
                corrupt += 1
            continue
        key = client, number = int(head[1]), int(head[2])
        if client >= len(sent) or number >= sent[client].started:
            corrupt += 1
            continue
        expected = numbered_line(client, number)[:-1].decode()
        if text == expected:
            if key in whole:
                duplicated += 1
                continue
            whole.add(key)
            if number < last[client]:
                out_of_order += 1
            last[client] = max(last[client], number)
        elif expected.startswith(text):
            if number < sent[client].written:
                torn.add(key)
            else:
                partial += 1
        else:
            corrupt += 1
    seen = whole | torn
    lost = lost_after = 0
    for client, record in enumerate(sent):
        for number in range(record.written):
            if (client, number) not in seen:
                if number < record.before_signal:
                    lost += 1
                else:
                    lost_after += 1
    return Tally(
        lines_sent=sum(s.written for s in sent),
        lines_sent_before_signal=sum(s.before_signal for s in sent),
        lines_printed=len(whole),
        lines_lost=lost,
        lines_lost_after_signal=lost_after,
        lines_torn=len(torn) + unattributed,
        lines_partial_printed=partial,
        lines_duplicated=duplicated,
        lines_corrupt=corrupt,
        lines_out_of_order=out_of_order,
    )


# How a client's connection ended, as the client saw it first.
EOF = "eof"
RESET = "reset"


class Client:
    """One client streaming numbered lines on a non-blocking socket.

    The selector loop calls :meth:`queue` with the number of lines due, :meth:`flush` when the
    socket may take more, :meth:`on_readable` when the server sent something (the server of a
    text-mode scenario sends nothing: only its close, FIN or RST, makes the socket readable),
    and :meth:`shut` when the client is done sending (it then waits for the server's close).
    """

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.queued = 0  # lines put in the buffer so far
        self.buffer = bytearray()
        self.written_bytes = 0
        self.before_signal_bytes: int | None = None
        self.outcome: str | None = None  # EOF or RESET, once seen
        self.stopping = False  # sends nothing more; shuts its side once the buffer is out
        self.shut_down = False  # its side is shut (SHUT_WR): it finished

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def mark_signal(self) -> None:
        """The server is being signalled now: what is written so far went in before."""
        self.before_signal_bytes = self.written_bytes

    def queue(self, due: int) -> None:
        """Add lines up to ``due`` in all, unless the client stopped sending."""
        if self.stopping or self.done:
            return
        while self.queued < min(due, MAX_LINES):
            self.buffer += numbered_line(self.index, self.queued)
            self.queued += 1

    def flush(self) -> None:
        """Write what the socket takes now; shut the sending side once a stopping client's
        buffer is out."""
        while self.buffer and not self.done:
            try:
                count = self.sock.send(self.buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                self._ended(exc)
                return
            self.written_bytes += count
            del self.buffer[:count]
        if self.stopping and not self.buffer and not self.shut_down and not self.done:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                self.shut_down = True
            except OSError as exc:
                self._ended(exc)

    def stop(self) -> None:
        """Send nothing more: shut the sending side once the buffer is written."""
        self.stopping = True
        self.flush()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._ended(exc)
            return
        if not data:
            self.outcome = EOF
        # Anything else the server sends is no concern of this scenario's: drop it.

    def _ended(self, exc: OSError) -> None:
        # Linux reports a reset that follows the server's FIN (our write after its close) as
        # EPIPE, not ECONNRESET: the close it saw first was a clean one.
        self.outcome = EOF if isinstance(exc, BrokenPipeError) else RESET

    def sent(self) -> Sent:
        before = (
            self.written_bytes if self.before_signal_bytes is None else self.before_signal_bytes
        )
        return Sent.from_bytes(self.written_bytes, before)

    def close(self) -> None:
        self.sock.close()
