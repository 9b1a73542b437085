"""The blocking stdout writes every model shares: whole batches, in order, whatever the kernel
takes per call; the right errors; and which descriptors may be written from the event loop."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from trio_echo.stdout import StdoutClosed, StdoutError, never_blocks, write_all, write_batch


def _drain(fd: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 7777):  # an odd size: partial writes land mid-buffer
            into.extend(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_write_batch_writes_every_item_in_order_through_partial_writes() -> None:
    # Far more than a pipe holds (64 KiB) and more items than one writev takes (1,024), so
    # writev returns short counts that end inside an item and the batch is written in parts.
    items = [bytes([i % 251]) * (1 + i % 300) for i in range(3000)]
    read_fd, write_fd = os.pipe()
    received = bytearray()
    thread = _drain(read_fd, received)
    try:
        write_batch(write_fd, items)
    finally:
        os.close(write_fd)
        thread.join(timeout=10)
        os.close(read_fd)
    assert bytes(received) == b"".join(items)


def test_write_all_writes_one_large_buffer() -> None:
    data = os.urandom(1 << 20)
    read_fd, write_fd = os.pipe()
    received = bytearray()
    thread = _drain(read_fd, received)
    try:
        write_all(write_fd, data)
    finally:
        os.close(write_fd)
        thread.join(timeout=10)
        os.close(read_fd)
    assert bytes(received) == data


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
