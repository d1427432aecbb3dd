"""A domain's mailbox (a CoalescingQueue of envelopes and messages): the last event per (watch, path) kept in
the order distinct paths arrived, messages never coalesced nor collapsed, a flood folded into one re-read hint
per watch, an interrupt seen by a receiver with nothing to do, and a purge that tells every asker."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors
from actors.runtime.domain.mailbox import Envelope, Item, Mailbox
from actors.runtime.domain.messages import DomainNotRunning, Message, Reply
from actors.xs.coalesce import Interrupted


async def noop(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
    pass


WATCH = actors.Watch("/local/domain/{domid}/data", noop)
OTHER = actors.Watch("/local/domain/{domid}/device", noop)


def event(path: str, watch: actors.Watch = WATCH, token: str = "t") -> Envelope:
    return Envelope(watch, actors.WatchEvent(f"/local/domain/4/{path}", token), "/local/domain/4/data")


def described(items: list[Item]) -> list[str]:
    return [f"{i.event.path}={i.event.token}" if isinstance(i, Envelope) else f"msg:{i.body}" for i in items]


async def test_last_event_per_watch_and_path_kept_in_order_and_messages_never_coalesced() -> None:
    mailbox = Mailbox(4, 8)
    for item in (
        event("data/a", token="1"),
        Message("m1", None),
        event("data/b", token="1"),
        event("data/a", token="2"),  # replaces a=1 in its place
        event("data/a", OTHER, "3"),  # another watch: another key
        Message("m1", None),  # the same body again: a second message
    ):
        mailbox.post(item)
    assert len(mailbox) == 5
    assert mailbox.coalesced == 1
    batch = await mailbox.receive_batch(64)
    assert described(batch) == [
        "/local/domain/4/data/a=2",
        "msg:m1",
        "/local/domain/4/data/b=1",
        "/local/domain/4/data/a=3",
        "msg:m1",
    ]
    assert len(mailbox) == 0


async def test_a_flood_is_bounded_and_folded_into_a_re_read_hint_while_messages_keep_their_place() -> None:
    mailbox = Mailbox(2, 3, message_limit=2)  # room for 2 + 3 + 2 items
    mailbox.post(Message("first", None))
    for i in range(1000):
        mailbox.post(event(f"data/k{i}"))
        assert len(mailbox) <= 7
    mailbox.post(Message("last", None))
    items = []
    while len(mailbox):
        items.extend(await mailbox.receive_batch(2))
    text = described(items)
    assert text[0] == "msg:first" and text[-1] == "msg:last"
    assert "/local/domain/4/data=t" in text  # the hint: re-read the watch's own path
    assert "/local/domain/4/data/k999=t" in text  # the last event survives
    assert len(text) <= 7


async def test_interrupt_wakes_an_idle_receiver_and_purge_tells_every_asker() -> None:
    mailbox = Mailbox()
    got: list[object] = []

    async def receiver() -> None:
        with pytest.raises(Interrupted):
            await mailbox.receive_batch(64)
        got.append([])
        with pytest.raises(Interrupted):  # one convention: receive is interrupted the same way
            await mailbox.receive()
        got.append(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [[]]
        mailbox.interrupt()
    assert got == [[], None]

    reply = Reply()
    mailbox.post(event("data/a"))
    mailbox.post(Message("ask", reply))
    assert mailbox.purge(7) == 2
    assert len(mailbox) == 0
    assert reply.done and isinstance(reply.error, DomainNotRunning) and "domain 7" in str(reply.error)
