"""Microbenchmark of the output path: 64 KiB receives through ``LineAssembler.feed``.

This measures what the server does per receive in text mode, and nothing else: the bytes arrive
as ``receive_some(65536)`` hands them over (chunk boundaries land in the middle of a line), go
through ``LineAssembler(TextFormatter(peer)).feed`` and the outputs are joined into batches of
about 1 MiB, as the stdout writer does.  No sockets, no Trio, no I/O: one core, pure CPU.

    /work/venv/bin/python tools/bench_output.py            # every case, about 1 s each
    /work/venv/bin/python tools/bench_output.py -s 3 64B   # cases whose name contains "64B"
    /work/venv/bin/python tools/bench_output.py --profile 4KiB

Figures are the best of several passes (the usual timeit practice: the minimum is the run least
disturbed by the rest of the machine); ``lines/s`` counts input lines, ``MB/s`` input bytes.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run from a checkout without installing: the package is next to tools/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trio_echo.output.format import (
    Formatter,
    JsonlFormatter,
    LineAssembler,
    TextFormatter,
    format_peer,
)

RECEIVE = 64 * 1024  # what the server asks receive_some for
BATCH = 1024 * 1024  # the writer writes at most this much at a time
STREAM = 8 * 1024 * 1024  # bytes per pass: large enough for per-receive costs to dominate
PEER = format_peer(("127.0.0.1", 53422))


def _lines(length: int, alphabet: str, eol: bytes = b"\n") -> bytes:
    """A stream of about ``STREAM`` bytes of ``length``-byte lines (terminator included).

    Lines differ from one another (a rotating window over ``alphabet``) so that nothing can
    get lucky with identical lines.  Lines are cut between characters, never inside one, and
    padded with dots: the UTF-8 cases are valid UTF-8.
    """
    body = length - len(eol)
    source = alphabet * (body // len(alphabet) + 2)
    count = STREAM // length
    out = []
    for i in range(count):
        line = source[i % len(alphabet) :].encode()[:body].decode("utf-8", "ignore").encode()
        out.append(line.ljust(body, b".") + eol)
    return b"".join(out)


ASCII = bytes(range(0x20, 0x7F)).replace(b"\\", b"").decode()  # printable, no backslash
ACCENTS = "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë. "
TYPOGRAPHY = "“Quotes” — and it’s fine… a non\u00a0breaking space, 20 °C, 5 €. "
CONTROLS = "col1\tcol2\t\x1b[1mbold\x1b[0m plain text with a tab\tand an escape " * 2


def _latin1() -> bytes:
    """Accented text sent as Latin-1: not UTF-8, every accent is shown as ``\\xNN``."""
    return _lines(128, ACCENTS.replace("œ", "oe")).decode().encode("latin-1")


def _text() -> Formatter:
    return TextFormatter(PEER)


def _jsonl() -> Formatter:
    return JsonlFormatter(1, PEER)


# name -> (the stream, the formatter factory)
CASES: dict[str, tuple[Callable[[], bytes], Callable[[], Formatter]]] = {
    "64B ascii": (lambda: _lines(64, ASCII), _text),
    "128B ascii": (lambda: _lines(128, ASCII), _text),
    "4KiB ascii": (lambda: _lines(4096, ASCII), _text),
    "64B crlf": (lambda: _lines(64, ASCII, b"\r\n"), _text),
    "128B utf8-accents": (lambda: _lines(128, ACCENTS), _text),
    "4KiB utf8-accents": (lambda: _lines(4096, ACCENTS), _text),
    "128B utf8-typography": (lambda: _lines(128, TYPOGRAPHY), _text),
    "128B tab+esc": (lambda: _lines(128, CONTROLS), _text),
    "128B latin-1 (info)": (_latin1, _text),
    "64B jsonl (info)": (lambda: _lines(64, ASCII), _jsonl),
}


def _chunks(stream: bytes) -> list[bytes]:
    """``stream`` in 64 KiB receives, shifted by half a line so that boundaries fall mid-line
    (with lines that divide 64 KiB they would otherwise all fall on a line end)."""
    shift = stream.find(b"\n") // 2
    bounds = [0, *range(shift, len(stream), RECEIVE), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _one_pass(chunks: list[bytes], formatter: Callable[[], Formatter]) -> int:
    """Feed every chunk through a fresh assembler, joining outputs as the writer does; returns
    the number of output bytes (so that nothing is optimised away, and as a sanity figure)."""
    assembler = LineAssembler(formatter())
    total = 0
    batch: list[bytes] = []
    size = 0
    for chunk in chunks:
        out = assembler.feed(chunk)
        batch.append(out)
        size += len(out)
        if size >= BATCH:
            total += len(b"".join(batch))
            batch, size = [], 0
    batch.append(assembler.finish())
    return total + len(b"".join(batch))


def measure(name: str, seconds: float) -> tuple[float, float, float]:
    """Best pass time, lines/s and MB/s for case ``name``, running about ``seconds``."""
    make, formatter = CASES[name]
    stream = make()
    chunks = _chunks(stream)
    lines = stream.count(b"\n")
    _one_pass(chunks, formatter)  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    passes = 0
    while passes < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        _one_pass(chunks, formatter)
        best = min(best, time.perf_counter() - start)
        passes += 1
    return best, lines / best, len(stream) / best / 1e6


def profile(name: str) -> None:
    make, formatter = CASES[name]
    chunks = _chunks(make())
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        _one_pass(chunks, formatter)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help="substrings of case names (default: all)")
    parser.add_argument("-s", "--seconds", type=float, default=1.0, help="per case")
    parser.add_argument("--profile", action="store_true", help="cProfile the cases instead")
    args = parser.parse_args()
    names = [n for n in CASES if not args.cases or any(c in n for c in args.cases)]
    if args.profile:
        for name in names:
            print(f"== {name}")
            profile(name)
        return
    print(f"{'case':<22} {'pass ms':>9} {'lines/s':>12} {'MB/s':>9}   (8 MiB, 64 KiB receives)")
    for name in names:
        best, lines_per_s, mb_per_s = measure(name, args.seconds)
        print(f"{name:<22} {best * 1e3:9.2f} {lines_per_s:12,.0f} {mb_per_s:9,.0f}")


if __name__ == "__main__":
    main()
