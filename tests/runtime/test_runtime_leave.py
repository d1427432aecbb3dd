"""Leaving on a connection the caller keeps (the README's way): every domain's watches are removed at the
daemon, in pipelines, and the connection carries on; the collector's freeze is the runtime's only while it
runs."""

from __future__ import annotations

import gc

import trio

import actors
from actors import DomainContext, State, WatchEvent
from harness.servers import Embedded


async def test_leaving_a_kept_connection_unwatches_every_domain(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    async def noop(ctx: DomainContext, event: WatchEvent) -> None:
        pass

    watches = xenstored.server.core.watches
    before = len(watches)
    with trio.fail_after(30):
        async with actors.open_runtime(xs) as rt:
            rt.watch("/local/domain/{domid}/data", noop)
            rt.watch("/local/domain/{domid}/name", noop)
            for domid in range(1, 301):
                await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
            for domid in range(1, 301):
                await rt.wait_domain(domid, State.RUNNING)
            assert len(watches) >= before + 600
        assert len(rt.domains) == 0 and rt.census.total == 0
        assert len(watches) <= before + 1  # at most the registry's own, gone with its task
        await xs.write("/local/domain/7/data", "still usable")
        assert await xs.read("/local/domain/7/data") == b"still usable"


async def test_the_freeze_is_the_runtimes_while_it_runs(xs: actors.XenStore) -> None:
    async def noop(ctx: DomainContext, event: WatchEvent) -> None:
        pass

    assert gc.get_freeze_count() == 0
    with trio.fail_after(30):
        async with actors.open_runtime(xs, gc_freeze_at=2) as rt:
            rt.watch("/local/domain/{domid}/data", noop)
            for domid in range(1, 300):
                await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
            for domid in range(1, 300):
                await rt.wait_domain(domid, State.RUNNING)
            assert rt.collector.froze and gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
        async with actors.open_runtime(xs) as rt:  # the default: not below 1,000 actors
            rt.watch("/local/domain/{domid}/data", noop)
            await rt.wait_domain(5, State.RUNNING)
            assert not rt.collector.froze and gc.get_freeze_count() == 0
