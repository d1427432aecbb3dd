"""The event loop protected from blocking code. These tests run on the real clock: the watchdog thread measures
how long the loop really did not run (``time.sleep`` does not advance a mock clock); they assert who was
charged, not how long anything took."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import trio

import actors
from actors import DomainContext, State, WatchEvent
from actors.runtime.watchdog import LoopBlocked


async def until(check: Callable[[], bool]) -> None:
    """Until ``check()``, 10 s at most."""
    with trio.fail_after(10):
        while not check():  # noqa: ASYNC110  (polls the runtime's state on the real clock)
            await trio.sleep(0.05)


async def test_a_blocking_handler_is_charged_and_the_others_timeouts_are_not(
    xs: actors.XenStore, warnings_logged: list[str]
) -> None:
    waiting = trio.Event()
    handled: list[tuple[int, bytes]] = []
    blocked: list[tuple[int, float]] = []

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        value = await ctx.xs.read(event.path)
        if value == b"block":
            time.sleep(0.8)  # noqa: ASYNC251  (blocking code in an async handler: the whole loop stops)
        elif value == b"wait":
            waiting.set()
            await trio.sleep(0.3)  # its 0.5 s timeout runs out while domain 3 blocks the loop
        handled.append((ctx.domid, value))

    async with actors.open_runtime(xs, block_threshold=0.2, stop_deadline=2) as rt:
        rt.observe(lambda kind, domid, value: blocked.append((domid, value)) if kind == "blocked" else None)
        rt.watch("/local/domain/{domid}/data", handler, timeout=0.5)
        for domid in (3, 4):
            await xs.write(f"/local/domain/{domid}/data", "start")
            await actors.announce_domain(xs, domid)
        for domid in (3, 4):
            await rt.wait_domain(domid, State.RUNNING)
        await xs.write("/local/domain/4/data", "wait")
        await waiting.wait()
        await xs.write("/local/domain/3/data", "block")
        await until(lambda: rt.domains[3].failures > 0 and (4, b"wait") in handled)
        assert isinstance(rt.domains[3].last_exception, LoopBlocked)
        assert blocked and blocked[0][0] == 3 and blocked[0][1] >= 0.2
        assert rt.domains[4].failures == 0  # its timeout fell inside domain 3's block: handled again
        assert rt.loop_blocks >= 1
    named = [w for w in warnings_logged if "domain 3 is blocking it" in w]
    assert named and "time.sleep(0.8)" in named[0]


async def test_a_plain_def_handler_runs_in_a_bounded_pool_and_its_timeout_fails_its_domain(
    xs: actors.XenStore,
) -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    async_handled: list[int] = []

    def blocking(ctx: DomainContext, event: WatchEvent) -> None:
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            release.wait(timeout=10)
        finally:
            with lock:
                running[0] -= 1

    async def calm(ctx: DomainContext, event: WatchEvent) -> None:
        if await ctx.xs.exists(event.path):
            async_handled.append(int(await ctx.xs.read(event.path)))

    async with actors.open_runtime(xs, worker_threads=2, block_threshold=0.2, stop_deadline=2) as rt:
        rt.watch("/local/domain/{domid}/slow", blocking, timeout=0.3)
        rt.watch("/calm", calm)  # a global watch: the default actor's, an async handler
        for domid in range(1, 6):  # each blocks a worker thread
            await xs.write(f"/local/domain/{domid}/slow", "x")
            await actors.announce_domain(xs, domid)
        await until(lambda: all(d in rt.domains and rt.domains[d].failures >= 1 for d in range(1, 6)))
        assert all(isinstance(rt.domains[d].last_exception, actors.HandlerTimeout) for d in range(1, 6))
        assert rt.abandoned_threads >= 2
        assert running[1] <= 2  # the pool's bound held, abandoned threads included
        await xs.write("/calm", "7")  # while every worker thread is still blocked
        await until(lambda: 7 in async_handled)  # the loop kept running for everybody else
        assert rt.default_failures == 0
        assert rt.loop_blocks == 0
        release.set()
