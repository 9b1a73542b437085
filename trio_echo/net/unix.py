"""Unix domain sockets (``--unix PATH``, or ``@name`` in Linux's abstract namespace): the
listening socket, its file, and how a client is named.

Plain blocking ``socket`` and ``os`` calls, like :mod:`trio_echo.net.bind` (the Trio server runs
:func:`bind_unix` through ``trio.to_thread``).  Three things need care:

* **The file's permissions before anyone can connect** (``--unix-mode``): see
  :func:`_bind_privately`.
* **A file left behind**: a server killed by SIGKILL (or a power cut) leaves its socket file, and
  ``bind`` fails on it.  We replace it only when nothing listens on it -- a connect is refused --
  and never touch anything else: a live socket is "address in use", a file that is not a socket
  is left as it is (see :func:`_stale_socket`).
* **Removing the file at the end**: :class:`UnixListeningSocket` removes it when it is closed
  (the server closes its listening sockets when it stops accepting, gracefully or not), but
  only if the file is still the one we bound: a server started on the same path while we were
  shutting down replaced it, and its file is not ours to remove.

A client has no address worth the name (an unnamed socket, as a rule): it is named by what the
kernel knows of the process at the other end (:mod:`trio_echo.net.peercred`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
import sys
from typing import Any

from trio_echo.logs import LOGGER
from trio_echo.net.bind import BACKLOG, ListenError, describe_addresses

__all__ = [
    "ABSTRACT_PREFIX",
    "ABSTRACT_SUPPORTED",
    "MAX_PATH_BYTES",
    "UnixListeningSocket",
    "UnixPathError",
    "bind_unix",
    "describe_unix",
    "parse_mode",
    "path_problem",
]

# "@name" is a name in Linux's abstract namespace (a leading NUL byte for the kernel), as ss,
# socat and systemd write it.  It has no file: nothing to remove, no permissions.
ABSTRACT_PREFIX = "@"

# Only Linux (and Android) has the abstract namespace; elsewhere "@name" would create a file
# named "@name" in the current directory, which is not what was asked.
ABSTRACT_SUPPORTED = sys.platform.startswith("linux")

# sun_path holds 108 bytes on Linux, 104 on macOS and the BSDs; one is kept for the terminating
# NUL that most programs (nc, socat) add.  An abstract name may use them all but the leading NUL.
MAX_PATH_BYTES = 107 if ABSTRACT_SUPPORTED else 103

# The private directory that --unix-mode binds in (see _bind_privately): next to the target, so
# that the final hard link stays on the same filesystem.  Short, because sun_path is short.
PRIVATE_PREFIX = ".te"
PRIVATE_NAME = "s"
# What the private directory adds to the length of a path in the target's directory: "/" is
# counted once by both; the directory's name has 8 random characters.
PRIVATE_RANDOM_BYTES = 4
PRIVATE_EXTRA = len(PRIVATE_PREFIX) + 2 * PRIVATE_RANDOM_BYTES + 1 + len(PRIVATE_NAME)
# Attempts at a fresh private name: 2**32 names, so a clash is somebody else's doing.
PRIVATE_ATTEMPTS = 10


class UnixPathError(ListenError):
    """A ``--unix`` path that cannot be served, for a reason in the path given (not a socket,
    in a missing directory, an abstract name off Linux): one line, exit status 2."""

    exit_status = 2


class UnixInUseError(UnixPathError):
    """A live socket at the ``--unix`` path: "address already in use", exit status 1, as for a
    TCP port in use (the path is fine; another server has it)."""

    exit_status = 1


def describe_unix(address: object) -> str:
    """``unix:/run/echo.sock`` or ``unix:@name``: a Unix socket address in log lines (a path,
    ``@name``, or the kernel's form of an abstract name, which starts with a NUL byte)."""
    return describe_addresses([address])


def parse_mode(text: str) -> int:
    """``--unix-mode``: permission bits in octal (``660``, ``0660`` or ``0o660``); raises
    ``ValueError`` naming the value.  Only the permission bits: setuid and friends mean nothing
    on a socket."""
    digits = text.removeprefix("0o") if text.startswith("0o") else text
    if not digits or len(digits) > 4 or any(c not in "01234567" for c in digits):
        raise ValueError(f"expected an octal mode such as 660 or 0600, got {text!r}")
    mode = int(digits, 8)
    if mode > 0o777:
        raise ValueError(f"expected permission bits (at most 777), got {text!r}")
    return mode


def path_problem(name: str, mode: int | None) -> str | None:
    """What is wrong with ``--unix NAME`` (and ``--unix-mode``) as written, before looking at
    the filesystem; ``None`` if nothing."""
    if not name:
        return "expected a socket path or @name, got an empty string"
    if "\0" in name:
        return "a socket path cannot contain a NUL byte"
    abstract = name.startswith(ABSTRACT_PREFIX)
    if abstract and not ABSTRACT_SUPPORTED:
        return (
            f"{name!r} is an abstract socket name, which only Linux has; give a path "
            f"(such as /tmp/{name[1:] or 'echo'}.sock)"
        )
    if abstract and mode is not None:
        return "--unix-mode has no meaning for an abstract name (@name has no file)"
    size = len(os.fsencode(name))
    extra = 0
    if mode is not None:
        extra = PRIVATE_EXTRA - len(os.fsencode(os.path.basename(name)))
    if size + max(extra, 0) > MAX_PATH_BYTES:
        why = " with --unix-mode, which binds in a private directory first" if extra > 0 else ""
        return (
            f"the socket path is too long: {size} bytes{why}; the kernel takes at most "
            f"{MAX_PATH_BYTES - max(extra, 0)} here"
        )
    return None


class UnixListeningSocket(socket.socket):
    """A listening Unix socket that removes its file when it is closed, if the file is still
    the one it bound (same device and inode).

    Closing is how every listening socket of the server ends (the listener's ``aclose``, the
    server's ``finally``, a ``--workers`` supervisor's stop), so the file goes with the socket
    on every way out but SIGKILL, whose leftover the next start replaces
    (:func:`_stale_socket`).  Duplicates (``dup()``, a worker's copy) never remove it: only the
    original owns the file.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The path and (st_dev, st_ino) of the file we bound, or None: nothing to remove.
        self._file: tuple[str, tuple[int, int]] | None = None
        # The name the server answers on, when the kernel's differs (see _bind_privately).
        self._public: str | None = None

    def getsockname(self) -> Any:
        """The path clients connect to (the kernel would name the private directory in which
        ``--unix-mode`` bound the socket)."""
        return self._public if self._public is not None else super().getsockname()

    def close(self) -> None:
        try:
            super().close()
        finally:
            owned, self._file = self._file, None
            if owned is not None:
                _remove_if_ours(*owned)


def _file_id(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _remove_if_ours(path: str, file_id: tuple[int, int]) -> None:
    """Remove ``path`` if it is still the socket file we bound.  (Between the ``lstat`` and the
    ``unlink`` somebody with write access to the directory could still swap it: no system call
    removes a name only if it names a given inode.)"""
    try:
        if _file_id(os.lstat(path)) == file_id:
            os.unlink(path)
    except OSError:
        pass  # gone already, or the directory went: nothing of ours is left to remove


def bind_unix(name: str, mode: int | None = None) -> UnixListeningSocket:
    """A listening stream socket on ``name`` (a path, or ``@name``), with file permissions
    ``mode`` (``None``: as the umask makes them).  Raises :class:`UnixPathError` (exit status 2)
    for a problem of the path given, :class:`ListenError` (exit status 1) for any other."""
    where = f"cannot listen on {describe_unix(name)}"
    if (problem := path_problem(name, mode)) is not None:
        raise UnixPathError(f"{where}: {problem}")
    sock = UnixListeningSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if name.startswith(ABSTRACT_PREFIX):
            _bind(sock, "\0" + name[1:], where)
            sock.listen(BACKLOG)
            return sock
        _check_directory(name, where)
        stale = _stale_socket(name, where)
        if stale is not None:
            _remove_stale(name, stale)
            LOGGER.info("replaced %s: a socket file nothing listened on", describe_unix(name))
        if mode is None:
            _bind(sock, name, where)
            sock._file = (name, _file_id(os.lstat(name)))
            sock.listen(BACKLOG)
        else:
            _bind_privately(sock, name, mode, where)
        return sock
    except BaseException:
        sock.close()
        raise


def _bind(sock: socket.socket, address: str, where: str) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            # A file (or abstract name) that appeared since we looked, or an abstract name in
            # use: never replaced.
            raise UnixInUseError(
                f"{where}: address already in use (is another server running on it?)"
            ) from exc
        raise ListenError(f"{where}: {exc.strerror or exc}") from exc


def _check_directory(path: str, where: str) -> None:
    directory = os.path.dirname(path) or "."
    try:
        info = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UnixPathError(f"{where}: the directory {directory} does not exist") from exc
    except OSError as exc:
        raise ListenError(f"{where}: {directory}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnixPathError(f"{where}: {directory} is not a directory")


def _stale_socket(path: str, where: str) -> os.stat_result | None:
    """The socket file at ``path`` that nobody listens on (left by a server that crashed or was
    killed), to be replaced; ``None`` if there is nothing at ``path``.  Raises
    :class:`UnixPathError` for anything we must not replace.

    "Nobody listens" is what the kernel says to a connect: ``ECONNREFUSED``.  A live server
    takes the probe as a client that leaves at once; one with a full backlog says ``EAGAIN``
    (the probe does not wait), still alive.  A file that is not a socket, or one we may not
    connect to, is another program's business: left untouched.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ListenError(f"{where}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise UnixPathError(f"{where}: {path} exists and is not a socket (left untouched)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return info  # stale: replace it
        except BlockingIOError:
            pass  # a live server whose backlog is full
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                raise UnixInUseError(
                    f"{where}: address already in use (by a socket of another type)"
                ) from exc
            if exc.errno == errno.EACCES:
                raise UnixPathError(
                    f"{where}: a socket we may not connect to is there (another user's "
                    "server?); left untouched"
                ) from exc
            raise ListenError(f"{where}: {exc.strerror or exc}") from exc
    raise UnixInUseError(f"{where}: address already in use (is another server running on it?)")


def _remove_stale(path: str, stale: os.stat_result) -> None:
    """Remove the stale socket file at ``path`` if it is still the one we probed: two servers
    that start at once must not both remove the file and one of them the other's new socket."""
    _remove_if_ours(path, _file_id(stale))


def _bind_privately(sock: UnixListeningSocket, path: str, mode: int, where: str) -> None:
    """Bind ``sock`` so that the file at ``path`` has permissions ``mode`` from the first moment
    anyone can connect to it.

    Binding at ``path`` itself shows the file at once, with the umask's permissions, maybe
    looser than ``mode``.  A ``chmod(path)`` before ``listen`` would still keep clients out
    (nothing listens yet), but it acts on whatever ``path`` names by then: in a directory that
    others may write to, our socket may have been replaced by a symlink to one of our files,
    which would get ``mode``.  ``fchmod`` on the socket does not reach its file on Linux, and
    the umask is the whole process's (a thread creating a file meanwhile would get ours).  So
    the socket is bound in a fresh private directory next to ``path`` (mode 700: nobody else
    can reach anything inside it, nor swap the file under our ``chmod``), given its mode, set
    listening, and only then put in place with a hard link, which, unlike ``rename``, fails
    rather than replaces whatever appeared at ``path`` meanwhile.  So the file is never seen at
    ``path`` with other permissions than ``mode``.  The private name is removed again, with its
    directory, whatever happens.  (The kernel still names the socket by its private path in
    ``getsockname``; :class:`UnixListeningSocket` answers with ``path``.)
    """
    private = _private_directory(os.path.dirname(path), where)
    inner = os.path.join(private, PRIVATE_NAME)
    try:
        _bind(sock, inner, where)
        os.chmod(inner, mode)
        sock.listen(BACKLOG)
        try:
            os.link(inner, path)
        except FileExistsError as exc:
            raise UnixInUseError(
                f"{where}: address already in use (a file appeared at {path} meanwhile)"
            ) from exc
        except OSError as exc:
            raise ListenError(
                f"{where}: cannot link the socket into place: {exc.strerror or exc} "
                "(--unix-mode needs a filesystem with hard links)"
            ) from exc
        sock._file = (path, _file_id(os.lstat(inner)))
        sock._public = path
    finally:
        for remove, target in ((os.unlink, inner), (os.rmdir, private)):
            with contextlib.suppress(FileNotFoundError):
                remove(target)


def _private_directory(directory: str, where: str) -> str:
    """A new directory in ``directory`` (``""``: the current one) that only we may enter, for
    :func:`_bind_privately`.  (Not ``tempfile.mkdtemp``: from Python 3.12 it makes the path
    absolute, which may not fit in sun_path where the relative path the user gave does.)"""
    for _ in range(PRIVATE_ATTEMPTS):
        private = os.path.join(directory, PRIVATE_PREFIX + secrets.token_hex(PRIVATE_RANDOM_BYTES))
        try:
            os.mkdir(private, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ListenError(
                f"{where}: {exc.strerror or exc} (creating a directory in {directory or '.'})"
            ) from exc
        try:
            # mkdir's mode went through the umask: never looser than 700, but maybe too tight.
            os.chmod(private, 0o700)
        except OSError:
            os.rmdir(private)
            raise
        return private
    raise ListenError(f"{where}: could not create a private directory in {directory or '.'}")
