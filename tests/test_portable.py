"""Portability: trio_echo without the Linux-only pieces, and the refusal on Windows.

macOS and the BSDs have no ``select.epoll``, and their ``socket.SO_REUSEPORT`` does not balance
(some platforms lack it): there, ``--workers`` shares one set of listening sockets (README,
"Platforms").  tests/portable/hide_linux.py hides both from trio_echo while Trio keeps
them.  These tests hold in both runs of the suite:

* in the normal run (``nox -s tests``), every subprocess here is started through the hiding
  module (``python tests/portable/hide_linux.py -m trio_echo ...``), so the package is checked
  without epoll and SO_REUSEPORT on every CI run;
* in the portable run (``nox -s portable``), every Python process of the virtualenv already hides
  them (a ``.pth``), this one included, and the whole suite runs that way.

This module never imports the hiding module itself: in the normal run, importing it would hide
the names in the pytest process, after trio_echo was imported.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    LISTENING_RE,
    assert_no_traceback,
    one_line_clients,
    peer_name,
    run_command,
)
from test_workers import alive, worker_pids

from trio_echo.cli.main import WINDOWS_REFUSAL, main
from trio_echo.models import MODELS

HIDE = Path(__file__).parent / "portable" / "hide_linux.py"

# Set by the hiding module in every process where it is installed.
PORTABLE_RUN = bool(os.environ.get("TRIO_ECHO_HIDDEN"))

HIDDEN_COMMAND = (sys.executable, str(HIDE))


def hidden_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter with epoll and SO_REUSEPORT hidden."""
    return run_command([*HIDDEN_COMMAND, "-c", code])


# ---- the hiding itself -------------------------------------------------------------------------


def test_trio_echo_sees_what_this_run_provides():
    """In the portable run the names are hidden here too; in both, trio_echo's accelerator
    follows what the platform (as this process sees it) has."""
    from trio_echo.server import hub

    assert hasattr(select, "epoll") == hub.AVAILABLE
    if PORTABLE_RUN:
        assert not hasattr(select, "epoll")
        assert not hasattr(select, "EPOLLIN")
        assert not hasattr(socket, "SO_REUSEPORT")
        assert os.environ["TRIO_ECHO_HIDDEN"] == "epoll,SO_REUSEPORT"


def test_every_python_process_of_the_run_hides_alike():
    """The portable run's .pth reaches every new interpreter (servers, workers); the normal
    run hides nothing."""
    result = run_command(
        [
            sys.executable,
            "-c",
            "import select, socket; print(hasattr(select, 'epoll'), "
            "hasattr(socket, 'SO_REUSEPORT'))",
        ]
    )
    assert result.returncode == 0, result.stderr
    expected = "False False" if PORTABLE_RUN else "True True"
    assert result.stdout.split() == expected.split()


def test_the_hiding_leaves_trio_its_epoll_and_hides_the_rest():
    code = """
import select, socket, sys, trio, trio._core._io_epoll as io_epoll
import hide_linux
assert not hasattr(select, "epoll") and "epoll" not in dir(select), dir(select)
assert not hasattr(select, "EPOLLIN") and not hasattr(socket, "SO_REUSEPORT")
assert "epoll" in hide_linux.hidden_in(select), hide_linux.hidden_in(select)
assert hide_linux.hidden_in(socket) == ["SO_REUSEPORT"], hide_linux.hidden_in(socket)
assert hasattr(io_epoll.select, "epoll")  # Trio's own reference is the real module
# Everything else is forwarded, and a write (a test's monkeypatch) reaches the real module.
real = vars(socket)["__hiding_real__"]
assert socket.socket is real.socket and select.select is vars(select)["__hiding_real__"].select
socket.trio_echo_probe = 1
assert real.trio_echo_probe == 1
del socket.trio_echo_probe
assert not hasattr(real, "trio_echo_probe")

async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        async def serve():
            stream = await listeners[0].accept()
            assert await stream.receive_some(10) == b"hi"
            await stream.aclose()
        nursery.start_soon(serve)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"hi")
        await client.aclose()
    await listeners[0].aclose()

trio.run(main)
print("ok")
"""
    result = hidden_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_the_package_and_every_model_import_without_epoll_and_reuseport():
    modules = sorted(
        {model.entry.partition(":")[0] for model in MODELS.values()}
        | {
            "trio_echo",
            "trio_echo.__main__",
            "trio_echo.cli.main",
            "trio_echo.server.hub",
            "trio_echo.server.serve",
            "trio_echo.workers.supervisor",
            "trio_echo.workers.worker",
            "trio_echo.bench.cli",
        }
    )
    code = f"""
import importlib
for name in {modules!r}:
    importlib.import_module(name)
from trio_echo.server import hub
import trio_echo
assert hub.AVAILABLE is False
assert trio_echo.serve and trio_echo.Config
print("ok")
"""
    result = hidden_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


# ---- every model serves without them -----------------------------------------------------------

SERVING_MODELS = [
    pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=str(why)))
    for name, why in ((name, model.available()) for name, model in MODELS.items())
]


@pytest.mark.parametrize("model", SERVING_MODELS)
def test_every_model_serves_a_client_without_epoll_and_reuseport(spawn, connect, model):
    server = spawn([*HIDDEN_COMMAND, "-m", "trio_echo", "--port", "0", "--model", model], ())
    server.wait_listening()
    client = connect(server.port)
    client.sendall(b"hello from afar\n")
    server.wait_stdout(f"[{peer_name(client)}] hello from afar\n".encode())
    client.close()
    server.wait_stderr(r"close #1 ")
    assert server.stop(signal.SIGTERM) == 0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert "stopped: served 1 connection" in stderr


def test_workers_serve_without_epoll_and_reuseport(spawn, connect):
    """``--workers 2`` where SO_REUSEPORT is missing: no usage error any more, but both workers
    accepting from the supervisor's one set of sockets, and a graceful stop."""
    args = ("--workers", "2", "--port", "0", "--host", "127.0.0.1")
    server = spawn([*HIDDEN_COMMAND, "-m", "trio_echo", *args], ())
    server.wait_listening()
    assert server.wait_stderr(LISTENING_RE)["mode"] == "print, text, 2 workers"
    pids = worker_pids(server)
    clients = 5
    one_line_clients(connect, server.port, [b"worker line %d\n" % i for i in range(clients)])
    server.wait_stdout(lambda data: data.count(b"] worker line ") == clients)
    assert all(alive(pid) for pid in pids.values())
    assert server.stop(signal.SIGTERM) == 0
    stderr = server.all_stderr()
    assert_no_traceback(stderr)
    assert "error" not in stderr
    assert f"NOTICE stopped: served {clients} connections, " in stderr


# ---- Windows -----------------------------------------------------------------------------------


def test_windows_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "win32")
    assert main(["--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == WINDOWS_REFUSAL + "\n"
    assert captured.err == "trio-echo: error: Windows is not supported; run it under WSL\n"


def test_windows_is_refused_before_anything_posix_only_is_imported():
    """On Windows there is no resource, fcntl or termios: the refusal must come first."""
    code = """
import runpy, sys
sys.modules.update(resource=None, fcntl=None, termios=None)  # import fails, as on Windows
sys.platform = "win32"
runpy.run_module("trio_echo", run_name="__main__", alter_sys=True)
"""
    result = run_command([sys.executable, "-c", code, "--port", "0"])
    assert result.returncode == 2, result.stderr
    assert result.stderr == WINDOWS_REFUSAL + "\n"
    assert result.stdout == ""
