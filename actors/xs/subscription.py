"""A watch's events as an async iterator, over a bounded buffer that coalesces instead of blocking."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from .errors import ConnectionLost

__all__ = ["Subscription", "WatchEvent"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One WATCH_EVENT: the path that fired and the watch's token.

    ``received_at`` is ``trio.current_time()`` when the connection's reader decoded the frame (0 for events
    made up locally, such as a resync). ``initial`` is True for the event the daemon fires when the watch is
    registered (the first event for the token whose path is the watched path, after WATCH was sent).
    ``domid`` is the domain a special event names (``@introduceDomain/5``, ``@releaseDomain/5``: depth-1
    special watches on Xen 4.22), else None. Events are hints: re-read the state.
    """

    path: str
    token: str
    received_at: float = field(default=0.0, compare=False)
    initial: bool = field(default=False, compare=False)
    domid: int | None = None


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
