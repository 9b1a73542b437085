"""The comparison lab: the same server in several concurrency models, behind one CLI.

Every model is a module with ``run(config) -> Outcome``: it listens (``trio_echo.net.bind``),
serves until SIGINT/SIGTERM, and reports alike (``trio_echo.stats``, ``trio_echo.logs``), using
the shared output module for cleaning, line assembly and formats.  Errors it cannot recover
from (``ListenError``, ``StdoutClosed``, ``StdoutError``) propagate to the CLI, which turns them
into one line and an exit status.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import attrs

from trio_echo.config import Config
from trio_echo.lifecycle import Outcome

__all__ = [
    "DATAGRAM_FLAGS",
    "HARDENING_FLAGS",
    "MODELS",
    "OUTPUT_FILE_FLAGS",
    "SCALE_OUT_FLAGS",
    "UNIX_FLAGS",
    "Model",
]

# The flags for exposing the server (TLS, access control, a byte limit per connection): the trio
# model's, refused by the others, which stay minimal and side by side comparable.  The warning
# about a non-loopback address is shared (trio_echo.net.bind).
HARDENING_FLAGS = frozenset(
    {"--tls-cert", "--tls-key", "--tls-handshake-timeout", "--allow", "--deny", "--max-bytes"}
)

# Serving behind a load balancer (--proxy-protocol), inherited listening sockets (--fd,
# systemd socket activation) and worker processes (--workers): the trio model's too.
SCALE_OUT_FLAGS = frozenset({"--proxy-protocol", "--fd", "--workers"})

# Where the trio model reads its sockets from (its epoll accelerator, or Trio alone).
TRIO_FLAGS = frozenset({"--no-accelerator"})

# UDP (--udp, trio_echo.server.datagram): the trio model's.
DATAGRAM_FLAGS = frozenset({"--udp"})

# Unix domain sockets and TCP keepalive (trio_echo.net.unix, trio_echo.net.keepalive): the trio
# model's.
UNIX_FLAGS = frozenset({"--unix", "--unix-mode", "--keepalive"})

# The output file that SIGHUP reopens (--output): the trio app's writer (trio-stock shares it).
OUTPUT_FILE_FLAGS = frozenset({"--output"})

# Seeing inside a running server (trio_echo.metrics): the trio app's observers (trio-stock
# shares them).
METRICS_FLAGS = frozenset({"--metrics", "--stats-interval"})

TRIO_ONLY = (
    HARDENING_FLAGS
    | SCALE_OUT_FLAGS
    | TRIO_FLAGS
    | DATAGRAM_FLAGS
    | UNIX_FLAGS
    | OUTPUT_FILE_FLAGS
    | METRICS_FLAGS
)


@attrs.frozen
class Model:
    """One concurrency model of the lab."""

    name: str
    summary: str
    # "package.module:function" of its run(config) -> Outcome, imported only when used.
    entry: str
    # Flags (as on the command line) this model cannot honour; the CLI refuses them.
    unsupported: frozenset[str] = frozenset()
    # A module that must be importable for the model to exist here (e.g. "uvloop").
    requires: str | None = None

    def available(self) -> str | None:
        """``None`` if the model can run here, else why not (one line)."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed (pip install 'trio-echo[bench]')"
        return None

    def load(self) -> Callable[[Config], Outcome]:
        module, _, function = self.entry.partition(":")
        run: Callable[[Config], Outcome] = getattr(importlib.import_module(module), function)
        return run


MODELS: dict[str, Model] = {
    model.name: model
    for model in [
        Model(
            "trio",
            "the core server: a nursery of handler tasks, cancel scopes for the graceful shutdown",
            "trio_echo.server.app:run_trio",
        ),
        Model(
            "trio-stock",
            "the trio model's server and handler on Trio's stock SocketListener and "
            "SocketStream (what serve_tcp gives), to show what our fast stream gains",
            "trio_echo.models.trio_stock:run",
            unsupported=frozenset({"--fd", "--workers"}) | DATAGRAM_FLAGS | UNIX_FLAGS,
        ),
        Model(
            "anyio-trio",
            "anyio's idiom (MultiListener.serve in a task group, cancel scopes for the "
            "shutdown) on the trio backend (needs anyio: the bench extra)",
            "trio_echo.models.anyio_model:run_trio",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
            requires="anyio",
        ),
        Model(
            "anyio-asyncio",
            "the anyio-trio model's code on anyio's asyncio backend (needs anyio: the bench extra)",
            "trio_echo.models.anyio_model:run_asyncio",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
            requires="anyio",
        ),
        Model(
            "asyncio",
            "asyncio streams (start_server), a task per connection kept in a set; "
            "cancelled when --grace is over",
            "trio_echo.models.asyncio_streams:run",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
        ),
        Model(
            "asyncio-protocol",
            "asyncio's fastest form: loop.create_server with a BufferedProtocol, flow control "
            "by hand (pause_reading while stdout is full or the echo is unread)",
            "trio_echo.models.asyncio_protocol:run",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
        ),
        Model(
            "uvloop",
            "the asyncio model on uvloop's event loop (needs uvloop: the bench extra)",
            "trio_echo.models.asyncio_streams:run_uvloop",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
            requires="uvloop",
        ),
        Model(
            "uvloop-protocol",
            "the asyncio-protocol model on uvloop's event loop (needs uvloop: the bench extra)",
            "trio_echo.models.asyncio_protocol:run_uvloop",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
            requires="uvloop",
        ),
        Model(
            "asyncio-sock",
            "the article's asyncio form, loop.sock_accept/sock_recv on raw sockets, "
            "its tasks kept in a set",
            "trio_echo.models.asyncio_sock:run",
            unsupported=TRIO_ONLY,
        ),
        Model(
            "gevent",
            "gevent's StreamServer, a greenlet per client in a Pool, gevent's own sockets "
            "(no monkey-patching); killed when --grace is over (needs gevent: the bench extra)",
            "trio_echo.models.gevent_model:run",
            unsupported=TRIO_ONLY,
            requires="gevent",
        ),
        Model(
            "threads",
            "a thread per connection; when --grace is over, shutdown(SHUT_RDWR) wakes them",
            "trio_echo.models.threads:run",
            unsupported=TRIO_ONLY,
        ),
        Model(
            "sync",
            "the article's blocking server: one client at a time, the next waits (the "
            "problem); --grace is for the current client; a stalled stdout blocks it until "
            "a second signal",
            "trio_echo.models.sync:run",
            unsupported=frozenset({"--max-connections"}) | TRIO_ONLY,
        ),
    ]
}
