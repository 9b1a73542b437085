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
    """Splits the byte stream of a worker's pipe back into the payloads of its frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``, in order (maybe none)."""
        buffer = self._buffer
        buffer += data
        payloads: list[bytes] = []
        start = 0
        header = _HEADER.size
        while len(buffer) - start >= header:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + header + size
            if end > len(buffer):
                break
            payloads.append(bytes(buffer[start + header : end]))
            start = end
        del buffer[:start]
        return payloads

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame: at the end of the stream, what a worker that died in
        the middle of a write left behind (dropped: it may end inside a line)."""
        return len(self._buffer)
