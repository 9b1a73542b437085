"""The article's experiment: four gentle clients, each sending a line at a steady pace.

It counts how many of each client's lines the server printed while all four were connected (the
blocking server of the article prints only the first client's).  The clients are Python
sockets, not the C load generator: a line every so often needs no speed, and Python can read the
server's stdout alongside (:class:`_PipeLines`).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Any

from trio_echo.bench.scenarios.base import Context, Result
from trio_echo.bench.scenarios.common import guard
from trio_echo.models import Model

__all__ = ["article"]


class _PipeLines:
    """Reads a server's stdout pipe to EOF in a thread, so the server never blocks on it."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := self._pipe.read1(65536):
            with self._lock:
                self._data += chunk

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def close(self) -> None:
        self._thread.join(5)
        self._pipe.close()


def article(ctx: Context, model: Model) -> Result:
    """Four clients connected at once, each sending a line at a steady pace; count how many of
    each client's lines the server printed *while all were connected* (the blocking server of
    the article prints only the first client's; the others' lines wait in the kernel)."""
    sizes = ctx.sizes

    def run() -> Result:
        with ctx.server(model, ["--format", "text"], stdout=subprocess.PIPE) as server:
            out = _PipeLines(server.proc.stdout)
            clients: list[socket.socket] = []
            try:
                for _ in range(sizes.article_clients):
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    clients.append(sock)
                names = [f"[127.0.0.1:{c.getsockname()[1]}]" for c in clients]
                for i in range(sizes.article_lines):
                    for n, sock in enumerate(clients):
                        sock.sendall(f"client{n} line{i}\n".encode())
                    time.sleep(sizes.article_interval)
                # Let the last lines through, then count before anybody leaves.
                deadline = time.monotonic() + max(1.0, sizes.article_interval * 4)
                expected = sizes.article_clients * sizes.article_lines
                while time.monotonic() < deadline and out.data.count(b"\n") < expected:
                    time.sleep(0.01)
                snapshot = out.data.decode(errors="replace").splitlines()
            finally:
                for sock in clients:
                    sock.close()
                server.stop()
                out.close()
        served = [sum(1 for line in snapshot if line.startswith(name + " ")) for name in names]
        return Result(
            {
                "clients": sizes.article_clients,
                "lines_per_client": sizes.article_lines,
                "interval_s": sizes.article_interval,
                "lines_served": served,
                "clients_fully_served": sum(1 for n in served if n == sizes.article_lines),
            }
        )

    return guard(run)
