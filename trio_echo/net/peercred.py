"""Who is at the other end of a Unix socket: the credentials of the peer process, as the kernel
recorded them when it connected (``SO_PEERCRED`` on Linux and OpenBSD, ``LOCAL_PEERCRED`` and
``LOCAL_PEERPID`` on macOS and FreeBSD, where Python has them; ``getattr``: each may be
missing).  A Unix socket's client has no address worth the name, so this is how the server
shows it: ``unix:pid=1234,uid=1000,gid=1000`` in the ``[peer]`` prefix, the jsonl ``peer`` and
the log lines (:func:`peer_name`, one ``getsockopt`` per accept).
"""

from __future__ import annotations

import socket
import struct
import sys

import attrs

from trio_echo.net.bind import describe_addresses

__all__ = ["Credentials", "peer_credentials", "peer_name"]

# The peer's credentials, where the platform has a way to ask (getattr: portably).
SO_PEERCRED = getattr(socket, "SO_PEERCRED", None)
LOCAL_PEERCRED = getattr(socket, "LOCAL_PEERCRED", None)  # macOS, FreeBSD: struct xucred
LOCAL_PEERPID = getattr(socket, "LOCAL_PEERPID", None)  # macOS: the pid, apart
SOL_LOCAL = getattr(socket, "SOL_LOCAL", 0)  # LOCAL_* options' level (0 on macOS and FreeBSD)
# Which struct SO_PEERCRED gives, where we know it (decided once: this runs on every accept).
_OPENBSD = sys.platform.startswith("openbsd")
_USE_PEERCRED = SO_PEERCRED is not None and (sys.platform.startswith("linux") or _OPENBSD)
_LINUX_PEERCRED = _USE_PEERCRED and not _OPENBSD
_SOL_SOCKET, _SO_PEERCRED = socket.SOL_SOCKET, SO_PEERCRED or 0
# struct ucred (Linux: pid, uid, gid) and struct sockpeercred (OpenBSD: uid, gid, pid); pid_t
# is signed, uid_t and gid_t are not.
UCRED = struct.Struct("iII")
SOCKPEERCRED = struct.Struct("IIi")
NO_ID = 0xFFFFFFFF  # (uid_t)-1, (gid_t)-1: no such user or group
XUCRED_HEAD = struct.Struct("IIh2xI")  # cr_version, cr_uid, cr_ngroups, cr_groups[0]
XUCRED_SIZE = 128  # more than any platform's struct xucred: the kernel fills what it has


@attrs.frozen
class Credentials:
    """What the kernel knows of a Unix socket's peer process (``None``: not told here)."""

    pid: int | None
    uid: int | None
    gid: int | None

    def __str__(self) -> str:
        return ",".join(
            f"{field}={value}"
            for field, value in (("pid", self.pid), ("uid", self.uid), ("gid", self.gid))
            if value is not None
        )

    @classmethod
    def from_ucred(cls, data: bytes, *, openbsd: bool = False) -> Credentials:
        """``SO_PEERCRED``'s struct: Linux's ``ucred`` (pid, uid, gid), or OpenBSD's
        ``sockpeercred`` (uid, gid, pid)."""
        if openbsd:
            uid, gid, pid = SOCKPEERCRED.unpack_from(data)
        else:
            pid, uid, gid = UCRED.unpack_from(data)
        # What Linux answers when it knows nothing (not a connected Unix socket): pid 0 and
        # the invalid id (uid_t)-1.
        return cls(
            pid=pid or None,
            uid=None if uid == NO_ID else uid,
            gid=None if gid == NO_ID else gid,
        )

    @classmethod
    def from_xucred(cls, data: bytes, pid: int | None = None) -> Credentials | None:
        """``LOCAL_PEERCRED``'s ``struct xucred`` (macOS, FreeBSD): the uid, and the first group
        as the gid; ``None`` for a version we do not know."""
        if len(data) < XUCRED_HEAD.size:
            return None
        version, uid, ngroups, gid = XUCRED_HEAD.unpack_from(data)
        if version != 0:  # XUCRED_VERSION
            return None
        return cls(pid=pid, uid=uid, gid=gid if ngroups > 0 else None)


def peer_credentials(sock: socket.socket) -> Credentials | None:
    """The credentials of the process at the other end of the connected Unix socket ``sock``
    (as they were when it connected), where the platform says; ``None`` elsewhere."""
    try:
        if SO_PEERCRED is not None and _USE_PEERCRED:
            data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, UCRED.size)
            return Credentials.from_ucred(data, openbsd=_OPENBSD)
        if LOCAL_PEERCRED is not None:
            pid = None
            if LOCAL_PEERPID is not None:
                pid = struct.unpack("i", sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, 4))[0]
            data = sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, XUCRED_SIZE)
            return Credentials.from_xucred(data, pid)
    except OSError:
        return None  # the peer is gone already, or the option is not for this socket
    return None


def peer_name(sock: socket.socket, address: object = "") -> str:
    """How a Unix socket's client is shown (``[peer]``, the jsonl ``peer``, the log lines):
    ``unix:pid=1234,uid=1000,gid=1000``; where the kernel does not say, the address the client
    bound (``unix:/tmp/client.sock``, rare), else ``unix``.

    On every accept: Linux's usual case is done inline, about 2 us a client on our 2-core test
    machine (mostly the ``getsockopt``); building a :class:`Credentials` and formatting it took
    11 us."""
    if _LINUX_PEERCRED:
        try:
            pid, uid, gid = UCRED.unpack(sock.getsockopt(_SOL_SOCKET, _SO_PEERCRED, UCRED.size))
        except OSError:
            pid = 0
        if pid and uid != NO_ID and gid != NO_ID:
            return f"unix:pid={pid},uid={uid},gid={gid}"
    credentials = peer_credentials(sock)
    if credentials is not None and str(credentials):
        return f"unix:{credentials}"
    if address:
        return describe_addresses([address])
    return "unix"
