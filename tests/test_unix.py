"""Unix domain sockets (``--unix PATH``, ``--unix @name``): the values, the socket and its
file (trio_echo.net.unix), the peer's credentials, and the command line's errors.  The server
end to end, with real clients, is tests/test_unix_e2e.py."""

from __future__ import annotations

import os
import random
import re
import socket
import stat
import sys

import pytest
from conftest import run_cli
from unix_helpers import ME, linux_only, sock_dir, stale_socket_file, unix_server

from trio_echo.net import peercred, unix
from trio_echo.net.peercred import Credentials, peer_name
from trio_echo.net.unix import UnixPathError, bind_unix, parse_mode, path_problem

__all__ = ["sock_dir", "unix_server"]  # fixtures

# ---- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode"), [("660", 0o660), ("0600", 0o600), ("0o666", 0o666), ("7", 0o7)]
)
def test_octal_modes(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "9", "66a", "0x1b6", "rw-rw----", "1777", "-660", "0o"])
def test_modes_that_are_not_octal_permissions(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_mode(text)


def test_path_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    assert path_problem("/tmp/echo.sock", None) is None
    assert "empty" in str(path_problem("", None))
    assert "NUL" in str(path_problem("/tmp/a\0b", None))
    assert "too long" in str(path_problem("/tmp/" + "x" * 200, None))
    # --unix-mode binds in a private directory first: a short name leaves less room.
    near = "/tmp/" + "d" * (unix.MAX_PATH_BYTES - len("/tmp/") - 3) + "/ab"
    assert path_problem(near, None) is None
    assert "private directory" in str(path_problem(near, 0o600))
    assert "no meaning" in str(path_problem("@name", 0o600))
    if sys.platform.startswith("linux"):
        assert path_problem("@name", None) is None
    monkeypatch.setattr(unix, "ABSTRACT_SUPPORTED", False)
    assert "only Linux" in str(path_problem("@name", None))


def test_credential_structs() -> None:
    linux = Credentials.from_ucred(peercred.UCRED.pack(1234, 1000, 100))
    assert str(linux) == "pid=1234,uid=1000,gid=100"
    openbsd = Credentials.from_ucred(peercred.SOCKPEERCRED.pack(1000, 100, 1234), openbsd=True)
    assert openbsd == linux
    # What Linux gives for a socket without a peer: nothing known.
    assert str(Credentials.from_ucred(peercred.UCRED.pack(0, peercred.NO_ID, peercred.NO_ID))) == ""
    # macOS's struct xucred: version 0, uid, ngroups, groups...; the pid comes apart.
    xucred = peercred.XUCRED_HEAD.pack(0, 501, 2, 20) + bytes(60)
    assert str(Credentials.from_xucred(xucred, pid=77)) == "pid=77,uid=501,gid=20"
    assert str(Credentials.from_xucred(peercred.XUCRED_HEAD.pack(0, 501, 0, 0))) == "uid=501"
    assert Credentials.from_xucred(peercred.XUCRED_HEAD.pack(1, 501, 0, 0)) is None


@linux_only
def test_peer_is_named_by_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_name(a) == ME
        # The inline path of every accept and the general one agree.
        monkeypatch.setattr(peercred, "_LINUX_PEERCRED", False)
        assert peer_name(a) == ME
    # Where the kernel says nothing, the client's own address, or just "unix".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert peer_name(tcp, "/tmp/client.sock") == "unix:/tmp/client.sock"
        assert peer_name(tcp, "") == "unix"


# ---- the socket and its file ------------------------------------------------------------------


def test_bind_listens_and_close_removes_the_file(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    sock = bind_unix(path)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert sock.getsockname() == path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    finally:
        sock.close()
    assert not os.path.exists(path)
    sock.close()  # again: nothing happens


def test_a_stale_file_is_replaced(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    stale_socket_file(path)
    # A second name keeps the stale inode alive (else the new file may get its number).
    os.link(path, keep := os.path.join(sock_dir, "keep"))
    with bind_unix(path):
        assert not os.path.samefile(path, keep)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)


@pytest.mark.parametrize("mode", [None, 0o600])
def test_a_live_socket_is_address_in_use(sock_dir: str, mode: int | None) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    with bind_unix(path) as live:
        inode = os.lstat(path).st_ino
        with pytest.raises(UnixPathError, match="address already in use"):
            bind_unix(path, mode)
        # Untouched: the same file, still served (the probe was its client for a moment).
        assert os.lstat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            live.accept()[0].close()
    assert os.listdir(sock_dir) == []  # no private directory left behind either


def test_what_is_not_a_socket_is_left_untouched(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "notes.txt")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(UnixPathError, match="exists and is not a socket"):
        bind_unix(path, 0o600)
    with open(path) as f:
        assert f.read() == "precious"
    os.symlink(path, link := os.path.join(sock_dir, "link.sock"))
    with pytest.raises(UnixPathError, match="not a socket"):
        bind_unix(link)
    assert sorted(os.listdir(sock_dir)) == ["link.sock", "notes.txt"]


def test_a_missing_directory(sock_dir: str) -> None:
    with pytest.raises(UnixPathError, match="does not exist"):
        bind_unix(os.path.join(sock_dir, "missing", "echo.sock"))
    assert os.listdir(sock_dir) == []


def test_the_file_is_removed_only_while_it_is_ours(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    sock = bind_unix(path)
    # Another server took the path over meanwhile (here: a plain file in its place).
    os.unlink(path)
    with open(path, "w") as f:
        f.write("theirs")
    sock.close()
    with open(path) as f:
        assert f.read() == "theirs"


@pytest.mark.parametrize(("mode", "umask"), [(0o600, 0o022), (0o666, 0o077), (0o640, 0o000)])
def test_the_mode_is_exact_and_nothing_else_is_left(sock_dir: str, mode: int, umask: int) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    old = os.umask(umask)
    try:
        sock = bind_unix(path, mode)
    finally:
        os.umask(old)
    with sock:
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        assert os.listdir(sock_dir) == ["echo.sock"]  # the private directory is gone
        assert sock.getsockname() == path  # not the private path the kernel knows
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.listdir(sock_dir) == []


def test_dups_do_not_remove_the_file(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "echo.sock")
    with bind_unix(path) as sock:
        sock.dup().close()  # a --workers worker's copy
        assert os.path.exists(path)
    assert not os.path.exists(path)


@linux_only
def test_abstract_names_have_no_file(sock_dir: str) -> None:
    name = f"@trio-echo-test-{os.getpid()}-{random.randrange(1 << 30)}"
    with bind_unix(name) as sock:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect("\0" + name[1:])
        with pytest.raises(UnixPathError, match="address already in use"):
            bind_unix(name)
        assert not os.path.exists(name)
        assert unix.describe_unix(sock.getsockname()) == f"unix:{name}"


# ---- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unix-mode", "9x", "--unix", "/tmp/a.sock"], "argument --unix-mode: expected an octal"),
        (["--unix-mode", "600"], "--unix-mode needs --unix"),
        (["--unix", "/tmp/a.sock", "--port", "0"], "give either --unix or --port"),
        (["--unix", "/tmp/a.sock", "--host", "::1"], "give either --unix or --host"),
        (["--unix", "/tmp/a.sock", "--fd", "0"], "give either --unix or --fd"),
        (["--unix", "/tmp/a.sock", "--allow", "10.0.0.0/8"], "--allow filters IP addresses"),
        (["--unix", "/tmp/a.sock", "--keepalive", "60"], "--keepalive is for TCP"),
        (["--unix", ""], "argument --unix: expected a socket path"),
        (["--unix", "@x", "--unix-mode", "600"], "no meaning for an abstract name"),
        (["--model", "asyncio", "--unix", "/tmp/a.sock"], "--model asyncio does not support"),
        (["--model", "trio-stock", "--unix", "@x"], "--model trio-stock does not support"),
        (["--model", "sync", "--unix-mode", "x"], "--model sync does not support --unix-mode"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    from trio_echo.cli.options import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_abstract_names_off_linux(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_echo.cli.options import parse_args

    monkeypatch.setattr(unix, "ABSTRACT_SUPPORTED", False)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--unix", "@echo"])
    assert exit_info.value.code == 2
    assert "abstract socket name, which only Linux has" in capsys.readouterr().err


def test_bad_paths_exit_2_in_one_line_and_touch_nothing(sock_dir: str, unix_server) -> None:
    live = os.path.join(sock_dir, "live.sock")
    server = unix_server(live)
    notes = os.path.join(sock_dir, "notes.txt")
    with open(notes, "w") as f:
        f.write("precious")
    before = sorted(os.listdir(sock_dir))
    for path, mode, message, status in [
        # In use, like a TCP port in use: 1; a path that cannot be served: 2.
        (live, [], r"unix:\S+live.sock: address already in use", 1),
        (notes, [], "notes.txt exists and is not a socket", 2),
        (os.path.join(sock_dir, "no", "x.sock"), [], "the directory .* does not exist", 2),
    ]:
        result = run_cli("--unix", path, *mode)
        assert result.returncode == status, result.stderr
        assert re.fullmatch(rf"trio-echo: error: cannot listen on .*{message}.*\n", result.stderr)
        assert sorted(os.listdir(sock_dir)) == before
    with open(notes) as f:
        assert f.read() == "precious"
    # The live server was not disturbed: it saw the probes come and go, and still serves.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(live)
        client.sendall(b"still here\n")
    server.wait_stdout(f"[{ME}] still here\n".encode())
    assert server.stop() == 0
