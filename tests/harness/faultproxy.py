"""A scripted proxy on a real unix socket in front of a XenStore daemon: it forwards frames both ways, records
the requests it saw, and answers the requests a rule picks with an ERROR frame instead of passing them on.

``rule(frame) -> "EIO" | None``: called for every request; an errno name answers the request with that error
(the daemon never sees it), ``"CUT"`` closes that client's connection instead, None forwards it.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import trio

from actors.xs.transport import connect_unix
from actors.xs.wire import Frame, FrameDecoder, Op, encode

__all__ = ["FaultProxy", "fault_proxy"]

Rule = Callable[[Frame], str | None]


def path_of(frame: Frame) -> str:
    """The first NUL-separated argument of a request (its path, for the path-taking ops)."""
    return frame.payload.split(b"\0", 1)[0].decode("ascii", "replace")


class FaultProxy:
    def __init__(self, upstream: str, path: str) -> None:
        self.upstream = upstream
        self.path = path
        self.rule: Rule = lambda frame: None
        self.requests: list[Frame] = []  # every request from every client, in order
        self.refused: list[tuple[Frame, str]] = []  # requests answered with an error
        self.events = 0  # watch events passed to clients
        self.errors: list[str] = []  # the daemon's own error replies (errno names)

    async def _serve(self, client: trio.SocketStream) -> None:
        upstream = await connect_unix(self.upstream)
        lock = trio.StrictFIFOLock()

        async def to_client(data: bytes) -> None:
            async with lock:
                await client.send_all(data)

        async def requests() -> None:
            decoder = FrameDecoder(allow_unknown_ops=True)
            while data := await client.receive_some(65536):
                for frame in decoder.feed(bytes(data)):
                    self.requests.append(frame)
                    error = self.rule(frame)
                    if error == "CUT":
                        return
                    if error is None:
                        await upstream.send_all(frame.encode())
                    else:
                        self.refused.append((frame, error))
                        await to_client(encode(Op.ERROR, error.encode() + b"\0", frame.req_id, frame.tx_id))

        async def replies() -> None:
            decoder = FrameDecoder(allow_unknown_ops=True)
            while data := await upstream.receive_some(65536):
                for frame in decoder.feed(bytes(data)):
                    self.events += frame.op == Op.WATCH_EVENT
                    if frame.op == Op.ERROR:
                        self.errors.append(frame.payload.rstrip(b"\0").decode("ascii", "replace"))
                    await to_client(frame.encode())

        async with client, upstream, trio.open_nursery() as nursery:

            async def pump(fn: Callable[[], Awaitable[None]]) -> None:
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, requests)
            nursery.start_soon(pump, replies)


@asynccontextmanager
async def fault_proxy(upstream: str) -> AsyncIterator[FaultProxy]:
    """A proxy to the daemon at ``upstream`` on a fresh socket (``proxy.path``), serving any number of clients."""
    folder = tempfile.mkdtemp(prefix="mtwp", dir="/tmp")
    path = os.path.join(folder, "socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    proxy = FaultProxy(upstream, path)
    try:
        async with trio.open_nursery() as nursery:

            async def accept_all() -> None:
                while True:
                    stream = await trio_listener.accept()
                    nursery.start_soon(proxy._serve, stream)

            nursery.start_soon(accept_all)
            yield proxy
            nursery.cancel_scope.cancel()
    finally:
        await trio_listener.aclose()
        os.unlink(path)
        os.rmdir(folder)
