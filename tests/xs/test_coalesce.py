"""The rules of CoalescingQueue: bounded memory, the last item of every key kept (as itself or inside a hint),
distinct keys in arrival order, items with key None in order, and a receive that wakes on post, on close and on
interrupt, and can be cancelled."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.xs.coalesce import CoalescingQueue, Interrupted

KEYS = "abcdefgh"


@dataclass(frozen=True)
class Item:
    key: str | None  # None: posted with key None; "*<group>": a hint
    seq: int  # the post that made it; for a hint, the post during which the queue was folded


Op = tuple[str, str | None, int]  # ("post", key, 0) or ("receive", None, n)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("post"), st.sampled_from([*KEYS, None]), st.just(0)),
        st.tuples(st.just("receive"), st.none(), st.integers(0, 4)),
    ),
    max_size=120,
)


def drain(queue: CoalescingQueue[str, Item], limit: int | None = None) -> list[Item]:
    out: list[Item] = []
    while len(queue) and (limit is None or len(out) < limit):
        out.append(queue.receive_nowait())
    return out


@settings(max_examples=300, deadline=None)
@given(ops=ops, capacity=st.integers(1, 6), groups=st.integers(1, 3))
def test_bounded_and_every_key_last_item_represented(ops: list[Op], capacity: int, groups: int) -> None:
    seq = 0

    def summarize(key: str, item: Item) -> tuple[str, Item]:
        # A hint folded again stays itself. Folding happens during a post, over the items that were waiting: the
        # hint covers every item of its group posted before; an incoming item summarized covers itself too.
        hint = key if key.startswith("*") else f"*{KEYS.index(key) % groups}"
        return hint, Item(hint, max(item.seq, seq - 1))

    queue: CoalescingQueue[str, Item] = CoalescingQueue(capacity, summarize)
    uncovered: dict[str, int] = {}  # key -> its latest post not yet received (as itself or in a hint)
    last_post: dict[str, int] = {}
    plains_accepted: list[int] = []
    plains_received: list[int] = []

    def receive(items: list[Item]) -> None:
        for item in items:
            if item.key is None:
                plains_received.append(item.seq)
            elif item.key.startswith("*"):
                group = int(item.key[1:])
                for key in [
                    k for k, s in uncovered.items() if KEYS.index(k) % groups == group and s <= item.seq
                ]:
                    del uncovered[key]
            else:
                assert item.seq == last_post[item.key]  # a key's waiting item is always its latest
                del uncovered[item.key]

    for op, key, n in [*ops, ("receive", None, 10_000)]:
        if op == "post":
            seq += 1
            accepted = queue.post(key, Item(key, seq))
            if not accepted:  # refused only when plain items and hints fill the queue
                assert len(plains_accepted) - len(plains_received) + groups >= capacity
            elif key is None:
                plains_accepted.append(seq)
            else:
                uncovered[key] = last_post[key] = seq
        else:
            receive(drain(queue, n))
        assert len(queue) <= capacity
    assert not uncovered
    assert plains_received == plains_accepted


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_without_overflow_order_of_first_arrival_and_last_item(ops: list[Op]) -> None:
    queue: CoalescingQueue[str, Item] = CoalescingQueue(len(ops) + 1)
    model: OrderedDict[object, Item] = OrderedDict()
    coalesced = 0
    for seq, (op, key, n) in enumerate(ops):
        if op == "post":
            assert queue.post(key, Item(key, seq))
            if key in model:
                coalesced += 1
            model[key if key is not None else object()] = Item(key, seq)
        else:
            expected = [model.popitem(last=False)[1] for _ in range(min(n, len(model)))]
            assert drain(queue, n) == expected
        assert len(queue) == len(model)
    assert drain(queue) == list(model.values())
    assert queue.coalesced == coalesced


@given(keys=st.lists(st.sampled_from([*KEYS, None]), max_size=60), capacity=st.integers(1, 8))
def test_without_summarize_a_full_queue_refuses_new_keys(keys: list[str | None], capacity: int) -> None:
    queue: CoalescingQueue[str, Item] = CoalescingQueue(capacity)
    refused = 0
    for seq, key in enumerate(keys):
        if not queue.post(key, Item(key, seq)):
            refused += 1
            assert len(queue) == capacity
        assert len(queue) <= capacity
    assert queue.dropped == refused


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        CoalescingQueue[str, int](0)


async def test_batch_in_order_plain_items_included() -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(10)
    for key, value in [("a", 1), (None, 2), ("b", 3), ("a", 4), (None, 5)]:
        queue.post(key, value)
    assert await queue.receive_batch(2) == [4, 2]
    assert await queue.receive_batch() == [3, 5]
    for key, value in [("a", 1), ("b", 2), ("a", 3)]:
        queue.post(key, value)
    assert await queue.receive_batch() == [3, 2]
    assert len(queue) == 0


async def test_receive_wakes_on_post_and_close() -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(4)
    got: list[int] = []

    async def consumer() -> None:
        while True:
            try:
                got.extend(await queue.receive_batch())
            except trio.EndOfChannel:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        queue.post("a", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [1]
        queue.post("b", 2)
        queue.post("b", 3)
        queue.close()
        assert not queue.post("c", 4)  # ignored once closed
    assert got == [1, 3]


async def test_interrupt_wakes_a_waiting_receive_once() -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(4)
    outcomes: list[object] = []

    async def consumer() -> None:
        for _ in range(2):
            try:
                outcomes.append(await queue.receive())
            except Interrupted:
                outcomes.append("interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        queue.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        queue.post("a", 7)
    assert outcomes == ["interrupted", 7]


async def test_interrupt_without_a_receiver_lets_waiting_items_through_first() -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(4)
    queue.post("a", 1)
    queue.interrupt()
    assert await queue.receive() == 1
    with pytest.raises(Interrupted):
        await queue.receive()
    queue.post("b", 2)
    assert await queue.receive() == 2


async def test_a_cancelled_receive_leaves_the_queue_usable(autojump_clock: trio.abc.Clock) -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(4)
    with trio.move_on_after(1) as scope:
        await queue.receive()
    assert scope.cancelled_caught
    queue.post("a", 1)
    assert await queue.receive() == 1


async def test_one_receiver_at_a_time() -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await queue.receive()
        nursery.cancel_scope.cancel()


async def test_purge_drops_everything_waiting() -> None:
    queue: CoalescingQueue[str, int] = CoalescingQueue(4)
    queue.post("a", 1)
    queue.post(None, 2)
    assert queue.purge() == 2
    assert len(queue) == 0
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()


async def test_purge_keyed_drops_events_and_keeps_plain_items_in_order() -> None:
    queue: CoalescingQueue[str, str] = CoalescingQueue(16)
    for key, item in [("a", "a1"), (None, "m1"), ("b", "b1"), ("a", "a2"), (None, "m2")]:
        queue.post(key, item)
    assert queue.purge_keyed() == 2
    assert len(queue) == 2
    assert [queue.receive_nowait(), queue.receive_nowait()] == ["m1", "m2"]
    queue.post("a", "a3")  # the queue works on afterwards
    assert queue.receive_nowait() == "a3"
    assert queue.purge_keyed() == 0


def test_a_post_of_the_key_a_fold_just_made_replaces_the_hint() -> None:
    """At a full queue the fold can make the very key being posted (an event for the watch's own path, whose
    hint has that key): the post replaces the hint, and the key stands in the queue once."""

    def summarize(key: str, item: Item) -> tuple[str, Item]:
        return "/w", Item("/w", item.seq)  # every path of the watch folds into its own path

    queue: CoalescingQueue[str, Item] = CoalescingQueue(2, summarize)
    queue.post("/w/a", Item("/w/a", 1))
    queue.post("/w/b", Item("/w/b", 2))
    assert queue.post("/w", Item("/w", 3))
    assert len(queue) == 1
    assert drain(queue) == [Item("/w", 3)]
    assert len(queue) == 0
