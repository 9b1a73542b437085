"""Making untrusted bytes safe for a terminal: :func:`clean` and its byte-level helpers.

Every unsafe character -- C0 and C1 controls, escape sequences, bidi overrides, line
separators, the BOM, invalid UTF-8 -- becomes a visible escape (``\\x1b``, ``\\u202e``), and
the backslash itself is escaped, so that an escape in the output can never be forged by a
client.  Pure and synchronous; text mode (:mod:`trio_echo.output.format`) calls it on every
line, so the common case -- printable ASCII -- costs one C pass and no Python loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["SAFE_ASCII", "SAFE_SCAN", "clean", "clean_bytes", "clean_unsafe", "fold_crlf"]


def _build_escape_table() -> dict[int, str]:
    """The ``str.translate`` table that makes decoded client text safe for a terminal.

    Why each entry: C0 controls (but ``\\n``, which only ever separates lines here), DEL and the
    C1 controls can clear the screen, move the cursor, set the window title or ring the bell;
    U+2028/U+2029 break lines in some terminals; the bidi marks, overrides and isolates reorder
    what a reader sees ("Trojan Source"); a BOM is invisible.  A backslash is doubled so that
    an escape we print can never be confused with the same characters sent literally by a
    client.  Bytes that are not valid
    UTF-8 arrive as lone surrogates (``surrogateescape``) and are shown as ``\\xNN``.
    """
    named = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0B: "\\v", 0x0C: "\\f", 0x0D: "\\r"}
    table: dict[int, str] = {}
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
        if code == 0x0A:
            continue
        table[code] = named.get(code, f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
    for code in [
        0x061C,  # ARABIC LETTER MARK
        0x200E,  # LEFT-TO-RIGHT MARK
        0x200F,  # RIGHT-TO-LEFT MARK
        0x2028,  # LINE SEPARATOR
        0x2029,  # PARAGRAPH SEPARATOR
        *range(0x202A, 0x202F),  # bidi embeddings and overrides
        *range(0x2066, 0x206A),  # bidi isolates
        0xFEFF,  # ZERO WIDTH NO-BREAK SPACE (BOM): invisible
    ]:
        table[code] = f"\\u{code:04x}"
    table[ord("\\")] = "\\\\"
    for byte in range(0x80, 0x100):
        table[0xDC00 + byte] = f"\\x{byte:02x}"
    return table


_ESCAPES = _build_escape_table()

# The bytes that clean() passes through unchanged: printable ASCII except the backslash, and
# \n.  ``data.translate(None, SAFE_ASCII)`` deletes them and leaves exactly the bytes that may
# need work: one C pass at about 4 GB/s (a regex character-class search runs at 0.5 GB/s), and
# its result, empty in the common case, says which bytes are there, not only whether.
SAFE_ASCII = bytes([0x0A, *range(0x20, 0x5C), *range(0x5D, 0x7F)])

# ``not data.translate(None, SAFE_ASCII)`` at memory speed, from the optional C extension
# (_safescan.c says why it exists), or None where it was not built.  Text mode's formatter
# uses it for the common case, a block that needs no work (--no-accelerator turns it off).
SAFE_SCAN: Callable[[bytes], bool] | None
try:
    from trio_echo.output._safescan import all_safe as SAFE_SCAN
except ImportError:  # installed without a C compiler: bytes.translate does the same test
    SAFE_SCAN = None
_ASCII = bytes(range(0x80))
_NON_ASCII = bytes(range(0x80, 0x100))

# The ASCII bytes that clean() escapes, each with its escape as bytes, from the one table above.
_ASCII_ESCAPES = {
    code: (bytes([code]), _ESCAPES[code].encode("ascii"))
    for code in range(0x80)
    if code in _ESCAPES
}

# The characters beyond ASCII that clean() escapes even in valid UTF-8: C1 controls, bidi marks,
# line separators, the BOM (not the lone surrogates, which stand for invalid bytes).  The UTF-8
# of each starts with one of a handful of lead bytes, and all of them are unprintable for
# str.isprintable() (categories Cc, Cf, Zl, Zp; a test checks it): two cheap ways to rule them
# out before the character class, whose search is the slowest test of all.
_ESCAPED_CHARS = [chr(code) for code in _ESCAPES if code >= 0x80 and not 0xD800 <= code < 0xE000]
_ESCAPED_LEADS = sorted({char.encode()[:1] for char in _ESCAPED_CHARS})
_ESCAPED_CHAR_CLASS = re.compile("[" + "".join(map(re.escape, _ESCAPED_CHARS)) + "]")


def clean(data: bytes) -> str:
    """Decode ``data`` as UTF-8 and make every unsafe character visible as an escape.

    The result contains no control character other than ``\\n`` (passed through untouched,
    callers split on it), so it is safe to write to a terminal.  Invalid UTF-8 is shown byte by
    byte as ``\\xNN`` instead of being dropped.

    This is the reference: the formatters compute ``clean(data).encode()`` faster, in bytes,
    with :func:`clean_bytes`, and come back here only for invalid UTF-8.
    """
    if not data.translate(None, SAFE_ASCII):
        return data.decode("ascii")
    return data.decode("utf-8", "surrogateescape").translate(_ESCAPES)


def clean_bytes(data: bytes) -> bytes:
    """``clean(data).encode()``, staying in bytes whenever it can (see :func:`clean_unsafe`)."""
    unsafe = data.translate(None, SAFE_ASCII)
    return clean_unsafe(data, unsafe) if unsafe else data


def clean_unsafe(data: bytes, unsafe: bytes) -> bytes:
    """``clean(data).encode()``, given ``unsafe = data.translate(None, SAFE_ASCII)``.

    ``str.translate`` with a dict costs some 35 ns per character (a KeyError is raised and
    caught inside for every character it leaves alone), so valid UTF-8 is escaped in bytes
    instead, with one ``bytes.replace`` (a C pass) per distinct escaped character: there are
    at most a few dozen, whatever the size of ``data``.  This is exact because every escape is
    printable ASCII and every escaped character is a whole UTF-8 character (a pattern that
    starts with an ASCII or a lead byte always matches a whole character of valid UTF-8).
    Invalid UTF-8, rare and shown byte by byte, takes the reference path.
    """
    escaped: set[str] = set()
    if not unsafe.isascii():
        try:
            data.decode("utf-8")  # validation at C speed; the str itself is not needed
            valid = True
        except UnicodeDecodeError:
            valid = False
        if not valid:
            # Out of the except clause: inside it, every KeyError str.translate raises and
            # catches internally would be chained to the pending exception, twice as slow.
            return clean(data).encode()
        # Deleting the ASCII bytes of valid UTF-8 removes whole characters only: what is left
        # is the UTF-8 of the other characters, in order, a quarter of the size for accented
        # text.
        escaped = _escaped_chars(unsafe.translate(None, _ASCII))
        unsafe = unsafe.translate(None, _NON_ASCII)
    if b"\\" in unsafe:
        # First, because the escapes below bring backslashes of their own.
        data = data.replace(b"\\", b"\\\\")
        unsafe = unsafe.replace(b"\\", b"")
    while unsafe:
        # One pass per distinct byte (at most 32 of them), not per occurrence: escape the
        # first one everywhere, then drop it from what is left to do.
        byte, escape = _ASCII_ESCAPES[unsafe[0]]
        data = data.replace(byte, escape)
        unsafe = unsafe.replace(byte, b"")
    for char in escaped:
        data = data.replace(char.encode(), _ESCAPES[ord(char)].encode("ascii"))
    return data


def _escaped_chars(non_ascii: bytes) -> set[str]:
    """The characters of ``non_ascii`` (valid UTF-8, no ASCII) that :func:`clean` escapes.
    Cheapest test first: a few lead byte searches (memchr), then ``str.isprintable`` (no false
    negative: every escaped character is unprintable), then the exact character class."""
    if not any(lead in non_ascii for lead in _ESCAPED_LEADS):
        return set()
    text = non_ascii.decode("utf-8")
    if text.isprintable():
        return set()
    return set(_ESCAPED_CHAR_CLASS.findall(text))


def fold_crlf(block: bytes) -> bytes:
    """``block`` with every CRLF turned into LF: the ``\\r`` belongs to the terminator.

    ``bytes.replace`` with a two-byte pattern runs at 0.7 GB/s, ten times slower than with one
    byte (memchr), so the common case -- every line ends in CRLF, no other ``\\r`` -- is done
    with one-byte patterns: delete every ``\\r``, and check that putting one back before every
    ``\\n`` gives the block again, which holds exactly in that case.
    """
    folded = block.replace(b"\r", b"")
    if folded.replace(b"\n", b"\r\n") == block:
        return folded
    return block.replace(b"\r\n", b"\n")
