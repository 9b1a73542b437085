"""What the lab's newer models do beyond the shared behaviours of ``test_models.py``.

``trio-stock`` is the trio server on Trio's stock listeners and streams: the trio model's
features (``--allow``/``--deny``, ``--max-connections``) work on it unchanged.  The anyio
model runs on anyio's trio backend.
"""

from __future__ import annotations

import socket

import pytest
from conftest import peer_name, recv_eof

from trio_echo.config import Config
from trio_echo.models import MODELS

anyio_model = pytest.importorskip("trio_echo.models.anyio_model")


def test_trio_stock_applies_deny_before_serving(start_server, connect):
    server = start_server("--model", "trio-stock", "--deny", "127.0.0.1")
    denied = connect(server.port, socket.AF_INET)
    assert recv_eof(denied) == b""  # closed at once, unserved
    allowed = connect(server.port, socket.AF_INET6)
    allowed.sendall(b"printed\n")
    server.wait_stdout(f"[{peer_name(allowed)}] printed\n".encode())
    allowed.close()
    assert server.stop() == 0
    assert f"[{peer_name(denied)}]".encode() not in server.all_stdout()


def test_trio_stock_max_connections_makes_the_next_client_wait(start_server, connect):
    server = start_server("--model", "trio-stock", "--max-connections", "1")
    first = connect(server.port)
    first.sendall(b"first\n")
    server.wait_stdout(b"first\n")
    second = connect(server.port)
    second.sendall(b"second\n")
    with pytest.raises(AssertionError):  # not accepted while the first holds the one slot
        server.wait_stdout(b"second\n", timeout=0.5)
    first.close()
    server.wait_stdout(b"second\n")
    second.close()
    assert server.stop() == 0


def test_anyio_trio_runs_on_anyios_trio_backend(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(anyio_model.anyio, "run", lambda main, backend: seen.append(backend))
    MODELS["anyio-trio"].load()(Config())
    assert seen == ["trio"]
