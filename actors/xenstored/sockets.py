"""Unix sockets as a client of a daemon, for the daemon's own needs: whether a daemon answers at a path
(before taking it over), and the raw test client's connection. Not the XenStore client's transport."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Final

import trio

__all__ = ["connect_unix", "daemon_answers"]

CONNECT_TIMEOUT: Final = 5.0


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
