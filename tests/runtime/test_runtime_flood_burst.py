"""A flood's burst (issue 19): once flood control has decided, the rest of the burst already on its way costs the
connection's reader a lookup per event, not an event's whole way into the domain's mailbox; and still the
flooded domain's handler reads the last value of every path (lossless). Embedded xenstored, autojump clock."""

from __future__ import annotations

import contextlib

import trio
import trio.testing

import actors
from actors import DomainContext, State, WatchEvent
from actors.runtime import RuntimeOptions
from actors.xs.errors import NotFound

OPTIONS = RuntimeOptions(flood_rate=200, flood_cooldown=0.5, flood_cooldown_max=1.0)
FLOODED, CALM = 4, 5
WRITES, PATHS = 5000, 300


async def test_a_burst_past_the_throttle_costs_a_lookup_per_event_and_loses_no_last_value(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    seen: dict[str, bytes] = {}
    throttles = 0
    drops_while_throttled: list[
        float
    ] = []  # one entry per report: the purge at the decision, then any late one
    throttled = False

    def observe(kind: str, domid: int, value: float) -> None:
        nonlocal throttles, throttled
        if kind == "throttled" and domid == FLOODED:
            throttled = value == 1
            throttles += value == 1
        elif kind == "dropped:throttled" and domid == FLOODED and throttled:
            drops_while_throttled.append(value)

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        base = f"/local/domain/{ctx.domid}/data"
        paths = [f"{base}/{c}" for c in await ctx.xs.ls(base)] if event.path == base else [event.path]
        for path in paths:
            with contextlib.suppress(NotFound):
                seen[path] = await ctx.xs.read(path)

    async with actors.open_runtime(xs, options=OPTIONS) as rt:
        rt.observe(observe)
        rt.watch("/local/domain/{domid}/data", handler)
        for domid in (FLOODED, CALM):
            await xs.write(f"/local/domain/{domid}/data", "")
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        for domid in (FLOODED, CALM):
            with trio.fail_after(30):
                await rt.wait_domain(domid, State.RUNNING)
        unknown_before = xs.unknown_events
        async with actors.connect(xs.name) as guest:  # the guest's burst, in one pipeline
            pipe = guest.pipeline()
            for i in range(WRITES):
                pipe.write(f"/local/domain/{FLOODED}/data/k{i % PATHS}", str(i))
            await pipe.send()
        final = {f"/local/domain/{FLOODED}/data/k{i % PATHS}": str(i).encode() for i in range(WRITES)}
        with trio.fail_after(60):
            while any(seen.get(p) != v for p, v in final.items()):  # noqa: ASYNC110 (the handler's record)
                await trio.sleep(0.05)
        assert throttles >= 1
        muted = xs.unknown_events - unknown_before
        # The throttle's decision, on the reader's path, muted the domain's watch at once: what the burst still
        # sent was dropped by the reader as unknown events, and the domain reported throttled drops once per
        # throttle (the mailbox purged at the decision), never once per event still on its way.
        assert muted > 0
        assert len(drops_while_throttled) <= throttles, drops_while_throttled
        snap = rt.domains[FLOODED]
        assert (snap.failures, snap.restarts) == (0, 0)
        assert rt.domains[CALM].state is State.RUNNING
