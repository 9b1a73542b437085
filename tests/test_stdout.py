"""The blocking stdout writes every model shares: whole batches, in order, whatever the kernel
takes per call; the right errors; and which descriptors may be written from the event loop."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from trio_echo.output.stdout import (
    StdoutClosed,
    StdoutError,
    never_blocks,
    on_local_disk,
    write_all,
    write_batch,
)


def _through_a_pipe(write: Callable[[int], None]) -> bytes:
    """What ``write(fd)`` wrote into a pipe that a thread drains in odd-sized reads (so that
    partial writes land mid-buffer)."""
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 7777):
            received.extend(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        write(write_fd)
    finally:
        os.close(write_fd)
        thread.join(timeout=10)
        os.close(read_fd)
    return bytes(received)


def test_write_batch_writes_every_item_in_order_through_partial_writes() -> None:
    # Far more than a pipe holds (64 KiB) and more items than one writev takes (1,024), so
    # writev returns short counts that end inside an item and the batch is written in parts.
    items = [bytes([i % 251]) * (1 + i % 300) for i in range(3000)]
    assert _through_a_pipe(lambda fd: write_batch(fd, items)) == b"".join(items)


def test_write_all_writes_one_large_buffer() -> None:
    data = os.urandom(1 << 20)
    assert _through_a_pipe(lambda fd: write_all(fd, data)) == data


def test_a_closed_reader_is_stdout_closed() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        with pytest.raises(StdoutClosed, match="broken pipe"):
            write_batch(write_fd, [b"a", b"b"])
    finally:
        os.close(write_fd)


def test_other_errors_are_stdout_errors(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "read-only", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(StdoutError, match="cannot write to stdout"):
            write_all(fd, b"x")
    finally:
        os.close(fd)


def test_only_dev_null_never_blocks(tmp_path: Path) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    read_fd, write_fd = os.pipe()
    file_fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        assert never_blocks(null)
        assert not never_blocks(write_fd)
        assert not never_blocks(file_fd)  # disk writeback can stall a write
        os.close(file_fd)
        assert not never_blocks(file_fd)  # closed: not a descriptor at all
    finally:
        for fd in (null, read_fd, write_fd):
            os.close(fd)


def test_a_file_on_a_local_disk_may_be_written_from_the_event_loop(tmp_path: Path) -> None:
    """By the file's device in the mount table: a local filesystem yes, a network one no, a
    device the table does not know (or no table at all, as on macOS) no; and never a pipe."""
    file_fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    read_fd, write_fd = os.pipe()
    try:
        st = os.fstat(file_fd)
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"

        def table(filesystem: str, dev: str = device) -> str:
            path = tmp_path / f"mountinfo-{filesystem}-{dev.replace(':', '-')}"
            path.write_text(
                "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
                f"23 1 {dev} / /data rw,relatime shared:1 - {filesystem} server:/x rw\n"
            )
            return str(path)

        assert on_local_disk(file_fd, table("ext4"))
        assert on_local_disk(file_fd, table("tmpfs"))
        assert not on_local_disk(file_fd, table("nfs4"))
        assert not on_local_disk(file_fd, table("fuse.sshfs"))
        assert not on_local_disk(file_fd, table("ext4", dev="999:999"))
        assert not on_local_disk(file_fd, str(tmp_path / "no-such-table"))
        assert not on_local_disk(write_fd, table("ext4"))
        if os.path.exists("/proc/self/mountinfo"):
            # This machine's own table knows where the test's temporary directory is.
            assert isinstance(on_local_disk(file_fd), bool)
    finally:
        for fd in (file_fd, read_fd, write_fd):
            os.close(fd)
