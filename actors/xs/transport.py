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


def open_xenbus(paths: tuple[str, ...] | None = None) -> trio.lowlevel.FdStream:
    """Open the kernel's xenbus device (dom0 or a driver domain) as a stream."""
    return _open_device(XENBUS_DEVICES if paths is None else paths)[0]


def _open_device(paths: tuple[str, ...]) -> tuple[trio.lowlevel.FdStream, str]:
    tried: list[str] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            tried.append(path)
            continue
        except OSError as exc:
            raise XenStoreUnavailable(exc.errno, f"cannot open {path}: {exc.strerror}") from None
        return trio.lowlevel.FdStream(fd), path
    raise XenStoreUnavailable(errno.ENOENT, f"no xenbus device ({', '.join(tried)}): is this a Xen domain?")


def _chosen_socket(path: str | None, environ: Mapping[str, str]) -> bool:
    return bool(path or environ.get("XENSTORED_PATH") or environ.get("XENSTORED_RUNDIR"))


async def open_transport(
    path: str | None = None, *, xenbus: bool = False, environ: Mapping[str, str] | None = None
) -> tuple[trio.abc.Stream, str, bool]:
    """The stream, a name for it (``xenbus (/dev/xen/xenbus)`` or the socket's path), and whether it is the
    xenbus device.

    With no socket chosen (``path``, ``$XENSTORED_PATH``, ``$XENSTORED_RUNDIR``) and none at the standard
    paths, the xenbus device is used when present: a dom0 whose xenstored runs in a stub domain has only
    that. XenStoreUnavailable naming everything tried when neither exists.
    """
    env = os.environ if environ is None else environ
    devices = XENBUS_DEVICES
    if not xenbus and not _chosen_socket(path, env) and not any(map(os.path.exists, DEFAULT_SOCKETS)):
        if not any(map(os.path.exists, devices)):
            raise XenStoreUnavailable(
                errno.ENOENT,
                f"no xenstored socket ({', '.join(DEFAULT_SOCKETS)}) and no xenbus device ({', '.join(devices)}):"
                " is xenstored running, is this a Xen dom0? ($XENSTORED_PATH names another socket)",
            )
        xenbus = True
    if xenbus:
        stream, device = _open_device(devices)
        return stream, f"xenbus ({device})", True
    where = socket_path(path, env)
    return await open_socket(where), where, False
