"""The optional C safety scan (:mod:`trio_echo.output._safescan`) gives the answers of the
pure-Python test it replaces, ``not data.translate(None, SAFE_ASCII)``, for every byte at every
position that its block loop treats differently, and for any input at all."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_echo.output import clean
from trio_echo.output.clean import SAFE_ASCII, SAFE_SCAN

# Where a C compiler is at hand (CI, this project's machines) the extension must have been
# built: a build that failed silently would leave it untested.  TRIO_ECHO_NO_SAFESCAN=1 says
# that an install without it is expected.
_COMPILER = shutil.which("cc") or shutil.which("gcc")
if SAFE_SCAN is None and _COMPILER and not os.environ.get("TRIO_ECHO_NO_SAFESCAN"):
    pytest.fail(
        f"trio_echo.output._safescan was not built, although {_COMPILER} exists "
        "(TRIO_ECHO_NO_SAFESCAN=1 if that is expected)",
        pytrace=False,
    )

scan = SAFE_SCAN
pytestmark = pytest.mark.skipif(scan is None, reason="built without the C safety scan")


def reference(data: bytes) -> bool:
    return not data.translate(None, SAFE_ASCII)


# Lengths around the scan's 64-byte blocks, and every byte value at the start, the middle and
# the end of a block, of the tail after the last whole block, and alone.
LENGTHS = [0, 1, 2, 63, 64, 65, 127, 128, 129, 200]


@pytest.mark.parametrize("length", LENGTHS)
def test_every_byte_at_every_kind_of_position(length: int) -> None:
    assert scan is not None
    filler = b"abc XYZ ~!{}[]\n" * 20
    base = filler[:length]
    assert scan(base) is True
    for position in sorted({0, length // 2, max(length - 1, 0), 63, 64, 65, 128}):
        if position >= max(length, 1):
            continue
        for value in range(256):
            data = base[:position] + bytes([value]) + base[position + 1 :]
            assert scan(data) is reference(data), (length, position, value)


def test_the_safe_set_is_exactly_safe_ascii() -> None:
    assert scan is not None
    assert [value for value in range(256) if scan(bytes([value]))] == list(SAFE_ASCII)


def test_takes_any_buffer_and_only_buffers() -> None:
    assert scan is not None
    assert scan(bytearray(b"hello\n")) is True
    assert scan(memoryview(b"x\x1by")[:1]) is True  # only the bytes of the view count
    assert scan(memoryview(b"x\x1by")) is False
    with pytest.raises(TypeError):
        scan("hello")  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=2))
def test_property_matches_translate(data: bytes, more: bytes) -> None:
    assert scan is not None
    for candidate in (data, data + more, b"safe line\n" * 13 + data):
        assert scan(candidate) is reference(candidate)


def test_clean_module_names_the_scan() -> None:
    # The formatter's default is the module's choice, so --no-accelerator (None) is the only
    # way to take the translate path where the extension exists.
    assert clean.SAFE_SCAN is scan


@pytest.mark.parametrize("timestamps", [None, "relative"])
@pytest.mark.parametrize("accelerate", [True, False])
def test_no_accelerator_reaches_the_formatter(accelerate: bool, timestamps: str | None) -> None:
    # The same output both ways; only the test that picks the path differs.
    from trio_echo.config import Config
    from trio_echo.connection import Connection
    from trio_echo.output.stamps import StampedTextFormatter, Timestamps
    from trio_echo.stats import ServerStats

    stamps = None if timestamps is None else Timestamps(timestamps)
    config = Config(accelerate=accelerate, timestamps=stamps)
    conn = Connection.open(config, ServerStats(), ("127.0.0.1", 5555), announce=False)
    assert conn.assembler is not None
    formatter = conn.assembler.formatter
    assert isinstance(formatter, StampedTextFormatter) is (timestamps is not None)
    assert formatter._scan is (scan if accelerate else None)
    out = conn.feed(b"hello\x1b[2J\n")
    assert out.endswith(b"[127.0.0.1:5555] hello\\x1b[2J\n")
