"""A domain's mailbox: a bounded trio memory channel that coalesces watch events instead of blocking when full;
messages (:class:`~.messages.Message`) travel in it too, in order, and are never coalesced."""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio

from ..xs.subscription import WatchEvent
from .messages import Message

__all__ = ["Envelope", "Item", "Mailbox"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A watch event on its way to a handler, with the watch (registration) it belongs to. (A late event of an
    earlier incarnation never gets this far: the actor's sink refuses it by generation.)"""

    watch: Any  # the runtime's Watch; only its identity matters here
    event: WatchEvent
    watch_path: str  # the path this watch was registered at (the template filled in)

    @property
    def key(self) -> tuple[Hashable, str]:
        return (id(self.watch), self.event.path)


Item = Envelope | Message


class Mailbox:
    """Bounded and never blocking the sender.

    :meth:`post` uses ``send_nowait`` only. When the channel is full, events wait in an overflow table keyed by
    (watch, path): a newer event for a key already waiting replaces it in place, so the order of distinct paths
    is kept and the latest event of every path survives. Past ``overflow_limit`` keys the overflow collapses
    into one event per watch for the watch's own path (a "re-read everything" hint), so memory is bounded by
    ``capacity + overflow_limit`` whatever the number of events. Messages keep their place and are never
    coalesced or collapsed (their number is bounded by whoever posts them).
    """

    def __init__(self, capacity: int = 64, overflow_limit: int = 1024) -> None:
        if capacity < 1 or overflow_limit < 1:
            raise ValueError("mailbox capacity and overflow limit must be at least 1")
        self.capacity = capacity
        self.overflow_limit = overflow_limit
        # None in the channel is an interruption (see interrupt), not an event.
        self._send, self._receive = trio.open_memory_channel[Item | None](capacity)
        self._overflow: dict[tuple[Hashable, str], Item] = {}  # insertion-ordered; smaller than OrderedDict
        self._overflow_messages = 0
        self.coalesced = 0
        self.posted = 0

    def __len__(self) -> int:
        return self._send.statistics().current_buffer_used + len(self._overflow)

    @property
    def overflow(self) -> int:
        return len(self._overflow)

    def post(self, envelope: Item) -> None:
        """Queue an envelope or a message; never blocks, never raises."""
        self.posted += 1
        if not self._overflow:
            try:
                self._send.send_nowait(envelope)
                return
            except trio.WouldBlock:
                pass
        self._spill(envelope)

    def _spill(self, envelope: Item) -> None:
        key = envelope.key
        if isinstance(envelope, Message):
            self._overflow_messages += 1  # never collapsed, so not counted against overflow_limit
        elif (
            key not in self._overflow and len(self._overflow) - self._overflow_messages >= self.overflow_limit
        ):
            self._collapse()
        if key in self._overflow:
            self.coalesced += 1
        self._overflow[key] = envelope  # an existing key keeps its place: the order of distinct paths holds

    def _collapse(self) -> None:
        hints: dict[tuple[Hashable, str], Item] = {}
        for envelope in self._overflow.values():
            if isinstance(envelope, Message):
                hints[envelope.key] = envelope
                continue
            event = WatchEvent(envelope.watch_path, envelope.event.token, envelope.event.received_at)
            hint = Envelope(envelope.watch, event, envelope.watch_path)
            hints[hint.key] = hint
        self.coalesced += len(self._overflow) - len(hints)
        self._overflow = hints

    def interrupt(self) -> None:
        """Make a waiting :meth:`receive` return None. When the channel is full nobody is waiting, and the
        receiver gets to look at its state again after the envelope at hand: nothing to do."""
        with suppress(trio.WouldBlock):
            self._send.send_nowait(None)

    async def receive(self) -> Item | None:
        """The next envelope or message, or None after :meth:`interrupt`."""
        envelope = await self._receive.receive()
        self._refill()
        return envelope

    def _refill(self) -> None:
        overflow = self._overflow
        while overflow:
            key = next(iter(overflow))
            item = overflow[key]
            try:
                self._send.send_nowait(item)
            except trio.WouldBlock:
                return
            del overflow[key]
            if isinstance(item, Message):
                self._overflow_messages -= 1

    def purge(self, domid: int = 0) -> int:
        """Drop everything waiting (a message's asker is told domain ``domid`` did not handle it); returns how
        many."""
        waiting = list(self._overflow.values())
        self._overflow.clear()
        self._overflow_messages = 0
        while True:
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            if item is not None:
                waiting.append(item)
        for item in waiting:
            if isinstance(item, Message):
                item.abandon(domid)
        return len(waiting)
