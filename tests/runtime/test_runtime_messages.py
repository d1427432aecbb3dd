"""Messages to domain actors: ``rt.send`` never blocks, ``rt.ask`` answers or raises, in order with watch events,
never coalesced; control requests do not wait behind them. Embedded xenstored, autojump clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.runtime import AskTimeout, DomainNotRunning, MailboxFull, MessageError, RuntimeOptions

OPTIONS = RuntimeOptions(
    restart=RestartPolicy(max_restarts=1, period=60, backoff_initial=1, backoff_max=30),
    stop_deadline=4,
    message_limit=5000,
)


@pytest.fixture
async def rt(xs: actors.XenStore) -> AsyncIterator[actors.Runtime]:
    async with actors.open_runtime(xs, options=OPTIONS) as runtime:
        yield runtime


async def running(xs: actors.XenStore, rt: actors.Runtime, *domids: int) -> None:
    for domid in domids:
        await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
    for domid in domids:
        with trio.fail_after(30):
            await rt.wait_domain(domid, State.RUNNING)


async def test_messages_arrive_in_order_with_watch_events_and_are_never_coalesced(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[object] = []
    gate, first, done = trio.Event(), trio.Event(), trio.Event()

    async def on_event(ctx: DomainContext, event: WatchEvent) -> None:
        seen.append(event.path)
        first.set()
        await gate.wait()

    @rt.on_message
    async def on_message(ctx: DomainContext, message: object) -> None:
        seen.append(message)
        if message == 2999:
            done.set()

    rt.watch("/local/domain/{domid}/data", on_event)
    await running(xs, rt, 4)
    await first.wait()  # the initial event, now held at the gate
    rt.send(4, "before")
    await xs.write("/local/domain/4/data/x", "1")
    await trio.sleep(0.5)  # the event is in the mailbox behind "before"
    for n in range(3000):
        rt.send(4, n)
    gate.set()
    with trio.fail_after(60):
        await done.wait()
    assert seen[:3] == ["/local/domain/4/data", "before", "/local/domain/4/data/x"]
    assert seen[3:] == list(range(3000))
    assert rt.domains[4].coalesced == 0


async def test_ask_returns_the_result_or_raises_the_failure(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    @rt.on_message
    async def on_message(ctx: DomainContext, message: Any) -> Any:
        if message == "boom":
            raise ValueError("no such command")
        if message == "slow":
            await trio.sleep(100)
        return (ctx.domid, message * 2)

    with pytest.raises(DomainNotRunning, match="no domain actor"):
        await rt.ask(6, 1)
    await running(xs, rt, 6, 7)
    assert await rt.ask(6, 21) == (6, 42)
    with pytest.raises(AskTimeout):
        await rt.ask(7, "slow", timeout=1)
    with pytest.raises(ValueError, match="no such command"):
        await rt.ask(6, "boom")
    # The failure was the domain's: counted and supervised, and the domain is not running meanwhile.
    await rt.wait_domain(6, State.BACKOFF)
    assert rt.domains[6].failures == 1
    with pytest.raises(DomainNotRunning, match="backoff"):
        rt.send(6, 1)
    await rt.wait_domain(6, State.RUNNING)
    assert await rt.ask(6, 1) == (6, 2)


async def test_an_unanswered_ask_ends_when_its_domain_stops(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    @rt.on_message
    async def on_message(ctx: DomainContext, message: Any) -> None:
        await trio.sleep_forever()

    await running(xs, rt, 8)
    outcomes: list[BaseException] = []

    async def asker(message: str) -> None:
        try:
            await rt.ask(8, message, timeout=None)
        except DomainNotRunning as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(asker, "running")
        nursery.start_soon(asker, "queued")
        await trio.sleep(1)
        await actors.retire_domain(xs, 8)
    assert len(outcomes) == 2


async def test_control_requests_do_not_wait_behind_a_long_mailbox(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    @rt.on_message
    async def on_message(ctx: DomainContext, message: Any) -> None:
        await trio.sleep(1)

    await running(xs, rt, 9)
    for n in range(1000):
        rt.send(9, n)
    await trio.sleep(2)
    retired_at = trio.current_time()
    await actors.retire_domain(xs, 9)
    await rt.wait_domain(9, None)
    assert trio.current_time() - retired_at <= OPTIONS.stop_deadline


async def test_refusals_are_typed_and_queue_nothing(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    async with actors.open_runtime(xs, message_limit=2) as rt:
        await running(xs, rt, 10)
        with pytest.raises(MessageError, match="no message handler"):
            rt.send(10, 1)

        seen: list[int] = []

        @rt.on_message
        async def on_message(ctx: DomainContext, message: int) -> None:
            await trio.sleep(1)
            seen.append(message)

        rt.send(10, 1)
        rt.send(10, 2)
        with pytest.raises(MailboxFull):
            rt.send(10, 3)
        await trio.sleep(5)
        assert seen == [1, 2]
        rt.send(10, 4)  # room again
