"""Where a XenStore connection comes from: the daemon's unix socket, or the xenbus device, as a trio stream."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping

import trio

from .errors import XenStoreUnavailable

__all__ = ["XENBUS_DEVICES", "connect_unix", "open_socket", "open_transport", "open_xenbus", "socket_path"]

DEFAULT_SOCKETS = ("/run/xenstored/socket", "/var/run/xenstored/socket")
XENBUS_DEVICES = ("/dev/xen/xenbus", "/proc/xen/xenbus")


def socket_path(path: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The socket to use: ``path``, else ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket``, else the first
    of ``/run/xenstored/socket`` and ``/var/run/xenstored/socket`` that exists (the first if neither does)."""
    env = os.environ if environ is None else environ
    if path:
        return path
    if env.get("XENSTORED_PATH"):
        return env["XENSTORED_PATH"]
    if env.get("XENSTORED_RUNDIR"):
        return os.path.join(env["XENSTORED_RUNDIR"], "socket")
    for candidate in DEFAULT_SOCKETS:
        if os.path.exists(candidate):
            return candidate
    return DEFAULT_SOCKETS[0]


_BACKLOG_RETRIES = 1000  # 1 ms apart at first, growing: a few seconds in all


async def connect_unix(path: str) -> trio.SocketStream:
    """Connect to a unix stream socket, without trio.open_unix_socket's flaw against a busy listener.

    C xenstored listens with a backlog of 1. With the backlog full, Linux answers a non-blocking AF_UNIX
    connect() with EAGAIN: nothing was made and the call must be repeated. trio takes EAGAIN for "in progress"
    and hands back an unconnected socket (ENOTCONN at the first send). Here EAGAIN is retried, a bounded number
    of times; AF_UNIX connects never are in progress.
    """
    for attempt in range(_BACKLOG_RETRIES):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            await trio.sleep(0.001 * min(attempt + 1, 10))
            continue
        except BaseException:
            sock.close()
            raise
        await trio.lowlevel.checkpoint()
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    raise OSError(errno.EAGAIN, f"{path}: the listener's backlog stayed full")


async def open_socket(path: str) -> trio.SocketStream:
    """Connect to a daemon's unix socket; a missing socket or a refusal raises XenStoreUnavailable naming it."""
    try:
        return await connect_unix(path)
    except FileNotFoundError:
        raise XenStoreUnavailable(errno.ENOENT, f"no xenstored socket at {path}") from None
    except ConnectionRefusedError:
        raise XenStoreUnavailable(errno.ECONNREFUSED, f"xenstored refused the connection at {path}") from None
    except PermissionError:
        raise XenStoreUnavailable(errno.EACCES, f"not allowed to connect to xenstored at {path}") from None
    except OSError as exc:
        raise XenStoreUnavailable(
            exc.errno, f"cannot connect to xenstored at {path}: {exc.strerror}"
        ) from None


def open_xenbus(paths: tuple[str, ...] = XENBUS_DEVICES) -> trio.lowlevel.FdStream:
    """Open the kernel's xenbus device (dom0 or a driver domain) as a stream."""
    tried: list[str] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            tried.append(path)
            continue
        except OSError as exc:
            raise XenStoreUnavailable(exc.errno, f"cannot open {path}: {exc.strerror}") from None
        return trio.lowlevel.FdStream(fd)
    raise XenStoreUnavailable(errno.ENOENT, f"no xenbus device ({', '.join(tried)}): is this a Xen domain?")


async def open_transport(path: str | None = None, *, xenbus: bool = False) -> tuple[trio.abc.Stream, str]:
    """The stream and a name for it (the path it was opened at)."""
    if xenbus:
        stream = open_xenbus()
        return stream, "xenbus"
    where = socket_path(path)
    return await open_socket(where), where
