"""The agent's control socket: one JSON object a line each way, over a unix socket only root may use.

Requests: ``{"op": "status"}``, ``{"op": "reset", "domid": 5}``, ``{"op": "reset", "failed": true}``; each
gets one line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. A connection may carry many (idle:
closed after ``IDLE_TIMEOUT``). The socket is mode 0600 (its folder, when made, 0700); one a live agent answers
on is refused (:class:`ControlInUse`), a stale one replaced; the agent removes only the file it made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from loguru import logger

from ..xenstored.sockets import SocketInUse, take_socket_path

__all__ = [
    "AgentBusy",
    "ControlInUse",
    "ControlUnavailable",
    "Encoded",
    "Request",
    "ask",
    "bind_control",
    "serve_control",
]

MAX_LINE = 1 << 20  # a status of thousands of domains fits; longer is a broken peer
IDLE_TIMEOUT = 300.0
MAX_CLIENTS = 16
Request = dict[str, Any]


class Encoded(bytes):
    """A response a handler encoded itself (one line of JSON, newline included): sent as it is."""


Handler = Callable[[Request], Awaitable[dict[str, Any] | Encoded]]


class ControlUnavailable(Exception):
    """No agent answers on the control socket (absent, refused, not allowed, or not an agent)."""


class AgentBusy(ControlUnavailable):
    """An agent is there (it took the connection, or answered part of the response) but did not answer in
    time: alive and busy, never to be reported as absent."""


class ControlInUse(OSError):
    """Another process (a running agent) answers on the control socket."""


def bind_control(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Bind and listen on ``path`` (mode 0600); the socket and the (device, inode) of the file it made.
    A stale socket there (an agent killed without a chance to remove it) is replaced, a live agent's refused
    (:class:`ControlInUse`), any other file left alone (FileExistsError); two agents starting at once cannot
    both take it (:func:`~actors.xenstored.sockets.take_socket_path`). Blocking."""
    folder = os.path.dirname(path) or "."
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)  # the last component only: a missing parent is an error
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    def place() -> None:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)  # listening before the folder's lock is let go: the next starter sees it

    try:
        if take_socket_path(path, place):
            logger.warning("replaced the stale control socket {} (its agent did not stop cleanly)", path)
    except SocketInUse as exc:
        sock.close()
        raise ControlInUse(errno.EADDRINUSE, "another agent answers on it", path) from exc
    except BaseException:
        sock.close()
        raise
    made = os.stat(path)
    return sock, (made.st_dev, made.st_ino)


def unlink_if_ours(path: str, made: tuple[int, int]) -> None:
    """Remove the socket file if it is still the one :func:`bind_control` made."""
    with contextlib.suppress(OSError):
        now = os.stat(path)
        if (now.st_dev, now.st_ino) == made:
            os.unlink(path)


def _reply(obj: dict[str, Any] | Encoded) -> bytes:
    if isinstance(obj, Encoded):
        return bytes(obj)
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def _lines(buffer: bytearray) -> Iterator[bytes]:
    while (end := buffer.find(b"\n")) >= 0:
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        yield line


async def _serve_one(stream: trio.SocketStream, handle: Handler) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            with trio.move_on_after(IDLE_TIMEOUT):
                chunk = await stream.receive_some(65536)
            if not chunk:  # closed by the peer, or idle for too long
                return
            buffer += chunk
            for line in _lines(buffer):
                if not await _send(stream, _reply(await _answer(line, handle))):
                    return
            if len(buffer) > MAX_LINE:
                await _send(stream, _reply({"ok": False, "error": "request line too long"}))
                return


async def _send(stream: trio.SocketStream, data: bytes) -> bool:
    """Send ``data``; False (the connection is to be dropped) if the peer has not read it in IDLE_TIMEOUT."""
    with trio.move_on_after(IDLE_TIMEOUT):
        await stream.send_all(data)
        return True
    return False


async def _answer(line: bytes, handle: Handler) -> dict[str, Any] | Encoded:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": 'a request is a JSON object with "op"'}
    try:
        return await handle(request)
    except Exception as exc:  # a handler's bug is this request's error, not the end of the agent
        logger.exception("control: {} request failed", request["op"])
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


async def serve_control(
    sock: socket.socket, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer requests on the listening ``sock`` with ``handle(request)`` until cancelled."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def one(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await _serve_one(stream, handle)

    async with listener, trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, one, [listener])
        task_status.started()


def _unavailable(path: str, exc: BaseException) -> ControlUnavailable:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return ControlUnavailable(f"no agent at {path} (is `mtwatch agent` running?)")
    if isinstance(exc, PermissionError):
        return ControlUnavailable(f"{path}: permission denied (the control socket is root's)")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ControlUnavailable(f"{path}: {reason}")


def _decode(path: str, line: bytes) -> dict[str, Any]:
    try:
        response = json.loads(line)
    except ValueError:
        raise ControlUnavailable(f"{path}: not an mtwatch agent (the answer is not JSON)") from None
    if not isinstance(response, dict):
        raise ControlUnavailable(f"{path}: not an mtwatch agent")
    return response


class Connection:
    """A blocking client connection (for ``status`` and ``top``); :meth:`ask` sends one request."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def ask(self, request: Request) -> dict[str, Any]:
        """The response to ``request`` within ``timeout`` seconds; :class:`AgentBusy` if the agent took the
        connection but did not answer in time, ControlUnavailable on any other failure (either way the
        connection is closed)."""
        connected = False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(self.timeout)
                self._sock.connect(self.path)
            connected = True
            deadline = time.monotonic() + self.timeout
            self._sock.sendall(_reply(request))
            while b"\n" not in self._buffer:
                self._sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionResetError(errno.ECONNRESET, "the agent closed the connection")
                self._buffer += chunk
        except TimeoutError:
            self.close()
            # Either way something listens there (nobody would refuse at once): an agent whose loop is busy.
            what = "did not answer" if connected else "did not take the connection"
            raise AgentBusy(
                f"{self.path}: the agent is there but {what} within {self.timeout:g} s (busy; --timeout waits"
                " longer)"
            ) from None
        except OSError as exc:
            self.close()
            raise _unavailable(self.path, exc) from None
        return _decode(self.path, next(_lines(self._buffer)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()


def ask(path: str, request: Request, timeout: float = 5.0) -> dict[str, Any]:
    """One request on a new connection (blocking, bounded by ``timeout``; from trio code, in a thread:
    ``await trio.to_thread.run_sync(ask, path, request, abandon_on_cancel=True)``)."""
    conn = Connection(path, timeout)
    try:
        return conn.ask(request)
    finally:
        conn.close()
