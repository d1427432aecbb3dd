"""Stopping always says who holds it up: a task that outlives the stop deadline is named in a warning (domid,
task, stack) every few seconds, and ``rt.domains`` shows since when the domain is stopping."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, State


async def test_a_task_that_outlives_the_stop_deadline_is_named_until_it_ends(
    xs: actors.XenStore, warnings_logged: list[str], autojump_clock: trio.testing.MockClock
) -> None:
    async def stubborn_console_reader() -> None:
        with trio.CancelScope(shield=True):  # ignores its cancellation for 20 s
            await trio.sleep(20)

    async with actors.open_runtime(xs, stop_deadline=2, stop_warn_every=3) as rt:

        @rt.on_start
        async def start(ctx: DomainContext) -> None:
            ctx.start_soon(stubborn_console_reader)

        await actors.announce_domain(xs, 14)
        await actors.announce_domain(xs, 15)
        await rt.wait_domain(14, State.RUNNING)
        await rt.wait_domain(15, State.RUNNING)
        await trio.sleep(1)
        retired_at = trio.current_time()
        await actors.retire_domain(xs, 14)
        await trio.sleep(1)
        assert rt.domains[14].state is State.STOPPING
        assert rt.domains[14].stopping_since == pytest.approx(retired_at, abs=0.1)
        await rt.wait_domain(14, None)
        assert trio.current_time() - retired_at >= 18  # the task slept 20 s from its start
        ours = [w for w in warnings_logged if "domain 14 still stopping" in w]
        # Past the 2 s deadline, then every 3 s until the task ended.
        assert 5 <= len(ours) <= 7
        assert "stubborn_console_reader" in ours[0]
        assert all("domain 15" not in w for w in warnings_logged)
        assert rt.domains[15].state is State.RUNNING
