"""Unix sockets for a daemon's own needs: whether a daemon answers at a path, taking a socket path over
(:func:`take_socket_path`: a stale socket replaced, a live daemon's refused), and the raw test client's
connection. Not the XenStore client's transport."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["FolderLocked", "SocketInUse", "connect_unix", "daemon_answers", "take_socket_path"]

CONNECT_TIMEOUT: Final = 5.0
LOCK_TIMEOUT: Final = 10.0  # how long a start waits for another one starting on the same folder


class SocketInUse(OSError):
    """A live daemon answers on the socket path (EADDRINUSE), or another is taking it over right now."""


class FolderLocked(SocketInUse):
    """Another start holds the socket's folder (it is taking the path over right now)."""


def _connect(path: str, timeout: float) -> socket.socket:
    # A blocking connect: with the listener's backlog full (C xenstored listens with a backlog of 1) it waits
    # for room, up to the send timeout, where a non-blocking one (Python's timeout mode too) fails with EAGAIN.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        seconds = int(timeout)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
        )
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_unix(path: str) -> trio.SocketStream:
    """A stream connected to the unix socket ``path``; OSError if nothing listens there, TimeoutError if the
    listener's backlog stays full for CONNECT_TIMEOUT seconds (BlockingIOError); not cancellable meanwhile."""
    sock = await trio.to_thread.run_sync(_connect, path, CONNECT_TIMEOUT)
    sock.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def daemon_answers(path: str, timeout: float = 1.0) -> bool:
    """Does a live process listen on the unix socket ``path``? False for a stale socket file (ECONNREFUSED)
    or no file; True also when the listener is too busy to accept within ``timeout``."""
    try:
        _connect(path, timeout).close()
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    return True


def take_socket_path(path: str, place: Callable[[], None], *, lock_timeout: float = LOCK_TIMEOUT) -> bool:
    """Put a listening socket at ``path`` with ``place()`` (a bind or a hard link, which fails with EEXIST or
    EADDRINUSE when a file is there), replacing a stale socket file: one no process listens on any more
    (its daemon was killed, SIGKILL or a crash, and left it; systemd's ``Restart=`` then starts the daemon
    again on the same path, as C xenstored removes a stale socket and binds). Blocking: run it in a thread.

    Two daemons starting at once on the same path must not both find it stale (the second would remove the
    first's fresh socket): ``place()``, the check and the replacement are made under an exclusive ``flock`` on
    the socket's folder (no lock file of its own; the kernel drops the lock if the process dies). ``place()``
    must leave the socket listening, so the second starter, once it holds the lock, finds a daemon answering.

    True if a stale socket was replaced. Raises :class:`SocketInUse` (a live daemon answers there, or the lock stayed taken for ``lock_timeout``
    seconds), FileExistsError (a file that is not a socket: left alone), or what ``place()`` raises.
    """
    folder = os.path.dirname(path) or "."
    lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _lock(lock, path, lock_timeout)
        try:
            place()
            return False
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.EADDRINUSE):
                raise
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket: not touching it")
        if daemon_answers(path):
            raise SocketInUse(errno.EADDRINUSE, f"a daemon already answers on {path}: not taking it over")
        os.unlink(path)  # stale: left by a daemon that did not stop cleanly
        place()
        return True
    finally:
        os.close(lock)  # releases the flock


def _lock(fd: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise FolderLocked(
                    errno.EADDRINUSE, f"another daemon is taking {path} over (its folder stayed locked)"
                ) from None
            time.sleep(0.01)
