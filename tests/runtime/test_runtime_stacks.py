"""Hang forensics: ``rt.stacks(domid)`` tells where each task of a domain waits (its handler, its hooks, its
per-domain tasks), what it runs and for how long, without stopping anything; a domain with no actor gets a
clear error, a failed one says so."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, State, WatchEvent
from actors.runtime import DomainNotRunning, RestartPolicy


async def test_a_hung_handler_and_its_tasks_say_where_they_wait(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()
    hold_start = trio.Event()

    async def wait_for_the_console(ctx: DomainContext) -> None:
        await release.wait()

    async def on_hang(ctx: DomainContext, event: WatchEvent) -> None:
        await wait_for_the_console(ctx)

    async def heartbeat() -> None:
        await trio.sleep_forever()

    async with actors.open_runtime(xs, lifecycle="mtwatch") as rt:
        rt.watch("/local/domain/{domid}/data/hang", on_hang, timeout=60, name="hang")

        @rt.on_start
        async def start(ctx: DomainContext) -> None:
            if ctx.domid == 6:
                await hold_start.wait()  # domain 6 never gets past its hook until told
            ctx.start_soon(heartbeat, name="heartbeat")

        await actors.announce_domain(xs, 4)
        await rt.wait_domain(4, State.RUNNING)
        started = trio.current_time()
        await xs.write("/local/domain/4/data/hang", "1")
        await trio.sleep(10)

        stacks = rt.stacks(4)
        assert stacks.domid == 4 and stacks.state is State.RUNNING
        actor, task = stacks.tasks
        assert actor.what == "handler of 'hang' for /local/domain/4/data/hang"
        assert actor.timeout == 60
        assert actor.waited == pytest.approx(10, abs=0.5)
        assert "in wait_for_the_console" in actor.stack and "await release.wait()" in actor.stack
        assert actor.stack.index("on_hang") < actor.stack.index("wait_for_the_console")  # innermost last
        assert task.what == "task heartbeat" and task.task == "heartbeat"
        assert task.waited == pytest.approx(trio.current_time() - started, abs=0.5)
        assert "sleep_forever" in task.stack

        await actors.announce_domain(xs, 6)
        await trio.sleep(3)
        (hook,) = rt.stacks(6).tasks
        assert rt.stacks(6).state is State.STARTING
        assert hook.what == "on_start hook" and hook.waited == pytest.approx(3, abs=0.5)
        assert "hold_start.wait()" in hook.stack

        # Reading stopped nothing: the handler completes once released, the hook goes on.
        release.set()
        hold_start.set()
        await rt.wait_domain(6, State.RUNNING)
        await trio.sleep(0.1)
        assert rt.domains[4].handled >= 2  # the initial event, then the write
        assert rt.stacks(4).tasks[0].what == "waiting for events"

        with pytest.raises(DomainNotRunning, match="domain 99 has no actor"):
            rt.stacks(99)


async def test_a_failed_domain_says_it_is_not_running(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    async def broken(ctx: DomainContext, event: WatchEvent) -> None:
        raise RuntimeError("broken handler")

    async with actors.open_runtime(xs, lifecycle="mtwatch", restart=RestartPolicy(max_restarts=0)) as rt:
        rt.watch("/local/domain/{domid}/data", broken)
        await actors.announce_domain(xs, 8)
        await rt.wait_domain(8, State.FAILED)
        stacks = rt.stacks(8)
        assert stacks.state is State.FAILED
        (actor,) = stacks.tasks
        assert actor.what == "failed: waiting to restart or to be reset" and "_back_off" in actor.stack
