"""A watch's events as an async iterator, over a bounded buffer that coalesces instead of blocking."""

from __future__ import annotations

from collections import OrderedDict

import trio

from .errors import ConnectionLost
from .events import WatchEvent

__all__ = ["Subscription", "WatchEvent"]


class Subscription:
    """Events of one watch, in arrival order of distinct paths.

    The connection's reader hands events in with :meth:`deliver`, which never blocks: an event for a path that is
    already waiting replaces it in place (counted in :attr:`coalesced`), and past ``capacity`` distinct paths the
    buffer collapses into one event for the watched path itself, which tells the consumer to re-read everything
    under it. Memory is bounded by ``capacity``; the latest change of every path is always represented.
    """

    def __init__(self, path: str, token: str, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = path
        self.token = token
        self.capacity = capacity
        self.coalesced = 0
        self._pending: OrderedDict[str, WatchEvent] = OrderedDict()
        self._wakeup = trio.Event()
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def deliver(self, event: WatchEvent) -> None:
        """Queue an event; never blocks, never raises."""
        if self._closed:
            return
        pending = self._pending
        if event.path in pending:
            pending[event.path] = event
            self.coalesced += 1
        elif len(pending) >= self.capacity:
            self.coalesced += len(pending)
            pending.clear()
            pending[self.path] = WatchEvent(self.path, self.token, event.received_at)
        else:
            pending[event.path] = event
        self._wakeup.set()

    def close(self, error: BaseException | None = None) -> None:
        """End the iteration: cleanly, or with ``error`` once the queued events are consumed."""
        if not self._closed:
            self._closed = True
            self._error = error
            self._wakeup.set()

    async def receive(self) -> WatchEvent:
        """The next event; raises ``trio.EndOfChannel`` when closed cleanly, ConnectionLost when the connection
        went away."""
        while not self._pending:
            if self._closed:
                if self._error is not None:
                    raise ConnectionLost(str(self._error)) from self._error
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        _, event = self._pending.popitem(last=False)
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
