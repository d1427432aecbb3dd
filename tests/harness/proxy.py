"""A cuttable unix-socket proxy: clients connect to ``proxy.path``, every byte goes to and from the daemon at
``target``; :meth:`CuttableProxy.cut` closes every connection through it at once (both sides see the socket
close, as when a daemon dies), and new connections keep being accepted.

``async with open_proxy(target, path) as proxy:`` runs it in the caller's trio loop (so it works on the
autojump clock like the embedded xenstored).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from actors.xs.transport import connect_unix

__all__ = ["CuttableProxy", "open_proxy"]


class CuttableProxy:
    def __init__(self, target: str, path: str) -> None:
        self.target = target
        self.path = path
        self.cuts = 0  # connections cut so far
        self.accepted = 0
        self._live: set[trio.CancelScope] = set()
        self.changed = trio.Event()

    @property
    def live(self) -> int:
        """Connections open through the proxy now."""
        return len(self._live)

    def cut(self) -> int:
        """Close every connection through the proxy; returns how many."""
        count = len(self._live)
        for scope in self._live:
            scope.cancel()
        self._live.clear()
        self.cuts += count
        return count

    async def wait_live(self, count: int = 1) -> None:
        """Until at least ``count`` connections are open through the proxy."""
        while len(self._live) < count:
            await self.changed.wait()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as listener:
            await listener.bind(self.path)
            listener.listen(64)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._pair, trio.SocketStream(sock))

    async def _pair(self, client: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        async with client:
            try:
                upstream = await connect_unix(self.target)
            except OSError:
                return  # the daemon is not there: the client sees its socket close
            async with upstream:
                self.accepted += 1
                self._live.add(scope)
                self._changed()
                with scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
                self._live.discard(scope)
                self._changed()

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side closed: close the other (aclose on the way out of _pair)


@asynccontextmanager
async def open_proxy(target: str, path: str) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(target, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
