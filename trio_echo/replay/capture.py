"""Reading a capture: the server's ``--format jsonl`` output back into each connection's bytes.

A jsonl capture already holds everything a replay needs (README, "Output"):

* **the bytes**: ``data + eol`` of a connection's data records, in order, is exactly what its
  client sent; ``data_b64`` holds the exact bytes of a piece that is not valid UTF-8 (``data``
  then has U+FFFD replacements, so it must not be used); pieces of a line longer than
  ``--max-line`` are records of their own (``continued``), and concatenate like the others;
* **who sent them**: ``conn`` (plus ``worker`` under ``--workers``) names the connection;
  ``open`` starts it, ``close`` ends it (``reason`` says who ended it, ``bytes`` how much it
  sent, a check that no record is missing);
* **when**: ``time``, the receive time in UTC with microseconds.  The server stamps a record when
  the line is *complete* (or cut at ``--max-line``, or the connection ended), so a replay sends a
  line's bytes at that moment: a line typed slowly arrives at once, when its newline did.

So the jsonl format needs no extension.  Parsing is strict where a loose reading would replay
something else than what was captured (a record that is not JSON, a truncated last line, bytes
that do not decode, a ``close`` whose byte count disagrees with the data): the capture is refused
with one line naming the file and the line, before anything is sent.  It is lenient where the
capture is merely partial: a connection whose ``open`` is missing starts at its first record, one
whose ``close`` is missing (the capture was cut short) stays open until the capture's last
record; but a capture without a single ``open`` or ``close`` is refused: that is what ``--udp``
writes (``conn`` numbers datagrams there), and datagrams are no TCP connections.  A connection
number seen again after its ``close`` with a new ``open`` is a new connection (a server
restarted, appending to the same file).  Records of other events are refused.

Times are the wall clock, so a clock step during the capture could make a connection's records go
back in time: they are kept in file order (a record never goes before the one above it).

Pure: no I/O beyond reading the file, no Trio.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import attrs

__all__ = [
    "Capture",
    "CaptureError",
    "CapturedConnection",
    "Chunk",
    "parse_capture",
    "read_capture",
]

# The terminators a data record may carry: the server's line assembler knows no others.
_EOLS = ("", "\n", "\r\n")

# The close reason of a client that ended its connection itself (trio_echo.connection).
CLOSED_BY_CLIENT = "closed by client"

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)


class CaptureError(Exception):
    """A capture that cannot be replayed exactly; the message is one line, ``FILE:LINE: why``."""


@attrs.frozen
class Chunk:
    """Bytes the client sent, and when: ``offset`` seconds after the capture began.

    One chunk per distinct time stamp: the lines of one receive share it, so they are sent in one
    ``send_all`` as they arrived in one.
    """

    offset: float
    data: bytes


@attrs.frozen
class CapturedConnection:
    """One client of the captured server, from its ``open`` to its ``close``."""

    # How the server named it: "#3", or "#3 (worker 2)" under --workers.
    label: str
    peer: str
    # Seconds after the capture began: when it connected, and when it ended.
    start: float
    end: float
    chunks: tuple[Chunk, ...]
    # Who ended it: the close record's reason; None when the capture has no close record.
    reason: str | None
    # The line of the file its first record is on (for messages).
    line: int

    @property
    def size(self) -> int:
        return sum(len(chunk.data) for chunk in self.chunks)

    @property
    def closed_by_client(self) -> bool:
        """Whether the client ended it (or the capture did): then a replay half-closes and
        waits for the server to finish, as a client does.  Otherwise the server ended it (an
        idle timeout, --max-bytes, a shutdown, a reset) and the replay just hangs up then."""
        return self.reason is None or self.reason == CLOSED_BY_CLIENT


@attrs.frozen
class Capture:
    """A whole capture: its connections in the order they started."""

    name: str
    connections: tuple[CapturedConnection, ...]
    # Seconds from the first record to the last.
    duration: float

    @property
    def size(self) -> int:
        return sum(conn.size for conn in self.connections)


@attrs.define
class _Open:
    """A connection being read: its records so far (mutable, private)."""

    label: str
    peer: str
    line: int
    start: int  # microseconds since the epoch, like every time while parsing
    last: int
    chunks: list[tuple[int, bytearray]] = attrs.field(factory=list)
    received: int = 0
    end: int | None = None
    reason: str | None = None

    def add(self, when: int, data: bytes) -> None:
        when = max(when, self.last)
        self.last = when
        if self.chunks and self.chunks[-1][0] == when:
            self.chunks[-1][1].extend(data)
        elif data:
            self.chunks.append((when, bytearray(data)))
        self.received += len(data)

    def freeze(self, base: int, end: int) -> CapturedConnection:
        end = max(end, self.last)
        return CapturedConnection(
            label=self.label,
            peer=self.peer,
            start=(self.start - base) / 1e6,
            end=(end - base) / 1e6,
            chunks=tuple(Chunk((when - base) / 1e6, bytes(data)) for when, data in self.chunks),
            reason=self.reason,
            line=self.line,
        )


def read_capture(path: str | Path) -> Capture:
    """Read and check the capture file at ``path`` (``-``: standard input, for a capture in
    several files, ``cat capture.jsonl.1 capture.jsonl``); raises :class:`CaptureError`."""
    name = str(path)
    if name == "-":
        return parse_capture(sys.stdin.buffer, "<stdin>")
    try:
        with open(path, "rb") as file:
            return parse_capture(file, name)
    except OSError as exc:
        raise CaptureError(f"cannot read {name}: {exc.strerror or exc}") from None


def parse_capture(lines: Iterable[bytes], name: str = "<capture>") -> Capture:
    """The connections in ``lines`` (the file's lines, each with its ``\\n``).

    Reads everything before returning, so that a bad line anywhere is found before a replay
    sends a byte.  Raises :class:`CaptureError`.
    """
    live: dict[tuple[int | None, int], _Open] = {}
    ended: set[tuple[int | None, int]] = set()
    done: list[_Open] = []
    first: int | None = None
    last: int | None = None
    events = False  # whether there was any open or close record
    number = 0
    for number, raw in enumerate(lines, 1):
        where = f"{name}:{number}"
        if not raw.endswith(b"\n"):
            raise CaptureError(
                f"{where}: the last line has no newline: the capture was cut off mid-line"
            )
        if not raw.strip():
            continue  # a blank line holds no record (an editor's, or a hand-made file's)
        event, key, when, record = _record(raw, where)
        first = when if first is None else min(first, when)
        last = when if last is None else max(last, when)
        events = events or event != "data"
        conn = live.get(key)
        if event == "open" or conn is None:
            if conn is not None:  # a new open for a live number: the server restarted
                done.append(live.pop(key))
            if event != "open" and key in ended:
                raise CaptureError(
                    f"{where}: {event} record for connection {_label(key)} after its close"
                )
            ended.discard(key)
            peer = record.get("peer")
            name_of_peer = peer if isinstance(peer, str) else "unknown"
            conn = live[key] = _Open(_label(key), name_of_peer, number, when, when)
            if event == "open":
                continue
        if event == "data":
            conn.add(when, _data(record, where))
            continue
        # event == "close"
        conn.add(when, b"")
        sent = record.get("bytes")
        if type(sent) is int and sent != conn.received:
            raise CaptureError(
                f"{where}: connection {conn.label} closed after {sent} bytes, but its data "
                f"records hold {conn.received}: records are missing"
            )
        reason = record.get("reason")
        conn.end, conn.reason = when, reason if isinstance(reason, str) else ""
        done.append(live.pop(key))
        ended.add(key)
    if first is None or last is None:
        raise CaptureError(f"{name}: no records to replay (an empty capture)")
    if not events:
        # --udp numbers datagrams in "conn" and has no open/close: TCP connections would be
        # a different thing altogether.
        raise CaptureError(
            f"{name}: data records only, no open or close: a capture of --udp datagrams (or a "
            "filtered one)? replay needs a TCP capture with its open and close records"
        )
    done.extend(live.values())  # still open when the capture ended
    connections = sorted(
        (conn.freeze(first, last if conn.end is None else conn.end) for conn in done),
        key=lambda conn: (conn.start, conn.line),
    )
    return Capture(name, tuple(connections), (last - first) / 1e6)


def _label(key: tuple[int | None, int]) -> str:
    worker, conn = key
    return f"#{conn}" if worker is None else f"#{conn} (worker {worker})"


def _record(raw: bytes, where: str) -> tuple[str, tuple[int | None, int], int, dict[str, object]]:
    """One line's record, checked: its event, connection key, time and fields."""
    try:
        text = raw.decode("utf-8")  # json.loads(bytes) would guess UTF-16 and -32 too
    except UnicodeDecodeError:
        raise CaptureError(f"{where}: not UTF-8 text, so not jsonl") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        detail = getattr(exc, "msg", str(exc))
        raise CaptureError(f"{where}: not JSON ({detail}): not a jsonl capture") from None
    if not isinstance(record, dict):
        raise CaptureError(f"{where}: a JSON {type(record).__name__}, not a record object")
    event = record.get("event")
    if event not in ("open", "data", "close"):
        raise CaptureError(
            f"{where}: event {event!r} cannot be replayed (expected open, data or close: "
            "a capture of `python -m trio_echo --format jsonl`)"
        )
    conn, worker = record.get("conn"), record.get("worker")
    if type(conn) is not int:
        raise CaptureError(f"{where}: 'conn' must be a connection number, got {conn!r}")
    if worker is not None and type(worker) is not int:
        raise CaptureError(f"{where}: 'worker' must be a worker number, got {worker!r}")
    return str(event), (worker, conn), _time(record.get("time"), where), record


def _time(value: object, where: str) -> int:
    """An ISO 8601 time stamp as microseconds since the epoch (exact: no float rounding)."""
    if not isinstance(value, str):
        raise CaptureError(f"{where}: 'time' must be an ISO 8601 time, got {value!r}")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value  # Python 3.10 wants +00:00
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CaptureError(f"{where}: 'time' is not an ISO 8601 time: {value!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)  # the server writes UTC
    return (stamp - _EPOCH) // _MICROSECOND


def _data(record: dict[str, object], where: str) -> bytes:
    """The exact bytes of a data record: ``data_b64`` when present, else ``data``; plus ``eol``."""
    eol = record.get("eol")
    if eol not in _EOLS:
        raise CaptureError(f"{where}: 'eol' must be one of {_EOLS!r}, got {eol!r}")
    assert isinstance(eol, str)
    encoded = record.get("data_b64")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise CaptureError(f"{where}: 'data_b64' must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True) + eol.encode()
        except (binascii.Error, ValueError):
            raise CaptureError(f"{where}: 'data_b64' is not valid base64") from None
    text = record.get("data")
    if not isinstance(text, str):
        raise CaptureError(f"{where}: a data record needs 'data' (a string), got {text!r}")
    try:
        return text.encode("utf-8") + eol.encode()
    except UnicodeEncodeError:
        # A lone surrogate (\ud800): the server never writes one.
        raise CaptureError(f"{where}: 'data' holds a character that is not text") from None
