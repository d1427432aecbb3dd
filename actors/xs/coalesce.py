"""A bounded queue that coalesces instead of blocking its sender: the buffer behind a watch's events.

Events are hints ("this path changed, read it again"), so two waiting events for the same key say no more than
the later one, and a flood can be folded into a few coarser hints rather than grow memory or stall the
connection's reader. :class:`CoalescingQueue` holds those rules once, for the client's subscriptions and the
runtime's mailboxes alike; it knows trio (to wake its receiver) and nothing else of the project.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import trio

__all__ = ["CoalescingQueue", "Interrupted"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Interrupted(Exception):
    """Raised by a receive that :meth:`CoalescingQueue.interrupt` woke (or would have had to wait after it)."""


class _Plain(Generic[T]):
    """A waiting item that coalesces with nothing (posted with key None); it carries the item itself."""

    __slots__ = ("item",)

    def __init__(self, item: T) -> None:
        self.item = item


class CoalescingQueue(Generic[K, T]):
    """Items keyed for coalescing, received in order by one consumer; :meth:`post` never blocks nor raises.

    The rules:

    - An item whose key is already waiting replaces that one in place: the last item of every key is kept, and
      distinct keys keep the order in which they first arrived (counted in :attr:`coalesced`).
    - An item posted with key None coalesces with nothing and keeps its place in the order.
    - At most ``capacity`` items wait. A new key arriving at a full queue first folds every keyed item waiting
      through ``summarize(key, item) -> (key, item)`` (a coarser hint, such as "re-read the whole watch"; items
      whose hints share a key become one, in the place of the first), then takes its place if there is room
      now. (A hint folded again must stay a hint: ``summarize`` sees its own output too.) Without room (or without ``summarize``) it is itself summarized into a hint that is waiting, or else
      refused: counted in :attr:`dropped`, and post returns False. Items with key None are never summarized.

    One consumer at a time: :meth:`receive` (one item) or :meth:`receive_batch` (everything waiting, up to a
    limit, for one trip through the scheduler). Both take waiting items at once, checking only for
    cancellation, and wait (a scheduler trip, woken by the next post) only when nothing waits. After
    :meth:`close`, posts are ignored and receiving raises ``trio.EndOfChannel`` once the queue is empty.
    """

    __slots__ = (
        "_closed",
        "_head",
        "_interrupted",
        "_items",
        "_order",
        "_plain",
        "_summarize",
        "_waiter",
        "capacity",
        "coalesced",
        "dropped",
    )

    def __init__(self, capacity: int, summarize: Callable[[K, T], tuple[K, T]] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.coalesced = 0
        self.dropped = 0
        self._summarize = summarize
        # Order of waiting items from _order[_head]: a key (its item in _items) or a _Plain; taken ones are None
        # until the list is compacted. (Not a dict alone: popping a dict's front makes the next front lookup walk
        # over the holes; not a deque: an empty one costs 600 bytes per actor.) With no _Plain waiting, _items
        # is in queue order.
        self._order: list[K | _Plain[T] | None] = []
        self._head = 0
        self._items: dict[K, T] = {}
        self._plain = 0
        self._waiter: trio.lowlevel.Task | None = None
        self._interrupted = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._order) - self._head

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def receiving(self) -> bool:
        """Is a receiver parked, waiting for an item (or a close or interrupt)?"""
        return self._waiter is not None

    # -- the sender's side: never blocks, never raises ------------------------------------------------------

    def post(self, key: K | None, item: T) -> bool:
        """Queue ``item`` under ``key`` (None: coalesces with nothing). False if it was refused (counted)."""
        if self._closed:
            return False
        items = self._items
        if key in items:  # (None never is)
            items[key] = item
            self.coalesced += 1
            return True
        order = self._order
        if len(order) - self._head >= self.capacity:
            if self._summarize is not None:
                self._fold(self._summarize)
            if len(self._order) - self._head >= self.capacity:
                return self._absorb(key, item)
            order, items = self._order, self._items  # folding made new ones
            if key in items:  # the fold made this very key (a hint for the watch's own path)
                items[key] = item
                self.coalesced += 1
                return True
        if key is None:
            order.append(_Plain(item))
            self._plain += 1
        else:
            items[key] = item
            order.append(key)
        if self._waiter is not None:
            self._wake()
        return True

    def _absorb(self, key: K | None, item: T) -> bool:
        """At a full queue even after folding: into a waiting hint, else refused."""
        if key is not None and self._summarize is not None:
            hint_key, hint = self._summarize(key, item)
            if hint_key in self._items:
                self._items[hint_key] = hint
                self.coalesced += 1
                return True
        self.dropped += 1
        return False

    def _fold(self, summarize: Callable[[K, T], tuple[K, T]]) -> None:
        order: list[K | _Plain[T] | None] = []
        items: dict[K, T] = {}
        for entry in self._order[self._head :]:
            if entry is None:
                continue  # unreachable: only taken entries are None, and they are before _head
            if isinstance(entry, _Plain):
                order.append(entry)
                continue
            hint_key, hint = summarize(entry, self._items[entry])
            if hint_key in items:
                self.coalesced += 1
            else:
                order.append(hint_key)
            items[hint_key] = hint
        self._order, self._items, self._head = order, items, 0

    def close(self) -> None:
        """No more items: a receiver gets what is waiting, then ``trio.EndOfChannel``."""
        self._closed = True
        if self._waiter is not None:
            self._wake()

    def interrupt(self) -> None:
        """Make the receiver look at its own state: a waiting receive raises :class:`Interrupted`, or else the
        next receive that finds nothing waiting does (once)."""
        self._interrupted = True
        if self._waiter is not None:
            self._wake()

    def purge(self) -> int:
        """Drop everything waiting; returns how many."""
        dropped = len(self._order) - self._head
        self._order.clear()
        self._head = 0
        self._items.clear()
        self._plain = 0
        return dropped

    def purge_keyed(self, keep: Callable[[T], bool] | None = None) -> int:
        """Drop every keyed item waiting (but those ``keep(item)`` is true for), keeping those posted with key
        None in their order; returns how many were dropped (for a consumer about to get one hint that stands
        for all of them)."""
        items = self._items
        kept = {} if keep is None else {key: item for key, item in items.items() if keep(item)}
        dropped = len(items) - len(kept)
        if dropped:
            self._order = [
                e for e in self._order[self._head :] if isinstance(e, _Plain) or (e is not None and e in kept)
            ]
            self._head = 0
            self._items = kept
        return dropped

    # -- the receiver's side ----------------------------------------------------------------------------------

    def receive_nowait(self) -> T:
        """The first waiting item; ``trio.WouldBlock`` if none (``trio.EndOfChannel`` if closed)."""
        order, head = self._order, self._head
        if head == len(order):
            if self._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock
        entry = order[head]
        if head + 1 == len(order):
            order.clear()
            self._head = 0
        elif head >= 64 and 2 * head >= len(order):
            del order[: head + 1]  # compact: what was taken goes
            self._head = 0
        else:
            order[head] = None
            self._head = head + 1
        assert entry is not None
        if isinstance(entry, _Plain):
            self._plain -= 1
            return entry.item
        return self._items.pop(entry)

    async def receive(self) -> T:
        """The first waiting item, waiting for one if need be. Raises Interrupted (see :meth:`interrupt`),
        ``trio.EndOfChannel`` when closed and empty, ``trio.BusyResourceError`` if another task is receiving."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._head == len(self._order):
            self._park()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
            self._woken()
        return self.receive_nowait()

    async def receive_batch(self, max_items: int | None = None) -> list[T]:
        """Every waiting item (at most ``max_items``) in order, waiting for one if none waits; then one trip
        through the scheduler, so a consumer kept busy by a flood still lets other tasks run between batches.
        Raises like :meth:`receive`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._head == len(self._order):
            self._park()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
            self._woken()
        batch = self._take(max_items)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def _take(self, max_items: int | None) -> list[T]:
        # Not inline in receive_batch: a comprehension there would make ``self`` a cell of the coroutine, two
        # objects more kept by every idle receiver.
        if max_items is not None and max_items < len(self):
            batch = [self.receive_nowait() for _ in range(max_items)]
        else:
            if self._plain == 0:
                batch = list(self._items.values())  # in queue order when no plain item waits
            else:
                items = self._items
                batch = [
                    e.item if isinstance(e, _Plain) else items[e]
                    for e in self._order[self._head :]
                    if e is not None
                ]
            self._items.clear()
            self._order.clear()
            self._head = self._plain = 0
        return batch

    # Parking is inline in receive and receive_batch, between these two (no coroutine of its own, and a
    # bound method rather than a closure to abort with: an idle consumer keeps fewer objects alive).

    def _park(self) -> None:
        """Before waiting for a post, close or interrupt: raises what the state means already."""
        if self._closed:
            raise trio.EndOfChannel
        if self._interrupted:
            self._interrupted = False
            raise Interrupted
        if self._waiter is not None:
            raise trio.BusyResourceError("another task is already receiving from this queue")
        self._waiter = trio.lowlevel.current_task()

    def _abort(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _woken(self) -> None:
        """After the wait: raises Interrupted if that is what woke it with nothing to take."""
        if self._interrupted and self._head == len(self._order):
            self._interrupted = False
            raise Interrupted

    def _wake(self) -> None:
        task, self._waiter = self._waiter, None
        assert task is not None
        trio.lowlevel.reschedule(task)
