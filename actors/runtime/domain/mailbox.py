"""A domain's mailbox: a bounded :class:`~actors.xs.coalesce.CoalescingQueue` of watch events keyed by (watch,
path); messages (:class:`~.messages.Message`) travel in it too, in order, and are never coalesced."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NamedTuple

import trio

from ...xs.coalesce import CoalescingQueue
from ...xs.subscription import WatchEvent
from .messages import Message

__all__ = ["Envelope", "Item", "Mailbox"]


class Envelope(NamedTuple):
    """A watch event on its way to a handler, with the watch (registration) it belongs to. (A late event of an
    earlier incarnation never gets this far: the actor's sink refuses it by generation.) A named tuple: one is
    made for every event, and a tuple is the cheapest immutable record to make."""

    watch: (
        Any  # the runtime's Watch: its identity keys the coalescing, ``per_domain`` says what a purge keeps
    )
    event: WatchEvent
    watch_path: str  # the path this watch was registered at (the template filled in)


Item = Envelope | Message
_Key = tuple[int, str]


def _summarize(key: _Key, item: Item) -> tuple[_Key, Item]:
    """A flood's coarser hint: one event per watch, for the watch's own path ("re-read everything")."""
    assert isinstance(item, Envelope)  # messages are posted with key None, which is never summarized
    event = WatchEvent(item.watch_path, item.event.token, item.event.received_at)
    return (key[0], item.watch_path), Envelope(item.watch, event, item.watch_path)


def _routed(item: Item) -> bool:
    return type(item) is Envelope and not item.watch.per_domain


class Mailbox:
    """Bounded and never blocking the sender.

    A newer event for a (watch, path) already waiting replaces it in place, so the order of distinct paths is
    kept and the latest event of every path survives (counted in :attr:`coalesced`). Past ``capacity +
    overflow_limit`` waiting items the events collapse into one event per watch for the watch's own path (a
    "re-read everything" hint), so memory is bounded whatever the number of events. Messages keep their
    place and are never coalesced or collapsed; up to ``message_limit`` of them always find room (their number
    is bounded by whoever posts them), and one that ever found none is abandoned (its asker is told), never
    dropped silently.
    """

    __slots__ = ("_queue", "capacity")

    def __init__(self, capacity: int = 64, overflow_limit: int = 1024, message_limit: int = 1024) -> None:
        if capacity < 1 or overflow_limit < 1:
            raise ValueError("mailbox capacity and overflow limit must be at least 1")
        self.capacity = capacity
        self._queue: CoalescingQueue[_Key, Item] = CoalescingQueue(
            capacity + overflow_limit + max(message_limit, 0), _summarize
        )

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def coalesced(self) -> int:
        return self._queue.coalesced

    def post(self, envelope: Item) -> int:
        """Queue an envelope or a message; never blocks, never raises. Returns how many items wait now."""
        queue = self._queue
        if type(envelope) is Envelope:
            queue.post((id(envelope.watch), envelope.event.path), envelope)
        elif not queue.post(None, envelope):
            assert isinstance(envelope, Message)
            envelope.abandon(0)
        return len(queue)

    @property
    def receiving(self) -> bool:
        """Is a receiver parked here, waiting for an item?"""
        return self._queue.receiving

    def interrupt(self) -> None:
        """Make a waiting (or the next idle) :meth:`receive` or :meth:`receive_batch` raise
        :class:`~actors.xs.coalesce.Interrupted`: the receiver looks at its state again. A receiver with items
        waiting gets them, and is expected to look at its state between items anyway."""
        self._queue.interrupt()

    async def receive(self) -> Item:
        """The next envelope or message. Raises :class:`~actors.xs.coalesce.Interrupted` after
        :meth:`interrupt`."""
        return await self._queue.receive()

    def receive_batch(self, max_items: int) -> Coroutine[Any, Any, list[Item]]:
        """``await mailbox.receive_batch(n)``: up to ``n`` waiting envelopes and messages in order (waiting for
        one); one trip through the scheduler per batch. Raises :class:`~actors.xs.coalesce.Interrupted` after
        :meth:`interrupt`. (The queue's own coroutine: no frame of this method stays on an idle actor.)"""
        return self._queue.receive_batch(max_items)

    def purge_events(self) -> int:
        """Drop every waiting event of a per-domain watch (a re-watch resyncs those), keeping the messages and
        the events of routed global watches in their order; returns how many were dropped."""
        return self._queue.purge_keyed(_routed)

    def purge(self, domid: int = 0) -> int:
        """Drop everything waiting (a message's asker is told domain ``domid`` did not handle it); returns how
        many."""
        if not len(self._queue):
            return 0  # the usual case (an actor starting or stopping idle): no WouldBlock raised and caught
        count = 0
        while True:
            try:
                item = self._queue.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return count
            count += 1
            if isinstance(item, Message):
                item.abandon(domid)
