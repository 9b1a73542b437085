"""Blocking writes to stdout, shared by every model (no Trio in here: the ``sync`` and
``threads`` models use it without an event loop).

The descriptor stays blocking: making stdout non-blocking would change its *open file
description*, which is shared with stderr on the same terminal and with the parent shell (see
writer.py).  Callers that must not block run these in a worker thread, or only call them on a
descriptor that never blocks (:func:`never_blocks`).
"""

from __future__ import annotations

import errno
import os
import select
import stat
from collections.abc import Sequence

__all__ = [
    "WRITE_BATCH_BYTES",
    "StdoutClosed",
    "StdoutError",
    "never_blocks",
    "on_local_disk",
    "write_all",
    "write_batch",
]

# One writev per batch of at most this many bytes: big enough to amortise the thread hop,
# small enough that the budget it frees comes back to the handlers often.
WRITE_BATCH_BYTES = 1024 * 1024

# writev() takes at most this many buffers per call (IOV_MAX on Linux and the BSDs).
_IOV_MAX = 1024


class StdoutClosed(Exception):
    """The reader of stdout went away (EPIPE): nobody can see our output any more."""


class StdoutError(Exception):
    """Writing stdout failed for another reason (EIO, ENOSPC, ...)."""


def never_blocks(fd: int) -> bool:
    """True if writes to ``fd`` can never block: it is ``/dev/null``.

    Then the Trio writer writes from the event loop itself instead of paying a worker-thread
    hand-off per batch (a measurable share of streaming at GB/s, docs/performance.md).  Pipes,
    terminals, sockets and files (disk writeback can stall a write) keep the thread.
    """
    try:
        st = os.fstat(fd)
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev
    except OSError:
        return False


# Filesystems whose writes land in this machine's page cache: a write to a file there returns
# once the bytes are copied, unless the kernel holds the writer back because too much is
# waiting for the disk (see on_local_disk).  Network and FUSE filesystems are not here: a
# write there may wait for a server, for as long as it is unreachable.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "zfs"}
    | {"tmpfs", "ramfs", "overlay"}
)


def on_local_disk(fd: int, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True if ``fd`` is a regular file on a local filesystem (:data:`LOCAL_FILESYSTEMS`).

    Then the Trio writer may write it from the event loop, like ``/dev/null`` (measured in
    docs/performance.md: the worker thread's hand-off and the queue in between cost a third
    of streaming into a file), watching each write's time.  Known from the mount table by the
    file's device (Linux); False where there is none, or when unsure: the thread is the safe
    way."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        with open(mountinfo, encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,..."
                fields, _, filesystem = line.partition(" - ")
                parts = fields.split()
                if len(parts) > 2 and parts[2] == device:
                    return filesystem.split(" ", 1)[0] in LOCAL_FILESYSTEMS
    except (OSError, ValueError):
        pass
    return False


def _write(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
    """One ``write``/``writev``, errors translated; 0 if the descriptor is non-blocking and
    full (someone else set O_NONBLOCK on the shared file description): then wait for it."""
    try:
        if len(buffers) == 1:
            return os.write(fd, buffers[0])
        return os.writev(fd, buffers[:_IOV_MAX])
    except BlockingIOError:
        select.select([], [fd], [])
        return 0
    except BrokenPipeError as exc:
        raise StdoutClosed("stdout was closed by its reader (broken pipe)") from exc
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise StdoutClosed("stdout was closed by its reader (broken pipe)") from exc
        raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from exc


def write_batch(fd: int, items: Sequence[bytes]) -> None:
    """Write all of ``items``, in order, blocking; one ``writev`` per up to 1,024 items in the
    common case, so a batch is never copied into one big buffer first.

    Raises :class:`StdoutClosed` on EPIPE, :class:`StdoutError` on other errors.
    """
    pending: list[bytes | memoryview] = list(items)
    while pending:
        written = _write(fd, pending)
        # Drop what was written whole; keep the rest of a partly written buffer.
        done = 0
        while done < len(pending) and written >= len(pending[done]):
            written -= len(pending[done])
            done += 1
        del pending[:done]
        if written:
            pending[0] = memoryview(pending[0])[written:]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``, blocking (see :func:`write_batch`)."""
    write_batch(fd, (data,))
