"""How a ``--workers`` worker hands its output to the supervisor: length-prefixed frames.

A worker's stdout is a pipe to the supervisor, written by the worker's one stdout writer in
batches of whole output items (lines, events, raw receives).  The supervisor reads the pipes of
all its workers, in pieces of whatever size the kernel gives, and writes stdout alone; to keep
every item whole it must know where a batch ends, so each batch goes as one frame: a 4-byte
big-endian length, then the batch.  The supervisor writes a frame's payload only once it has
all of it, so lines of different workers never mix inside a line.
"""

from __future__ import annotations

import struct

__all__ = ["FrameDecoder", "frame_header"]

_HEADER = struct.Struct("!I")


def frame_header(size: int) -> bytes:
    """The header of a frame of ``size`` bytes of payload."""
    return _HEADER.pack(size)


class FrameDecoder:
    """Splits the byte stream of a worker's pipe back into the payloads of its frames.

    Copies as little as it can, since everything a worker prints passes through here: a read
    that is exactly a payload (the supervisor asks for :meth:`wanted` bytes) is passed on as
    it is; a payload in several reads is joined once.
    """

    def __init__(self) -> None:
        self._header = b""
        self._size: int | None = None  # the payload's, once its header is complete
        self._parts: list[bytes] = []
        self._have = 0

    def wanted(self) -> int:
        """Bytes to the end of the current header or payload: what to read next."""
        if self._size is None:
            return _HEADER.size - len(self._header)
        return self._size - self._have

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``, in order (maybe none)."""
        payloads: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._size is None:
                take = min(_HEADER.size - len(self._header), end - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) == _HEADER.size:
                    (self._size,) = _HEADER.unpack(self._header)
                    self._header = b""
            else:
                take = min(self._size - self._have, end - pos)
                self._parts.append(data if take == end else data[pos : pos + take])
                self._have += take
                pos += take
            if self._size is not None and self._have == self._size:
                parts = self._parts
                payloads.append(parts[0] if len(parts) == 1 else b"".join(parts))
                self._size, self._parts, self._have = None, [], 0
        return payloads

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame: at the end of the stream, what a worker that died in
        the middle of a write left behind (dropped: it may end inside a line)."""
        return len(self._header) + (_HEADER.size if self._size is not None else 0) + self._have
