"""The server's configuration: one frozen value, validated once, shared by every model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import attrs

from trio_echo.net.access import Network, to_networks
from trio_echo.net.tls import DEFAULT_HANDSHAKE_TIMEOUT
from trio_echo.output.format import DEFAULT_MAX_LINE, OutputFormat
from trio_echo.output.stamps import Timestamps

__all__ = ["DEFAULT_HOSTS", "DEFAULT_PORT", "DEFAULT_QUEUE_BYTES", "Config"]

# Total bytes of finished output that may wait for stdout.  Large enough that a fast stdout is
# never the bottleneck (a few batches in flight), small enough to keep memory flat when stdout
# stalls: with a stalled stdout the server holds at most this much plus one receive per client.
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024

# Loopback only, on both address families: a server that prints whatever it is sent should not
# be reachable from the network unless somebody asks for it (--host :: or --host 0.0.0.0).
DEFAULT_HOSTS = ("127.0.0.1", "::1")

# The port of the original article's experiment.
DEFAULT_PORT = 8888

# Bytes asked of the kernel per receive: one syscall moves up to this much, and it bounds the
# unprinted data a handler holds at once.
DEFAULT_RECEIVE_SIZE = 64 * 1024


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0 or math.isnan(value):
        raise ValueError(f"{attribute.name} must be zero or positive, got {value!r}")


def _optional_positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(_, attribute, value)


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _to_fds(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Everything that decides how a server behaves.

    Frozen so that a running server can hand it to every handler without anyone changing it
    underneath; the CLI builds one from the command line, embedders and tests build their own.
    """

    hosts: tuple[str, ...] = attrs.field(default=DEFAULT_HOSTS, converter=_to_tuple)
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    echo: bool = False
    quiet: bool = False
    output_format: OutputFormat = OutputFormat.TEXT
    grace: float = attrs.field(default=5.0, validator=_non_negative)
    idle_timeout: float | None = attrs.field(default=None, validator=_optional_positive)
    max_connections: int | None = attrs.field(default=None, validator=_optional_positive)
    max_line: int = attrs.field(default=DEFAULT_MAX_LINE)
    receive_size: int = attrs.field(default=DEFAULT_RECEIVE_SIZE, validator=_positive)
    queue_bytes: int = attrs.field(default=DEFAULT_QUEUE_BYTES, validator=_positive)
    # Hardening (trio model only; see README "Exposing the server").
    # Bytes one client may send in all; the next byte closes the connection.
    max_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    # Who may connect: see trio_echo.net.access.  Strings are parsed as CIDR blocks.
    allow: tuple[Network, ...] = attrs.field(default=(), converter=to_networks)
    deny: tuple[Network, ...] = attrs.field(default=(), converter=to_networks)
    # TLS: PEM files (the key may be in the certificate file); None serves plain TCP.
    tls_cert: str | None = None
    tls_key: str | None = attrs.field(default=None)
    tls_handshake_timeout: float = attrs.field(
        default=DEFAULT_HANDSHAKE_TIMEOUT, validator=_positive
    )
    # Scale-out (trio model only; see README "Behind a load balancer").
    # Every client starts with a PROXY protocol header (v1 or v2) naming the real client; one
    # without is refused.  --allow/--deny still apply to the connecting address (the balancer).
    proxy_protocol: bool = False
    # Inherited listening sockets (--fd, systemd's LISTEN_FDS) served instead of binding
    # hosts/port, which are then ignored.
    fds: tuple[int, ...] = attrs.field(default=(), converter=_to_fds)
    # Worker processes sharing the port (--workers; trio_echo.workers.supervisor); 1 serves here.
    workers: int = attrs.field(default=1, validator=_positive)
    # Set in a worker process: its number, on its log lines and its jsonl records, so that
    # (worker, conn) names a connection across the workers.
    worker_id: int | None = attrs.field(default=None, validator=_optional_positive)
    # Use the optional accelerators where the platform has them (the epoll readiness hub,
    # trio_echo.server.hub; splicing --raw output, trio_echo.output.splice); False reads
    # sockets through Trio alone and copies output (--no-accelerator).
    accelerate: bool = True
    # UDP (--udp; trio model only; trio_echo.server.datagram): serve datagrams on hosts/port
    # instead of TCP connections: one output record per datagram, --echo sends it back.
    udp: bool = False
    # Unix domain sockets and TCP keepalive (trio model only; see README "Unix domain sockets").
    # --unix: serve this socket path, or "@name" in Linux's abstract namespace, instead of
    # hosts/port (trio_echo.net.unix).
    unix: str | None = None
    # --unix-mode: the socket file's permission bits (None: as the umask makes them).
    unix_mode: int | None = attrs.field(default=None)
    # --keepalive: TCP keepalive after this many idle seconds on every accepted connection
    # (trio_echo.net.keepalive; None: the system's default, usually off).
    keepalive: int | None = attrs.field(default=None, validator=_optional_positive)

    @unix_mode.validator
    def _check_unix_mode(self, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and (self.unix is None or not 0 <= value <= 0o777):
            raise ValueError(f"unix_mode needs unix and permission bits, got {value!r}")

    @keepalive.validator
    def _check_unix_alone(self, attribute: attrs.Attribute[Any], value: int | None) -> None:
        # IP rules and TCP options mean nothing to a Unix socket's clients.
        if self.unix is not None and (value is not None or self.allow or self.deny):
            raise ValueError("allow, deny and keepalive are for TCP, not with unix")

    # Output for debugging a protocol (README "Hex dumps, timestamps, an output file").
    # --timestamps: the receive time before every text and hex line (None: no time).
    timestamps: Timestamps | None = None
    # Where --timestamps=relative counts from (time.monotonic_ns): when the configuration was
    # made, i.e. when the server started; --workers workers get the supervisor's with the rest.
    clock_origin: int = attrs.field(factory=time.monotonic_ns, eq=False)
    # --output: the file the output is appended to instead of stdout, reopened on SIGHUP.
    output: str | None = None
    # Observability (trio model; trio_echo.metrics): --metrics, the (host, port) of the
    # OpenMetrics endpoint; --stats-interval, seconds between two "stats:" lines on stderr.
    metrics: tuple[str, int] | None = None
    stats_interval: float | None = attrs.field(default=None, validator=_optional_positive)

    @max_line.validator
    def _check_max_line(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 4:
            raise ValueError(f"max_line must be at least 4 bytes, got {value!r}")

    @hosts.validator
    def _check_hosts(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError("at least one host is needed")

    @fds.validator
    def _check_fds(self, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
        if any(fd < 0 for fd in value) or len(set(value)) != len(value):
            raise ValueError(f"fds must be distinct, non-negative descriptors, got {value!r}")

    @tls_key.validator
    def _check_tls_key(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")

    def describe_mode(self) -> str:
        """``print, text`` / ``echo, quiet`` / ``print, raw, tls`` ...: what the start-up line
        says the server does."""
        what = "echo" if self.echo else "print"
        if self.echo and not self.quiet:
            what = "echo and print"
        mode = f"{what}, quiet" if self.quiet else f"{what}, {self.output_format.value}"
        if self.udp:
            mode = f"udp, {mode}"
        if self.tls_cert is not None:
            mode += ", tls"
        if self.proxy_protocol:
            mode += ", proxy protocol"
        return f"{mode}, {self.workers} workers" if self.workers > 1 else mode
