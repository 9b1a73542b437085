"""Unit and property tests for :mod:`trio_echo.output.format`: cleaning, formatting, line
assembly."""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import os
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_echo.output.clean import SAFE_SCAN
from trio_echo.output.format import (
    DEFAULT_MAX_LINE,
    Formatter,
    JsonlFormatter,
    LineAssembler,
    OutputFormat,
    TextFormatter,
    clean,
    format_peer,
)

PEER = "127.0.0.1:53422"
TEXT_PREFIX = f"[{PEER}] ".encode()
CONT_PREFIX = f"[{PEER}]+ ".encode()
STAMP = "2024-01-02T03:04:05.000006+00:00"
CONN_ID = 7

C1 = range(0x80, 0xA0)
LINE_SEPARATORS = (0x2028, 0x2029)
BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
INVISIBLE = (0xFEFF,)
FORBIDDEN = {*range(0x20), 0x7F, *C1, *LINE_SEPARATORS, *BIDI, *INVISIBLE} - {0x0A}

# The property tests' example counts are divided by this in the default suite, which must stay
# well under five minutes; `nox -s stress` runs them again at their full counts (scale 1).
PROPERTY_SCALE = max(1, int(os.environ.get("TRIO_ECHO_PROPERTY_SCALE", "4")))


def examples(count: int) -> int:
    """``count`` examples at full scale, a quarter of them (at least 50) by default."""
    return max(50, count // PROPERTY_SCALE)


# --------------------------------------------------------------------------------------------
# Helpers


def text_assembler(max_line: int = DEFAULT_MAX_LINE) -> LineAssembler:
    return LineAssembler(TextFormatter(PEER), max_line)


def jsonl_assembler(max_line: int = DEFAULT_MAX_LINE) -> LineAssembler:
    return LineAssembler(JsonlFormatter(CONN_ID, PEER, now=lambda: STAMP), max_line)


def run(assembler: LineAssembler, chunks: list[bytes]) -> bytes:
    """Feed ``chunks`` one by one, then finish; the whole output."""
    out = [assembler.feed(chunk) for chunk in chunks]
    out.append(assembler.finish())
    return b"".join(out)


def parse_jsonl(out: bytes) -> list[dict[str, object]]:
    assert out == b"" or out.endswith(b"\n")
    return [json.loads(line) for line in out.decode("ascii").splitlines()]


def raw_data(event: dict[str, object]) -> bytes:
    """The exact bytes of one jsonl data event (``data_b64`` wins when present)."""
    if "data_b64" in event:
        return base64.b64decode(str(event["data_b64"]), validate=True)
    return str(event["data"]).encode("utf-8")


def reconstruct(events: list[dict[str, object]]) -> bytes:
    return b"".join(
        raw_data(e) + str(e["eol"]).encode("ascii") for e in events if e["event"] == "data"
    )


_NAMED_ESCAPES = {"a": 0x07, "b": 0x08, "t": 0x09, "v": 0x0B, "f": 0x0C, "r": 0x0D, "\\": 0x5C}


def unclean(text: str) -> bytes:
    """Inverse of :func:`clean`: the bytes a cleaned string stands for.

    ``\\xNN`` is byte NN (a C0 control or DEL, or a byte that is not valid UTF-8), ``\\uNNNN`` is
    that code point in UTF-8, the named escapes are their control byte, ``\\\\`` a backslash.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        kind = text[i + 1]
        if kind == "x":
            digits = text[i + 2 : i + 4]
            assert len(digits) == 2
            out.append(int(digits, 16))
            i += 4
        elif kind == "u":
            digits = text[i + 2 : i + 6]
            assert len(digits) == 4
            out += chr(int(digits, 16)).encode("utf-8")
            i += 6
        else:
            out.append(_NAMED_ESCAPES[kind])
            i += 2
    return bytes(out)


def text_lines(out: bytes) -> list[tuple[bool, bytes]]:
    """Split text output into ``(continued, raw piece bytes)``, checking the line format."""
    assert out == b"" or out.endswith(b"\n")
    result = []
    for line in out.split(b"\n")[:-1]:
        if line.startswith(CONT_PREFIX):
            result.append((True, unclean(line[len(CONT_PREFIX) :].decode("utf-8"))))
        else:
            assert line.startswith(TEXT_PREFIX), line
            result.append((False, unclean(line[len(TEXT_PREFIX) :].decode("utf-8"))))
    return result


# --------------------------------------------------------------------------------------------
# Strategies

# Fragments that hit every interesting case: line ends, CR at odd places, multi-byte UTF-8 (2, 3
# and 4 bytes), invalid UTF-8, controls, backslashes, the Unicode characters that must be escaped.
_FRAGMENTS = [
    b"a",
    b"xyz",
    b"\n",
    b"\r",
    b"\r\n",
    b"\\",
    b"\x00",
    b"\x1b[2J",
    b"\x7f",
    "é".encode(),
    "€".encode(),
    "😀".encode(),
    "\x85".encode(),
    "\u2028".encode(),
    "\u202e".encode(),
    "\u2067".encode(),
    "\u2066\u2068\u2069\u202a\u202c\u2029".encode(),
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xff",
    b"\xed\xa0\x80",
    b"0123456789abcdefghij",
    "é€😀é€😀".encode(),
]

streams = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=80).map(b"".join),
)
max_lines = st.one_of(st.integers(min_value=4, max_value=16), st.just(DEFAULT_MAX_LINE))


Case = tuple[int, bytes, list[bytes]]  # max_line, the stream, the same stream in chunks


def _split(draw: st.DrawFn, data: bytes, extra_cuts: list[int]) -> list[bytes]:
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12))
    bounds = [0, *sorted([*cuts, *extra_cuts]), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]  # empty chunks included


@st.composite
def general_cases(draw: st.DrawFn) -> Case:
    """Any stream, cut at arbitrary points, with a small or the default line limit."""
    data = draw(streams)
    return draw(max_lines), data, _split(draw, data, [])


# What may end a line's content right at the limit: nothing special, a multi-byte character
# (which the cut must not split), a CR (which may or may not be half of a CRLF), garbage.
_TAILS = [b"", "é".encode(), "€".encode(), "😀".encode(), b"\r", b"\r\r", b"\x80\x80", b"\xf0"]
_EOLS = [b"\n", b"\r\n", b"\r\r\n", b"\r", b""]


@st.composite
def near_limit_cases(draw: st.DrawFn) -> Case:
    """Lines of about ``max_line`` bytes (or twice that), split right after a CR now and then.

    These are the edge cases of piece cutting: a line exactly at the limit followed by a CRLF
    whose LF arrives in the next receive, a multi-byte character straddling the limit, ...
    """
    max_line = draw(st.integers(min_value=4, max_value=16))
    parts = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        length = draw(
            st.sampled_from([max_line - 1, max_line, max_line + 1, 2 * max_line, 2 * max_line + 1])
        )
        tail = draw(st.sampled_from(_TAILS))
        filler = draw(st.sampled_from([b"x", "é".encode()]))
        body = (filler * length)[: max(0, length - len(tail))]
        parts.append(body + tail + draw(st.sampled_from(_EOLS)))
    data = b"".join(parts)
    after_cr = [i + 1 for i, byte in enumerate(data) if byte == ord("\r")]
    extra = draw(st.lists(st.sampled_from(after_cr), max_size=3)) if after_cr else []
    return max_line, data, _split(draw, data, extra)


cases = st.one_of(general_cases(), near_limit_cases())


# --------------------------------------------------------------------------------------------
# clean()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x1b", "\\x1b"),
        (b"\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\a"),
        (b"\x07", "\\a"),
        (b"\x00", "\\x00"),
        (b"\x08", "\\b"),
        (b"\t", "\\t"),
        (b"\x0b", "\\v"),
        (b"\x0c", "\\f"),
        (b"\r", "\\r"),
        (b"\x7f", "\\x7f"),
        (b"\\", "\\\\"),
        (b"a\\x1b", "a\\\\x1b"),
        (b"\n", "\n"),
        ("\x85".encode(), "\\u0085"),
        ("\x9b".encode(), "\\u009b"),
        ("\u2028".encode(), "\\u2028"),
        ("\u2029".encode(), "\\u2029"),
        ("\u202e".encode(), "\\u202e"),
        ("\u2066".encode(), "\\u2066"),
        (b"\xff", "\\xff"),
        (b"a\xc3", "a\\xc3"),
        (b"\xc3(", "\\xc3("),
        (b"\xc0\xaf", "\\xc0\\xaf"),
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),
        (b"\x80\x80", "\\x80\\x80"),
        ("é€😀".encode(), "é€😀"),
        ("é\x1b😀".encode(), "é\\x1b😀"),
        (b"\xff" + "é".encode(), "\\xffé"),
    ],
)
def test_clean_examples(raw: bytes, expected: str) -> None:
    assert clean(raw) == expected


@pytest.mark.parametrize("code", sorted(FORBIDDEN))
def test_clean_escapes_every_forbidden_code_point(code: int) -> None:
    raw = chr(code).encode("utf-8")
    out = clean(b"<" + raw + b">")
    assert out.startswith("<\\")
    assert out.endswith(">")
    assert not any(ord(c) in FORBIDDEN for c in out)
    assert out.isascii()
    assert unclean(out) == b"<" + raw + b">"


@pytest.mark.parametrize("code", sorted(FORBIDDEN))
def test_clean_escape_spelling(code: int) -> None:
    named = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0B: "\\v", 0x0C: "\\f", 0x0D: "\\r"}
    if code in named:
        expected = named[code]
    elif code < 0x80:
        expected = f"\\x{code:02x}"
    else:
        expected = f"\\u{code:04x}"
    assert clean(chr(code).encode("utf-8")) == expected


def test_clean_printable_ascii_passes_through() -> None:
    printable = bytes(b for b in range(0x20, 0x7F) if b != ord("\\")) + b"\n"
    assert clean(printable) == printable.decode("ascii")
    # Same characters through the slow path (forced by one non-ASCII character).
    assert clean(printable + "é".encode()) == printable.decode("ascii") + "é"


@pytest.mark.parametrize("byte", range(0x80, 0x100))
def test_clean_shows_every_lone_high_byte(byte: int) -> None:
    assert clean(b"a" + bytes([byte]) + b"b") == f"a\\x{byte:02x}b"


def test_clean_does_not_drop_invalid_bytes_between_valid_characters() -> None:
    assert clean("é".encode() + b"\xfe\xfe" + "€".encode()) == "é\\xfe\\xfe€"


def test_clean_escapes_cannot_be_forged() -> None:
    # A client sending the text of an escape must not look like the control it stands for.
    assert clean(b"\\x1b") != clean(b"\x1b")
    assert clean(b"\\u202e") != clean("\u202e".encode())
    assert clean(b"\\xff") != clean(b"\xff")


@settings(max_examples=examples(300))
@given(st.one_of(st.binary(max_size=64), streams))
def test_clean_property_safe_and_lossless(data: bytes) -> None:
    out = clean(data)
    assert not any(ord(c) in FORBIDDEN for c in out)
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in out)  # encodable, no lone surrogates
    assert out.count("\n") == data.count(b"\n")
    assert unclean(out) == data  # injective: nothing dropped, nothing ambiguous


@settings(max_examples=examples(200))
@given(st.text(max_size=40))
def test_clean_property_valid_text_keeps_harmless_characters(text: str) -> None:
    out = clean(text.encode("utf-8", "surrogatepass"))
    for char in text:
        code = ord(char)
        if code in FORBIDDEN or char == "\\" or 0xD800 <= code <= 0xDFFF:
            continue
        assert char in out


# --------------------------------------------------------------------------------------------
# format_peer()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("127.0.0.1", 53422), "127.0.0.1:53422"),
        (("::1", 5, 0, 0), "[::1]:5"),
        (("fe80::1%eth0", 80, 0, 2), "[fe80::1%eth0]:80"),
        ("/tmp/sock", "/tmp/sock"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_format_peer(address: object, expected: str) -> None:
    assert format_peer(address) == expected


# --------------------------------------------------------------------------------------------
# Formatter basics


def test_output_format_values() -> None:
    assert {f.value for f in OutputFormat} == {"text", "raw", "jsonl", "hex"}
    assert OutputFormat("jsonl") is OutputFormat.JSONL


def test_base_formatter_is_abstract() -> None:
    formatter = Formatter()
    with pytest.raises(NotImplementedError):
        formatter.block(b"x\n")
    with pytest.raises(NotImplementedError):
        formatter.piece(b"x", b"\n", False)
    assert formatter.opened() == b""
    assert formatter.closed(1, 0.5, "eof") == b""


def test_text_formatter_prints_no_events() -> None:
    formatter = TextFormatter(PEER)
    assert formatter.opened() == b""
    assert formatter.closed(10, 1.0, "eof") == b""


@pytest.mark.parametrize("max_line", [-1, 0, 3])
def test_assembler_rejects_tiny_max_line(max_line: int) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        LineAssembler(TextFormatter(PEER), max_line)


def test_assembler_accepts_max_line_4() -> None:
    assert text_assembler(4).feed("😀😀\n".encode()) == (
        TEXT_PREFIX + "😀".encode() + b"\n" + CONT_PREFIX + "😀".encode() + b"\n"
    )


# --------------------------------------------------------------------------------------------
# Text mode


def test_text_hello() -> None:
    peer = format_peer(("127.0.0.1", 53422))
    assembler = LineAssembler(TextFormatter(peer))
    assert assembler.feed(b"hello\n") == b"[127.0.0.1:53422] hello\n"
    assert assembler.finish() == b""


def test_text_ipv6_peer() -> None:
    assembler = LineAssembler(TextFormatter(format_peer(("::1", 5, 0, 0))))
    assert assembler.feed(b"hi\n") == b"[[::1]:5] hi\n"


def test_text_several_lines_in_one_receive() -> None:
    assert text_assembler().feed(b"one\ntwo\n\nthree\n") == (
        TEXT_PREFIX + b"one\n" + TEXT_PREFIX + b"two\n" + TEXT_PREFIX + b"\n"
        + TEXT_PREFIX + b"three\n"
    )  # fmt: skip


def test_text_crlf_is_stripped() -> None:
    assert text_assembler().feed(b"hello\r\nworld\r\n") == (
        TEXT_PREFIX + b"hello\n" + TEXT_PREFIX + b"world\n"
    )


def test_text_crlf_split_across_receives() -> None:
    assembler = text_assembler()
    assert assembler.feed(b"hello\r") == b""
    assert assembler.feed(b"\n") == TEXT_PREFIX + b"hello\n"


def test_text_lone_and_doubled_cr_are_escaped() -> None:
    assert text_assembler().feed(b"a\rb\n") == TEXT_PREFIX + b"a\\rb\n"
    assert text_assembler().feed(b"a\r\r\n") == TEXT_PREFIX + b"a\\r\n"
    assert text_assembler().feed(b"x\ra\r\r\nb\r\n") == (
        TEXT_PREFIX + b"x\\ra\\r\n" + TEXT_PREFIX + b"b\n"
    )


def test_text_escapes_terminal_attacks() -> None:
    out = text_assembler().feed(b"\x1b]0;title\x07\x1b[2J" + "\u202e\x9b".encode() + b"\x7f\n")
    assert out == TEXT_PREFIX + b"\\x1b]0;title\\a\\x1b[2J\\u202e\\u009b\\x7f\n"


def test_text_partial_line_waits_for_newline() -> None:
    assembler = text_assembler()
    assert assembler.feed(b"hel") == b""
    assert assembler.feed(b"lo") == b""
    assert assembler.feed(b"\nwor") == TEXT_PREFIX + b"hello\n"
    assert assembler.finish() == TEXT_PREFIX + b"wor\n"
    assert assembler.finish() == b""


def test_text_finish_without_pending_prints_nothing() -> None:
    assembler = text_assembler()
    assert assembler.finish() == b""
    assembler.feed(b"done\n")
    assert assembler.finish() == b""


def test_text_finish_prints_trailing_cr() -> None:
    assembler = text_assembler()
    assembler.feed(b"last\r")
    assert assembler.finish() == TEXT_PREFIX + b"last\\r\n"


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_text_utf8_character_split_across_receives(char: str) -> None:
    encoded = char.encode()
    for split in range(1, len(encoded)):
        assembler = text_assembler()
        assert assembler.feed(b"x" + encoded[:split]) == b""
        assert assembler.feed(encoded[split:] + b"y\n") == TEXT_PREFIX + f"x{char}y\n".encode()


def test_text_utf8_character_one_byte_per_receive() -> None:
    data = "é€😀\n".encode()
    assert run(text_assembler(), [bytes([b]) for b in data]) == TEXT_PREFIX + data


def test_text_long_line_is_cut_into_pieces() -> None:
    out = text_assembler(8).feed(b"abcdefghijklmnopqrst\nnext\n")
    assert out == (
        TEXT_PREFIX + b"abcdefgh\n" + CONT_PREFIX + b"ijklmnop\n" + CONT_PREFIX + b"qrst\n"
        + TEXT_PREFIX + b"next\n"
    )  # fmt: skip


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_text_long_line_after_short_lines_in_one_receive(eol: bytes) -> None:
    # The long line is not the first of the receive: it must not escape cutting.
    out = text_assembler(4).feed(b"a" + eol + b"bc" + eol + b"0123456789" + eol + b"d" + eol)
    assert out == (
        TEXT_PREFIX + b"a\n" + TEXT_PREFIX + b"bc\n" + TEXT_PREFIX + b"0123\n"
        + CONT_PREFIX + b"4567\n" + CONT_PREFIX + b"89\n" + TEXT_PREFIX + b"d\n"
    )  # fmt: skip


def test_jsonl_long_line_after_short_line_in_one_receive() -> None:
    events = parse_jsonl(jsonl_assembler(4).feed(b"a\r\n0123456789\r\n"))
    assert [(e["data"], e["eol"], e.get("continued", False)) for e in events] == [
        ("a", "\r\n", False),
        ("0123", "", False),
        ("4567", "", True),
        ("89", "\r\n", True),
    ]


def test_text_line_of_exactly_max_line_is_not_cut() -> None:
    assert text_assembler(8).feed(b"abcdefgh\n") == TEXT_PREFIX + b"abcdefgh\n"
    assert text_assembler(8).feed(b"abcdefgh\r\n") == TEXT_PREFIX + b"abcdefgh\n"
    assembler = text_assembler(8)
    assert assembler.feed(b"abcdefgh\r") == b""
    assert assembler.feed(b"\n") == TEXT_PREFIX + b"abcdefgh\n"


def test_text_line_of_max_line_plus_one() -> None:
    expected = TEXT_PREFIX + b"abcdefgh\n" + CONT_PREFIX + b"i\n"
    assert text_assembler(8).feed(b"abcdefghi\n") == expected
    assert text_assembler(8).feed(b"abcdefghi\r\n") == expected
    # The first piece is printed as soon as the line is certainly too long.
    assembler = text_assembler(8)
    assert assembler.feed(b"abcdefghi") == TEXT_PREFIX + b"abcdefgh\n"
    assert assembler.feed(b"\n") == CONT_PREFIX + b"i\n"


def test_text_cr_at_the_limit_is_not_counted_until_known() -> None:
    # 8 bytes then CR: the CR may belong to a CRLF, so nothing is printed yet ...
    assembler = text_assembler(8)
    assert assembler.feed(b"abcdefgh\r") == b""
    # ... and when more data shows it was content, the line is cut as usual.
    assert assembler.feed(b"x\n") == TEXT_PREFIX + b"abcdefgh\n" + CONT_PREFIX + b"\\rx\n"


def test_text_continuation_resets_after_line_end() -> None:
    assembler = text_assembler(4)
    assert assembler.feed(b"abcdef") == TEXT_PREFIX + b"abcd\n"
    assert assembler.feed(b"\nxy\n") == CONT_PREFIX + b"ef\n" + TEXT_PREFIX + b"xy\n"
    assert assembler.feed(b"abcdefgh") == TEXT_PREFIX + b"abcd\n"
    assert assembler.finish() == CONT_PREFIX + b"efgh\n"
    assert assembler.feed(b"z\n") == TEXT_PREFIX + b"z\n"


@pytest.mark.parametrize(
    ("line", "pieces"),
    [
        # é is 2 bytes, at offsets 7-8: the cut goes before it.
        ("abcdefgé123", ["abcdefg", "é123"]),
        # € is 3 bytes, at offsets 6-8.
        ("abcdef€123", ["abcdef", "€123"]),
        # 😀 is 4 bytes, at offsets 5-8: the largest back-off.
        ("abcde😀123", ["abcde", "😀123"]),
        # A character ending exactly at the limit is not moved.
        ("abcd😀123", ["abcd😀", "123"]),
        ("😀😀😀", ["😀😀", "😀"]),
        ("éééééé", ["éééé", "éé"]),
        ("€€€€", ["€€", "€€"]),
    ],
)
def test_text_cut_never_splits_a_utf8_character(line: str, pieces: list[str]) -> None:
    expected = b"".join(
        (CONT_PREFIX if i else TEXT_PREFIX) + piece.encode() + b"\n"
        for i, piece in enumerate(pieces)
    )
    data = line.encode() + b"\n"
    assert text_assembler(8).feed(data) == expected
    # Same pieces when the line arrives byte by byte.
    assert run(text_assembler(8), [bytes([b]) for b in data]) == expected


def test_text_cut_of_invalid_utf8_still_makes_progress() -> None:
    # Only continuation bytes: no character start to back off to, cut at the limit anyway.
    out = run(text_assembler(4), [b"\x80" * 10 + b"\n"])
    assert out == (
        TEXT_PREFIX + b"\\x80" * 4 + b"\n" + CONT_PREFIX + b"\\x80" * 4 + b"\n"
        + CONT_PREFIX + b"\\x80" * 2 + b"\n"
    )  # fmt: skip


def test_text_pending_is_bounded_byte_by_byte() -> None:
    max_line = 8
    assembler = text_assembler(max_line)
    for byte in ("x€é😀\r" * 20).encode():
        assembler.feed(bytes([byte]))
        assert len(assembler._pending) <= max_line + 1


def test_text_pending_is_bounded_with_trailing_cr() -> None:
    assembler = text_assembler(4)
    assembler.feed(b"abcd\r")
    assert assembler._pending == b"abcd\r"
    assembler.feed(b"\r")
    assert len(assembler._pending) <= 5


def test_ten_megabytes_without_newline_in_one_receive() -> None:
    size = 10 * 1024 * 1024
    assembler = text_assembler()
    out = assembler.feed(b"x" * size)
    assert len(assembler._pending) <= DEFAULT_MAX_LINE + 1
    lines = out.split(b"\n")[:-1]
    assert len(lines) == size // DEFAULT_MAX_LINE - 1
    assert lines[0] == TEXT_PREFIX + b"x" * DEFAULT_MAX_LINE
    assert all(line == CONT_PREFIX + b"x" * DEFAULT_MAX_LINE for line in lines[1:])
    assert assembler.finish() == CONT_PREFIX + b"x" * DEFAULT_MAX_LINE + b"\n"
    assert assembler._pending == b""


def test_ten_megabytes_without_newline_in_receives() -> None:
    size = 10 * 1024 * 1024
    receive = 64 * 1024 - 3  # not a multiple of max_line, so the cuts wander through receives
    assembler = text_assembler()
    chunk = b"y" * receive
    pieces = 0
    fed = 0
    while fed < size:
        part = chunk[: size - fed]
        out = assembler.feed(part)
        fed += len(part)
        assert len(assembler._pending) <= DEFAULT_MAX_LINE + 1
        for line in out.split(b"\n")[:-1]:
            expected_prefix = CONT_PREFIX if pieces else TEXT_PREFIX
            assert line == expected_prefix + b"y" * DEFAULT_MAX_LINE
            pieces += 1
    out = assembler.finish()
    assert out == CONT_PREFIX + b"y" * DEFAULT_MAX_LINE + b"\n"
    assert pieces + 1 == size // DEFAULT_MAX_LINE


# --------------------------------------------------------------------------------------------
# JSONL mode


def test_jsonl_open_and_close_events() -> None:
    formatter = JsonlFormatter(3, PEER, now=lambda: STAMP)
    opened = formatter.opened()
    assert opened.endswith(b"\n")
    assert opened.count(b"\n") == 1
    assert json.loads(opened) == {"time": STAMP, "event": "open", "conn": 3, "peer": PEER}
    closed = formatter.closed(1234, 1.23456789, "eof")
    assert closed.count(b"\n") == 1
    assert json.loads(closed) == {
        "time": STAMP,
        "event": "close",
        "conn": 3,
        "peer": PEER,
        "bytes": 1234,
        "duration": 1.234568,
        "reason": "eof",
    }


def test_jsonl_default_clock_is_utc_iso8601() -> None:
    formatter = JsonlFormatter(1, PEER)
    before = datetime.datetime.now(datetime.timezone.utc)
    event = json.loads(formatter.opened())
    after = datetime.datetime.now(datetime.timezone.utc)
    stamp = datetime.datetime.fromisoformat(str(event["time"]))
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert before - datetime.timedelta(seconds=1) <= stamp <= after + datetime.timedelta(seconds=1)


def test_jsonl_data_events() -> None:
    out = jsonl_assembler().feed(b"hello\nworld\r\n")
    assert parse_jsonl(out) == [
        {"time": STAMP, "event": "data", "conn": CONN_ID, "peer": PEER, "data": "hello",
         "eol": "\n"},
        {"time": STAMP, "event": "data", "conn": CONN_ID, "peer": PEER, "data": "world",
         "eol": "\r\n"},
    ]  # fmt: skip


def test_jsonl_last_line_without_newline() -> None:
    assembler = jsonl_assembler()
    assert assembler.feed(b"tail") == b""
    events = parse_jsonl(assembler.finish())
    assert [(e["data"], e["eol"]) for e in events] == [("tail", "")]


def test_jsonl_long_line_pieces_are_marked_continued() -> None:
    events = parse_jsonl(jsonl_assembler(4).feed(b"abcdefghij\r\nxy\n"))
    assert [(e["data"], e["eol"], e.get("continued", False)) for e in events] == [
        ("abcd", "", False),
        ("efgh", "", True),
        ("ij", "\r\n", True),
        ("xy", "\n", False),
    ]


def test_jsonl_invalid_utf8_has_exact_base64() -> None:
    events = parse_jsonl(jsonl_assembler().feed(b"a\xffb\xc3\n"))
    (event,) = events
    assert event["data"] == "a\ufffdb\ufffd"
    assert base64.b64decode(str(event["data_b64"])) == b"a\xffb\xc3"
    assert event["eol"] == "\n"


def test_jsonl_valid_utf8_has_no_base64() -> None:
    (event,) = parse_jsonl(jsonl_assembler().feed("é€😀\n".encode()))
    assert event["data"] == "é€😀"
    assert "data_b64" not in event


def test_jsonl_escapes_all_controls_including_del() -> None:
    data = bytes(range(0x20)).replace(b"\n", b"") + b"\x7f" + "\x85\u2028\u202e".encode() + b"\n"
    out = jsonl_assembler().feed(data)
    assert out.isascii()
    assert b"\x7f" not in out
    body = out[:-1]
    assert not any(b < 0x20 for b in body)
    (event,) = parse_jsonl(out)
    assert raw_data(event) == data[:-1]


def test_jsonl_closed_event_has_no_raw_controls_for_odd_reason() -> None:
    out = JsonlFormatter(1, PEER, now=lambda: STAMP).closed(0, 0.0, "bad\x7f\x1b\u2028")
    assert out.isascii()
    assert out.count(b"\n") == 1
    assert b"\x7f" not in out
    assert b"\x1b" not in out
    assert json.loads(out)["reason"] == "bad\x7f\x1b\u2028"


def test_jsonl_reconstruction_example() -> None:
    data = b"one\r\ntwo\n\xff\xfe\r\r\n" + "😀".encode() * 5 + b"\r"
    events = parse_jsonl(run(jsonl_assembler(6), [data[:5], data[5:17], data[17:]]))
    assert reconstruct(events) == data


# --------------------------------------------------------------------------------------------
# Property tests


@settings(max_examples=examples(300), deadline=None)
@given(cases)
def test_property_text_chunking_does_not_matter(case: Case) -> None:
    max_line, data, chunks = case
    assert run(text_assembler(max_line), chunks) == run(text_assembler(max_line), [data])


@settings(max_examples=examples(300), deadline=None)
@given(cases)
def test_property_jsonl_chunking_does_not_matter(case: Case) -> None:
    max_line, data, chunks = case
    assert run(jsonl_assembler(max_line), chunks) == run(jsonl_assembler(max_line), [data])


@settings(max_examples=examples(300), deadline=None)
@given(cases)
def test_property_text_output_is_safe(case: Case) -> None:
    max_line, _, chunks = case
    text = run(text_assembler(max_line), chunks).decode("utf-8")  # strict: must be valid
    bad = [f"U+{ord(c):04X}" for c in text if ord(c) in FORBIDDEN]
    assert not bad
    assert not any(unicodedata.category(c) == "Cs" for c in text)


@settings(max_examples=examples(300), deadline=None)
@given(cases)
def test_property_text_line_structure(case: Case) -> None:
    max_line, data, chunks = case
    out = run(text_assembler(max_line), chunks)
    assert out == b"" or out.endswith(b"\n")
    lines = out.split(b"\n")[:-1]
    assert all(line.startswith((TEXT_PREFIX, CONT_PREFIX)) for line in lines)
    # One output line per input line at least; a non-empty stream always prints something.
    assert len(lines) >= data.count(b"\n")
    assert bool(lines) == bool(data)
    pieces = text_lines(out)
    assert all(len(raw) <= max_line for _, raw in pieces)
    if pieces:
        assert not pieces[0][0]  # the first line is never a continuation


@settings(max_examples=examples(300), deadline=None)
@given(cases)
def test_property_jsonl_is_lossless(case: Case) -> None:
    max_line, data, chunks = case
    out = run(jsonl_assembler(max_line), chunks)
    assert out.isascii()
    assert b"\x7f" not in out
    assert not any(b < 0x20 for b in out.replace(b"\n", b""))
    events = parse_jsonl(out)
    for event in events:
        assert event["event"] == "data"
        assert event["time"] == STAMP
        assert event["conn"] == CONN_ID
        assert event["peer"] == PEER
        assert event["eol"] in ("", "\n", "\r\n")
        assert isinstance(event["data"], str)
        if "data_b64" in event:
            raw = raw_data(event)
            assert event["data"] == raw.decode("utf-8", "replace")
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
        assert set(event) <= {"time", "event", "conn", "peer", "data", "data_b64", "eol",
                              "continued"}  # fmt: skip
    assert reconstruct(events) == data
    assert sum(e["eol"] != "" for e in events) == data.count(b"\n")


@settings(max_examples=examples(300), deadline=None)
@given(cases)
def test_property_pieces_respect_the_limit(case: Case) -> None:
    max_line, _, chunks = case
    events = parse_jsonl(run(jsonl_assembler(max_line), chunks))
    for i, event in enumerate(events):
        raw = raw_data(event)
        assert len(raw) <= max_line
        if event.get("continued"):
            # A continuation only ever follows a piece cut at the limit.
            assert i > 0
            assert events[i - 1]["eol"] == ""
        if event["eol"] == "" and i + 1 < len(events):
            # A piece without terminator that is not the last one was cut at the limit: it goes
            # on, and it was cut as late as possible (at most 3 bytes backed off).
            assert events[i + 1].get("continued") is True
            assert len(raw) >= max_line - 3
            assert "\n" not in str(event["data"])


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=60), max_lines, st.data())
def test_property_valid_utf8_is_never_split(text: str, max_line: int, data: st.DataObject) -> None:
    encoded = text.encode("utf-8", "surrogatepass")
    # Lone surrogates are not valid UTF-8; keep the property about valid input.
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError:
        return
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=6)))
    bounds = [0, *cuts, len(encoded)]
    chunks = [encoded[a:b] for a, b in itertools.pairwise(bounds)]
    events = parse_jsonl(run(jsonl_assembler(max_line), chunks))
    assert all("data_b64" not in e for e in events)
    assert "".join(str(e["data"]) + str(e["eol"]) for e in events) == text
    # The text output shows every piece as valid UTF-8 too.
    for _, raw in text_lines(run(text_assembler(max_line), chunks)):
        raw.decode("utf-8")


@settings(max_examples=examples(200), deadline=None)
@given(cases)
def test_property_text_and_jsonl_print_the_same_pieces(case: Case) -> None:
    max_line, _, chunks = case
    pieces = text_lines(run(text_assembler(max_line), chunks))
    events = parse_jsonl(run(jsonl_assembler(max_line), chunks))
    assert pieces == [(bool(e.get("continued")), raw_data(e)) for e in events]


@settings(max_examples=examples(200), deadline=None)
@given(cases)
def test_property_pending_is_bounded(case: Case) -> None:
    max_line, _, chunks = case
    assembler = text_assembler(max_line)
    for chunk in chunks:
        assembler.feed(chunk)
        assert len(assembler._pending) <= max_line + 1
        assert b"\n" not in assembler._pending
    assembler.finish()
    assert assembler._pending == b""


# --------------------------------------------------------------------------------------------
# The fast paths against a straightforward reference
#
# LineAssembler and TextFormatter work a whole receive at a time with bytes primitives (see the
# comments in trio_echo/output.py); the reference below does the same job the obvious way, line
# by line and piece by piece, with clean() on each.  They must agree to the byte.


def _reference_cut(content: bytes, max_line: int) -> int:
    """Where the first piece of an over-long ``content`` ends: as late as possible within the
    limit, but at the start of a character (at most 3 bytes back), else at the limit."""
    for cut in range(max_line, max_line - 4, -1):
        if content[cut] & 0xC0 != 0x80:
            return cut
    return max_line


def reference_pieces(data: bytes, max_line: int) -> list[tuple[bool, bytes, bytes]]:
    """``(continued, content, eol)`` for every piece of the whole stream ``data``."""
    pieces = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines):
        at_eof = number == len(lines) - 1
        if at_eof and not line:
            break
        if at_eof:
            content, eol = line, b""  # a last line without newline: a trailing \r is data
        elif line.endswith(b"\r"):
            content, eol = line[:-1], b"\r\n"
        else:
            content, eol = line, b"\n"
        continued = False
        while len(content) > max_line:
            cut = _reference_cut(content, max_line)
            pieces.append((continued, content[:cut], b""))
            content, continued = content[cut:], True
        pieces.append((continued, content, eol))
    return pieces


def reference_text(data: bytes, max_line: int) -> bytes:
    return b"".join(
        (CONT_PREFIX if continued else TEXT_PREFIX) + clean(content).encode("utf-8") + b"\n"
        for continued, content, _ in reference_pieces(data, max_line)
    )


# What the fast paths care about: runs of printable ASCII (the common case, taken in one go),
# lines of all lengths around the limit, CRLF and lone CR, every kind of byte clean() escapes,
# valid UTF-8 that needs no escape (including lead bytes shared with escaped characters, and
# unprintable characters that are not escaped) and invalid UTF-8.
_FAST_FRAGMENTS = [
    *_FRAGMENTS,
    b"The quick brown fox jumps over the lazy dog. ",
    b"\n",
    b"\r\n",
    b"\r\n",
    b"\t",
    b"\\\\",
    b"\\x1b",
    "’“”—…".encode(),  # E2 80 xx: the lead bytes of U+2028 and the bidi marks
    "\u00a0\u00b0\u00ad".encode(),  # C2 xx: the lead byte of C1; NBSP, soft hyphen unprintable
    "\ufeff\u061c\u200e\u2069\u0085\u009f".encode(),
    "\ufeffx\u00a0".encode(),
    "ﻻ\ufffd".encode(),  # EF xx xx that is no BOM
]

fast_streams = st.lists(
    st.one_of(
        st.sampled_from(_FAST_FRAGMENTS),
        st.binary(max_size=8),
        st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
        # A long run of printable ASCII: lines near or over the limit.
        st.integers(0, 70).map(lambda n: b"abcdefghij" * (n // 10) + b"xyz"[: n % 3]),
    ),
    max_size=60,
).map(b"".join)


@st.composite
def fast_cases(draw: st.DrawFn) -> Case:
    """Streams rich in what the fast paths distinguish, with limits from tiny to the default
    and chunkings from one byte at a time to the whole stream at once."""
    data = draw(fast_streams)
    max_line = draw(st.one_of(max_lines, st.integers(min_value=4, max_value=80)))
    return max_line, data, _split(draw, data, [])


@st.composite
def many_lines_cases(draw: st.DrawFn) -> Case:
    """Many lines no longer than a small limit, in few receives, so that a receive holds many
    windows' worth of lines; among them, now and then, one line just over the limit or just at
    it plus a CR (which is not too long), or a partial line at the end."""
    max_line = draw(st.integers(min_value=4, max_value=12))
    fillers = st.sampled_from([b"x", "é".encode(), b"\t", b"\r"])
    eols = st.sampled_from([b"\n", b"\r\n"])
    short = st.tuples(st.integers(min_value=0, max_value=max_line), fillers, eols)
    lines = [
        (filler * n)[:n] + eol for n, filler, eol in draw(st.lists(short, min_size=1, max_size=50))
    ]
    special = draw(st.sampled_from([None, b"x", "é".encode(), b"\r"]))
    if special is not None:
        extra = draw(st.sampled_from([b"y", b"\r"]))
        line = (special * max_line)[:max_line] + extra + draw(eols)
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), line)
    data = b"".join(lines)
    if draw(st.booleans()):
        data += b"z" * draw(st.integers(min_value=0, max_value=2 * max_line))  # a partial line
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=2)))
    bounds = [0, *cuts, len(data)]
    return max_line, data, [data[a:b] for a, b in itertools.pairwise(bounds)]


all_cases = st.one_of(cases, fast_cases(), many_lines_cases())


@settings(max_examples=examples(1000), deadline=None)
@given(st.one_of(cases, fast_cases()))
def test_property_text_matches_reference(case: Case) -> None:
    max_line, data, chunks = case
    assert run(text_assembler(max_line), chunks) == reference_text(data, max_line)


@settings(max_examples=examples(1000), deadline=None)
@given(many_lines_cases())
def test_property_text_many_lines_match_reference(case: Case) -> None:
    max_line, data, chunks = case
    assert run(text_assembler(max_line), chunks) == reference_text(data, max_line)


@settings(max_examples=examples(300), deadline=None)
@given(all_cases)
def test_property_jsonl_pieces_match_reference(case: Case) -> None:
    max_line, data, chunks = case
    events = parse_jsonl(run(jsonl_assembler(max_line), chunks))
    got = [(bool(e.get("continued")), raw_data(e), str(e["eol"]).encode()) for e in events]
    assert got == reference_pieces(data, max_line)


@pytest.mark.parametrize("scan", [SAFE_SCAN, None], ids=["c-scan", "translate"])
@settings(max_examples=examples(1000), deadline=None)
@given(fast_streams)
def test_property_text_block_matches_reference(
    scan: Callable[[bytes], bool] | None, data: bytes
) -> None:
    # One block, as feed() hands it over: whole lines of any content (the limit is the
    # assembler's business, so the reference gets one that cuts nothing).  With the C safety
    # scan (where it was built) and without it (--no-accelerator).
    block = data + b"\n"
    assert TextFormatter(PEER, scan=scan).block(block) == reference_text(block, len(block))


@settings(max_examples=examples(1000), deadline=None)
@given(st.one_of(fast_streams, st.binary(max_size=64), streams))
def test_property_piece_cleaning_matches_clean(data: bytes) -> None:
    content = data.replace(b"\n", b"")  # a piece never holds a newline
    for continued, prefix in [(False, TEXT_PREFIX), (True, CONT_PREFIX)]:
        expected = prefix + clean(content).encode() + b"\n"
        assert TextFormatter(PEER).piece(content, b"", continued) == expected


@pytest.mark.parametrize("code", sorted(c for c in FORBIDDEN if c >= 0x80))
def test_escaped_non_ascii_characters_are_unprintable(code: int) -> None:
    # The fast path rules escaped characters out with str.isprintable(): that is only exact if
    # every one of them is unprintable.
    assert not chr(code).isprintable()


@pytest.mark.parametrize(
    "block",
    [
        b"a\r\nb\r\n",  # every line CRLF: the one-byte fast fold
        b"a\r\nb\n",  # mixed terminators
        b"a\rb\r\n",  # a lone CR as well
        b"a\r\r\n",  # a CR that is data, then a CRLF
        b"\r\n\r\n",
        b"\r\r\n\n",
        b"\t\\\r\n\x1b\r\n",
    ],
)
def test_text_block_crlf_folding(block: bytes) -> None:
    assert TextFormatter(PEER).block(block) == reference_text(block, len(block))


@pytest.mark.parametrize("receive", [64, 1000, 4096, 65536, 65537])
@pytest.mark.parametrize("length", [1, 63, 64, 4095, DEFAULT_MAX_LINE, DEFAULT_MAX_LINE + 1])
def test_text_receives_of_long_and_short_lines_match_reference(receive: int, length: int) -> None:
    # The window walk over whole receives, with the default limit: lines just under, at and
    # over it, short lines around them, receives that cut anywhere.
    lines = [b"x" * length, b"short", "é".encode() * (length // 2), b"y" * length + b"\r", b""]
    data = b"\n".join(lines * 3) + b"tail"
    chunks = [data[i : i + receive] for i in range(0, len(data), receive)]
    assert run(text_assembler(), chunks) == reference_text(data, DEFAULT_MAX_LINE)
