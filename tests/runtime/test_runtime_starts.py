"""The runtime's start requests (actors/runtime/starting.py): a new actor is prestarted (its name and watches
first, then its task), a started one asks in a shared pipeline; whatever happens between the registry's word and
the actor's task, no watch is left behind, no domain goes deaf and no actor waits forever. The embedded
xenstored over a real socket; a lifecycle source driven by the test (a custom source, as a user may give)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, State, WatchEvent
from actors.runtime.lifecycle.protocol import LifecycleSink
from actors.runtime.watch_rules import Handler
from actors.xenstored import open_xenstored
from actors.xs.wire import Frame, Op
from harness.faultproxy import FaultProxy, fault_proxy, path_of


class Driven:
    """A lifecycle source that reports nothing live, then lets the test speak as the registry."""

    name = "driven"

    def __init__(self) -> None:
        self.sink: LifecycleSink | None = None

    async def follow(self, xs: actors.XenStore, sink: LifecycleSink) -> None:
        self.sink = sink
        sink.full({})
        await trio.sleep_forever()


def tokens_of(xs: actors.XenStore, domid: int) -> set[str]:
    return {token for token in xs._sinks if token.startswith(f"mtw/{domid}/")}


@asynccontextmanager
async def runtime_through_proxy(
    workdir: str, when: str, domid: int, change: bytes | None, handler: Handler
) -> AsyncIterator[tuple[actors.Runtime, actors.XenStore, Driven, FaultProxy]]:
    """A runtime (through a fault proxy, on the embedded xenstored) whose registry says ``domid`` is live, then
    ``change`` for it: at once (``when="before"``: before the runtime's pipeline goes out), or as the proxy
    passes the domain's WATCH (``when="during"``: its requests are out, its task not started yet)."""
    path = os.path.join(workdir, "socket")
    source = Driven()
    async with open_xenstored(path), actors.connect(path) as xs, fault_proxy(path) as proxy:
        await xs.write(f"/local/domain/{domid}/name", f"guest-{domid}")

        def rule(frame: Frame) -> str | None:
            if when == "during" and frame.op == Op.WATCH and path_of(frame) == f"/local/domain/{domid}/data":
                assert source.sink is not None
                source.sink.one(domid, change)
            return None

        proxy.rule = rule
        async with (
            actors.connect(proxy.path) as proxied,
            actors.open_runtime(proxied, lifecycle=source) as rt,
        ):
            rt.watch("/local/domain/{domid}/data", handler)
            await rt.ready.wait()
            assert source.sink is not None
            source.sink.one(domid, b"first")  # prestarted: its requests queued, its task not started
            if when == "before":
                source.sink.one(domid, change)
            yield rt, xs, source, proxy


@pytest.mark.parametrize("when", ["before", "during"])
async def test_gone_before_its_task_began_leaves_no_watch(
    workdir: str, autojump_clock: trio.testing.MockClock, when: str
) -> None:
    handled: list[int] = []

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        handled.append(ctx.domid)

    async with runtime_through_proxy(workdir, when, 5, None, handler) as (rt, _xs, source, proxy):
        with trio.fail_after(10):
            await rt.wait_domain(5, None)
        await trio.testing.wait_all_tasks_blocked()
        assert tokens_of(rt.xs, 5) == set()
        assert handled == []
        asked = [path_of(frame) for frame in proxy.requests if frame.op in (Op.WATCH, Op.READ)]
        if when == "before":  # nothing asked for a domain gone before its requests went out
            assert not [path for path in asked if path.startswith("/local/domain/5/")]
        assert source.sink is not None
        source.sink.one(6, b"uuid-6")  # and the next one starts as ever
        with trio.fail_after(10):
            await rt.wait_domain(6, State.RUNNING)
        assert len(tokens_of(rt.xs, 6)) == 1


@pytest.mark.parametrize("when", ["before", "during"])
async def test_renamed_before_its_task_began_watches_for_the_new_identity(
    workdir: str, autojump_clock: trio.testing.MockClock, when: str
) -> None:
    seen: list[tuple[int, bytes, str]] = []
    written = trio.Event()

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        seen.append((ctx.domid, ctx.identity, event.path))
        if event.path.endswith("/data/x"):
            written.set()

    async with runtime_through_proxy(workdir, when, 7, b"second", handler) as (rt, xs, _, _proxy):
        with trio.fail_after(10):
            while rt.domains.get(7) is None or rt.domains[7].identity != b"second":  # noqa: ASYNC110
                await trio.sleep(0.01)
            await rt.wait_domain(7, State.RUNNING)
            await xs.write("/local/domain/7/data/x", "1")
            await written.wait()
        assert rt.domains[7].name == "guest-7"
        assert all(identity == b"second" for _, identity, _ in seen)
        (token,) = tokens_of(rt.xs, 7)
        assert token.startswith("mtw/7/2/")  # the first incarnation's watch (generation 1) was undone


async def test_with_on_start_hooks_the_actor_asks_after_its_hooks(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    source = Driven()
    order: dict[int, str] = {}

    async with actors.open_runtime(xs, lifecycle=source) as rt:

        @rt.on_start
        async def start(ctx: DomainContext) -> None:
            name = rt.domains[ctx.domid].name
            order[ctx.domid] = f"hook sees {len(tokens_of(rt.xs, ctx.domid))} watches, name {name!r}"

        rt.watch("/local/domain/{domid}/data", lambda ctx, event: None)
        await xs.write("/local/domain/8/name", "guest-eight")
        await rt.ready.wait()
        assert source.sink is not None
        for domid in range(8, 8 + 300):  # more than a pipeline's batch
            source.sink.one(domid, b"id")
        with trio.fail_after(30):
            for domid in range(8, 8 + 300):
                await rt.wait_domain(domid, State.RUNNING)
        assert order[8] == "hook sees 0 watches, name 'guest-eight'"
        assert order[9] == "hook sees 0 watches, name None"
        assert len(order) == 300
        assert all(len(tokens_of(rt.xs, domid)) == 1 for domid in range(8, 8 + 300))


async def test_a_lost_connection_under_a_start_is_made_good_by_the_reconnect(
    workdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The connection dies while the runtime's pipelines are out (a proxy cuts it at the first per-domain
    WATCH): the actors still start, and the reconnect registers every watch."""
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path), actors.connect(path) as xs, fault_proxy(path) as proxy:
        for domid in range(1, 201):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        cuts = 0

        def rule(frame: Frame) -> str | None:
            nonlocal cuts
            if frame.op == Op.WATCH and path_of(frame).endswith("/data") and not cuts:
                cuts += 1
                return "CUT"
            return None

        proxy.rule = rule
        connect = partial(actors.connect, proxy.path)
        async with actors.open_runtime(connect=connect, lifecycle="mtwatch") as rt:
            rt.watch("/local/domain/{domid}/data", lambda ctx, event: None)
            with trio.fail_after(60):
                for domid in range(1, 201):
                    await rt.wait_domain(domid, State.RUNNING)
                while rt.reconnects < 1 or any(not tokens_of(rt.xs, d) for d in range(1, 201)):  # noqa: ASYNC110
                    await trio.sleep(0.1)
            assert cuts == 1


async def test_an_attach_that_finds_the_turn_taken_waits_for_it_and_asks_again(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    """A watch rule removed and another added at once: each domain's detach (UNWATCH) and attach (WATCH) contend
    for the domain's turn; whichever comes second waits for it. Every domain ends with the new watch alone."""
    source = Driven()
    async with actors.open_runtime(xs, lifecycle=source) as rt:
        old = rt.watch("/local/domain/{domid}/data", lambda ctx, event: None)
        await rt.ready.wait()
        assert source.sink is not None
        domids = range(1, 201)
        for domid in domids:
            source.sink.one(domid, b"id")
        with trio.fail_after(30):
            for domid in domids:
                await rt.wait_domain(domid, State.RUNNING)
        rt.unwatch(old)
        new = rt.watch("/local/domain/{domid}/other", lambda ctx, event: None)
        with trio.fail_after(30):
            while any(tokens_of(rt.xs, d) != {f"mtw/{d}/1/{new.id}"} for d in domids):  # noqa: ASYNC110
                await trio.sleep(0.01)
