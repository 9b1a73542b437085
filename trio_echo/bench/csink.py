"""``c-sink``: the bench's C reference for raw streaming (``sink.c``, compiled on first use).

Why: "how fast can a print server take one client's stream" has an answer that does not depend
on Python: a C loop of ``read``/``write`` through one 64 KiB buffer, which is what ``nc -l``
does.  The raw streaming target (issue 16) is the trio model's MB/s over this one's, measured
in the same bench run (``bench --models trio,threads,c-sink --scenarios stream_raw,stream_into``).

Built like the load generator (:func:`trio_echo.bench.loadgen.build`): the source ships as
package data, compiled with ``cc -O2`` into the same cache, keyed by the source's hash.  It only
streams raw bytes to stdout: every scenario that needs anything else is skipped for it.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from trio_echo.bench.loadgen import CFLAGS, compile_cached

__all__ = ["C_SINK", "SUMMARY", "UNSUPPORTED", "WHY_UNSUPPORTED", "build", "command"]

C_SINK = "c-sink"
SUMMARY = (
    "reference: a C server that accepts one client at a time and copies what it sends to "
    "stdout with read()/write() through a 64 KiB buffer (sink.c): the raw streaming ceiling"
)
# Every flag of the bench's scenarios but --raw (what it does anyway).
UNSUPPORTED = frozenset(
    {"--echo", "--quiet", "--format", "--grace", "--max-connections", "--idle-timeout"}
)
WHY_UNSUPPORTED = "the C sink only copies raw bytes to stdout"
SOURCE_NAME = "sink.c"


def build() -> Path:
    """The compiled sink, compiling it if its source is new (into a temporary file renamed
    into place, so two bench runs at once never run a half-written binary)."""
    code = resources.files(__package__).joinpath(SOURCE_NAME).read_bytes()
    digest = hashlib.sha256(code + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return compile_cached(code, SOURCE_NAME, CFLAGS, f"sink-{digest}", "the C sink")


def command() -> list[str]:
    """The sink's command line (on a free port)."""
    return [str(build()), "-p", "0"]
