"""A watch's events as an async iterator, over a bounded buffer that coalesces instead of blocking."""

from __future__ import annotations

from typing import NoReturn

import trio

from .coalesce import CoalescingQueue
from .errors import ConnectionLost
from .events import WatchEvent

__all__ = ["Subscription", "WatchEvent"]


class Subscription:
    """Events of one watch, in arrival order of distinct paths.

    The connection's reader hands events in with :meth:`deliver`, which never blocks: an event for a path that is
    already waiting replaces it in place (counted in :attr:`coalesced`), and past ``capacity`` distinct paths the
    waiting events fold into one event for the watched path itself, which tells the consumer to re-read
    everything under it. Memory is bounded by ``capacity``; the latest change of every path is always
    represented. (The rules are those of :class:`~actors.xs.coalesce.CoalescingQueue`, keyed by path.)

    Read it with ``async for``, :meth:`receive`, or :meth:`receive_batch` (every waiting event at once, for one
    trip through the scheduler).
    """

    def __init__(self, path: str, token: str, capacity: int = 1024) -> None:
        self.path = path
        self.token = token
        self._queue: CoalescingQueue[str, WatchEvent] = CoalescingQueue(capacity, self._hint)
        self._error: BaseException | None = None
        self._lost = True

    def _hint(self, path: str, event: WatchEvent) -> tuple[str, WatchEvent]:
        return self.path, WatchEvent(self.path, self.token, event.received_at)

    @property
    def capacity(self) -> int:
        return self._queue.capacity

    @property
    def coalesced(self) -> int:
        """Events folded into another waiting event (a later one for the same path, or a re-read hint)."""
        return self._queue.coalesced

    def __len__(self) -> int:
        return len(self._queue)

    def deliver(self, event: WatchEvent) -> None:
        """Queue an event; never blocks, never raises."""
        self._queue.post(event.path, event)

    def close(self, error: BaseException | None = None, *, lost: bool = True) -> None:
        """End the iteration once the queued events are consumed: cleanly, or with ``error``; as a
        ConnectionLost caused by it when ``lost`` (the connection went away), else ``error`` itself."""
        if not self._queue.closed:
            self._error = error
            self._lost = lost
            self._queue.close()

    def _end(self) -> NoReturn:
        if self._error is None:
            raise trio.EndOfChannel
        if self._lost:
            raise ConnectionLost(str(self._error)) from self._error
        raise self._error

    async def receive(self) -> WatchEvent:
        """The next event; raises ``trio.EndOfChannel`` when closed cleanly, ConnectionLost when the connection
        went away, the sink's error when it raised (see :class:`~actors.xs.client.XenStore`). A waiting event
        is returned at once (no trip through the scheduler)."""
        try:
            return await self._queue.receive()
        except trio.EndOfChannel:
            self._end()

    async def receive_batch(self, max_events: int | None = None) -> list[WatchEvent]:
        """Every waiting event (at most ``max_events``), in order, waiting for one if none waits. Raises like
        :meth:`receive`."""
        try:
            return await self._queue.receive_batch(max_events)
        except trio.EndOfChannel:
            self._end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
