"""What must not escape a domain's scope or be charged to a guest: a task of the default actor that raises,
a per-domain task ended by the daemon's fault, and the events of routed global watches when their domain is
throttled. The embedded xenstored over a real socket; the autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, State, WatchEvent
from actors.runtime.domain.mailbox import Envelope, Mailbox
from actors.runtime.domain.messages import Message


async def test_a_default_actor_task_that_raises_ends_neither_the_runtime_nor_the_default_actor(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[str] = []

    async def boom() -> None:
        raise RuntimeError("a bug in a task of the default actor")

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        seen.append(event.path)
        if event.path.endswith("/raw"):
            ctx.nursery.start_soon(boom)  # straight into the default actor's nursery
        elif event.path.endswith("/soon"):
            ctx.start_soon(boom)

    async with actors.open_runtime(xs) as rt:
        rt.watch("/global", handler)
        with trio.fail_after(30):
            while "/global" not in seen:  # noqa: ASYNC110 (registered in the background: its initial event)
                await trio.sleep(0.01)
            for name in ("raw", "soon", "after"):
                await xs.write(f"/global/{name}", "1")
                while f"/global/{name}" not in seen:  # noqa: ASYNC110 (the handler's record, polled)
                    await trio.sleep(0.01)
            while rt.default_failures < 2:  # noqa: ASYNC110 (a counter, polled as an operator would)
                await trio.sleep(0.01)
        assert rt.default_failures == 2
        assert not xs.is_lost


@pytest.mark.parametrize(
    "fault",
    [actors.RequestTimeout("READ on '/x': no reply within 30 s"), actors.ConnectionLost("lost")],
    ids=["request timeout", "connection lost"],
)
async def test_a_per_domain_task_ended_by_the_daemon_is_not_the_domains_failure(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock, fault: Exception
) -> None:
    ended = trio.Event()

    async def task() -> None:
        try:
            await trio.sleep(1)
            raise fault
        finally:
            ended.set()

    async with actors.open_runtime(xs) as rt:

        @rt.on_start
        async def start(ctx: DomainContext) -> None:
            ctx.start_soon(task)

        await actors.announce_domain(xs, 5, identity="uuid-5")
        with trio.fail_after(30):
            await rt.wait_domain(5, State.RUNNING)
            await ended.wait()
            await trio.sleep(1)
        snapshot = rt.domains[5]
        assert snapshot.failures == 0 and snapshot.restarts == 0 and snapshot.state is State.RUNNING


async def noop(ctx: DomainContext, event: WatchEvent) -> None:
    pass


async def test_a_throttle_purges_only_the_events_a_rewatch_brings_back() -> None:
    own = actors.Watch("/local/domain/{domid}/data", noop)
    routed = actors.Watch("/vm", noop, route=lambda path: 4)
    mailbox = Mailbox(8, 8)
    mailbox.post(Envelope(own, WatchEvent("/local/domain/4/data/a", "t"), "/local/domain/4/data"))
    mailbox.post(Envelope(routed, WatchEvent("/vm/uuid-4", "g"), "/vm"))
    mailbox.post(Message("m", None))
    mailbox.post(Envelope(own, WatchEvent("/local/domain/4/data/b", "t"), "/local/domain/4/data"))
    assert mailbox.purge_events() == 2
    left = [await mailbox.receive(), await mailbox.receive()]
    assert [type(i).__name__ for i in left] == ["Envelope", "Message"]
    assert isinstance(left[0], Envelope) and left[0].watch is routed
    assert len(mailbox) == 0


async def test_a_routed_event_reaches_a_throttled_domain(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    """A routed global watch's event is not dropped while its domain is throttled: no re-watch at the
    cool-down's end would bring it back."""
    options = actors.RuntimeOptions(flood_rate=50, flood_cooldown=3.0, flood_cooldown_max=3.0)
    routed: list[str] = []

    async def own(ctx: DomainContext, event: WatchEvent) -> None:
        await trio.sleep(0.001)

    async def global_handler(ctx: DomainContext, event: WatchEvent) -> None:
        routed.append(event.path)

    async with actors.open_runtime(xs, options=options) as rt:
        rt.watch("/local/domain/{domid}/data", own)
        rt.watch("/vm", global_handler, route=lambda path: 5)
        await xs.write("/local/domain/5/data", "")
        await actors.announce_domain(xs, 5, identity="uuid-5")
        with trio.fail_after(60):
            await rt.wait_domain(5, State.RUNNING)
            n = 0
            while rt.domains[5].throttled_since is None:
                await xs.write(f"/local/domain/5/data/k{n % 20}", str(n))
                n += 1
            await xs.write("/vm/uuid-5", "changed")
            while "/vm/uuid-5" not in routed:  # noqa: ASYNC110 (the handler's record, polled)
                await trio.sleep(0.01)
            assert rt.domains[5].throttled_since is not None  # handled while the throttle lasts
