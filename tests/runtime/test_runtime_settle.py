"""``rt.settle()`` at the runtime's own level (the embedded xenstored, announce/retire as the toolstack): what it
waits for (a domain starting, the default actor's handler, what handlers' writes cause), what it names on
timeout, and that it returns at once when the runtime is quiet."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, NotSettled, WatchEvent
from harness.servers import Server


async def test_settle_waits_for_a_domain_to_start(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    started: list[int] = []
    async with actors.open_runtime(xs, lifecycle="mtwatch") as rt:

        @rt.on_start
        async def slow_start(ctx: DomainContext) -> None:
            await trio.sleep(2)
            started.append(ctx.domid)

        await rt.ready.wait()
        await actors.announce_domain(xs, 5)
        await rt.settle()
        assert started == [5] and rt.domains[5].state is actors.State.RUNNING
        await actors.retire_domain(xs, 5)
        await rt.settle()
        assert 5 not in rt.domains


async def test_settle_waits_for_the_default_actor_and_names_it(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[str] = []
    async with actors.open_runtime(xs, lifecycle="mtwatch") as rt:

        async def global_handler(ctx: DomainContext, event: WatchEvent) -> None:
            if await ctx.xs.exists(event.path):
                value = await ctx.xs.read(event.path)
                if value == b"hang":
                    await trio.sleep_forever()
                await trio.sleep(1)
                seen.append(value.decode())

        rt.watch("/tool/flag", global_handler)
        await rt.settle()  # the watch registered and its first event handled (nothing there yet)
        await xs.write("/tool/flag", "on")
        await rt.settle()
        assert seen == ["on"]
        await xs.write("/tool/flag", "hang")
        with pytest.raises(NotSettled, match="default actor") as caught:
            await rt.settle(timeout=5)
        assert list(caught.value.busy) == [0]


async def test_settle_on_a_quiet_runtime_returns_at_once(xs: actors.XenStore) -> None:
    async with actors.open_runtime(xs, lifecycle="mtwatch") as rt:
        await rt.ready.wait()
        start = trio.current_time()
        await rt.settle()
        assert trio.current_time() - start < 1  # one round trip to the daemon
        with pytest.raises(ValueError, match="positive"):
            await rt.settle(timeout=0)


async def test_settle_on_every_daemon(server: Server) -> None:
    # A daemon in a process of its own (C xenstored, oxenstored): its answers come over the socket.
    seen: list[bytes] = []
    async with actors.connect(server.socket_path) as xs, actors.open_runtime(xs, lifecycle="mtwatch") as rt:

        async def handler(ctx: DomainContext, event: WatchEvent) -> None:
            if await ctx.xs.exists(event.path):
                seen.append(await ctx.xs.read(event.path))
                await ctx.xs.write(f"/local/domain/{ctx.domid}/answer", "done")

        rt.watch("/local/domain/{domid}/data", handler)
        await actors.announce_domain(xs, 5)
        await rt.settle()
        assert rt.domains[5].state is actors.State.RUNNING
        await xs.write("/local/domain/5/data", "x")
        await rt.settle()
        assert seen == [b"x"]
        assert await xs.read("/local/domain/5/answer") == b"done"
