"""Watches on a connection: registration (with a depth, Xen 4.22), removal, subscriptions, RESET_WATCHES."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import trio

from .capabilities import Capabilities
from .errors import PayloadTooLarge, TokenInUse, Unsupported, XenStoreError
from .protocol import ClientProtocol, Request, WatchSink
from .subscription import Subscription
from .wire import PAYLOAD_MAX, Op, check_watch_path, join

__all__ = ["WatchOperations"]

_CLEANUP_TIMEOUT = 5.0  # an unwatch in cleanup waits no longer than this


class WatchOperations:
    """Mixed into :class:`~actors.xs.client.XenStore`."""

    xenbus: bool
    _protocol: ClientProtocol
    _subscriptions: dict[str, Subscription]
    _tokens: itertools.count[int]
    _lost: BaseException | None

    async def _request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes:
        raise NotImplementedError

    async def _wait(self, request: Request, path: str | None) -> bytes:
        raise NotImplementedError

    def _ready(self) -> None:
        raise NotImplementedError

    def _armed(self, request: Request) -> Request:
        raise NotImplementedError

    async def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def new_token(self, prefix: str = "mtw") -> str:
        return f"{prefix}{next(self._tokens)}"

    async def add_watch(self, path: str, token: str, sink: WatchSink, *, depth: int | None = None) -> None:
        """Register a watch whose events the reader task hands to ``sink`` (which must not block; one that
        raises ends its own watch, kept in ``watch_errors``: see :class:`~actors.xs.client.XenStore`).

        The sink is in place before WATCH is sent, so the registration event (``initial``), which may arrive
        before the reply, is not missed. TokenInUse if this connection already has ``token``, with nothing
        sent. ``depth`` (0: the node, 1: and its children, None: the whole subtree) needs a daemon with the
        WATCHDEPTH feature (Xen 4.22): Unsupported otherwise, and always over xenbus, whose kernel drops it.
        """
        raw = check_watch_path(path)
        if self._protocol.has_watch(token):
            raise TokenInUse(path=path)
        if depth is not None:
            await self._check_depth(path, depth)
        if len(join(raw, token) if depth is None else join(raw, token, str(depth))) > PAYLOAD_MAX:
            raise PayloadTooLarge("watch path and token exceed the payload limit")
        if self._protocol.has_watch(token):  # taken while the capabilities were probed
            raise TokenInUse(path=path)
        self._ready()
        request = self._armed(self._protocol.watch(raw, token, sink, depth, label=path))
        try:
            await self._wait(request, path)
        except BaseException:
            self._protocol.unwatch(token, sink)
            raise

    async def _check_depth(self, path: str, depth: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"watch depth {depth!r} is not a non-negative int")
        if self.xenbus:
            raise Unsupported(
                op="WATCH", path=path, why="the xenbus device drops a watch's depth; use the socket"
            )
        caps = await self.capabilities()
        if not caps.features & caps.features.WATCHDEPTH:
            raise Unsupported(op="WATCH", path=path, why="the daemon has no WATCHDEPTH feature")

    async def remove_watch(self, path: str, token: str) -> None:
        """Unregister a watch; its sink gets no further events. NotFound if the daemon does not know it."""
        self._protocol.unwatch(token)
        await self._request(Op.UNWATCH, join(check_watch_path(path), token), 0, path)

    @asynccontextmanager
    async def watch(
        self, path: str, token: str | None = None, *, depth: int | None = None, capacity: int = 1024
    ) -> AsyncIterator[Subscription]:
        """``async with xs.watch(path) as events: async for event in events:``

        The registration event is delivered (``initial`` True). Leaving the block unwatches, also when
        cancelled. A slow consumer costs bounded memory (see :class:`Subscription`); when the connection is
        lost, iteration raises ConnectionLost. ``depth`` as for :meth:`add_watch`.
        """
        token = token if token is not None else self.new_token()
        sub = Subscription(path, token, capacity)
        await self.add_watch(path, token, sub.deliver, depth=depth)
        self._subscriptions[token] = sub
        if self._lost is not None:  # lost after the reply, before this task resumed: _mark_lost() missed sub
            sub.close(self._lost)
        try:
            yield sub
        finally:
            self._subscriptions.pop(token, None)
            sub.close()
            if self._lost is None:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(_CLEANUP_TIMEOUT),
                    suppress(XenStoreError),
                ):
                    await self.remove_watch(path, token)

    async def reset_watches(self) -> None:
        """Drop every watch and transaction of this connection, on the daemon and here.

        Unsupported, with nothing sent, on a daemon that never answers RESET_WATCHES (oxenstored)."""
        caps = await self.capabilities()
        if not caps.reset_watches:
            raise Unsupported(op="RESET_WATCHES", why=f"{caps.daemon} never answers it; nothing was sent")
        await self._request(Op.RESET_WATCHES, b"\0")
        for sub in self._subscriptions.values():
            sub.close()
        self._subscriptions.clear()
        self._protocol.unwatch_all()
