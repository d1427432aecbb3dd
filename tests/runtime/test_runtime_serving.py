"""The one serving loop and the one transition point, in a live runtime against the embedded xenstored (autojump
clock): a removed watch's waiting events are counted as drops; the default actor handles again an event a
stalled daemon interrupted, as a domain actor does; every state change of every actor passes
``state_changed``, so counts kept from it match the actors' states."""

from __future__ import annotations

import os
from collections import Counter

import trio
import trio.testing

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.runtime.domain.life import TRANSITIONS
from harness.proxy import open_proxy
from harness.servers import Embedded


async def test_events_of_a_removed_watch_are_counted_as_dropped(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    gate = trio.Event()
    handled: list[str] = []
    drops: list[tuple[str, int, float]] = []

    async def held(ctx: DomainContext, event: WatchEvent) -> None:
        await gate.wait()
        handled.append(event.path)

    async with actors.open_runtime(xs) as rt:
        rt.observe(
            lambda kind, domid, value: drops.append((kind, domid, value)) if "dropped" in kind else None
        )
        await actors.announce_domain(xs, 5)
        await rt.wait_domain(5, State.RUNNING)
        watch = rt.watch("/local/domain/{domid}/data", held)
        await trio.sleep(1)  # the initial event holds the handler
        for i in range(3):
            await xs.write(f"/local/domain/5/data/k{i}", "x")
        await trio.sleep(1)
        assert rt.domains[5].mailbox_depth == 3
        rt.unwatch(watch)
        gate.set()
        await trio.sleep(1)
        snap = rt.domains[5]
        assert handled == ["/local/domain/5/data"]
        assert (snap.dropped, snap.dropped_by_reason) == (3, {"unwatched": 3})
        assert sum(value for kind, domid, value in drops if kind == "dropped:unwatched" and domid == 5) == 3


async def test_the_default_actor_handles_again_an_event_a_stall_interrupted(
    xenstored: Embedded, xs: actors.XenStore, workdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[bytes] = []
    started = trio.Event()

    async def reader(ctx: DomainContext, event: WatchEvent) -> None:
        if event.path != "/global/value":
            return
        started.set()
        seen.append(await ctx.xs.read("/global/value"))

    await xs.write("/global/value", "0")
    async with (
        open_proxy(xenstored.socket_path, os.path.join(workdir, "proxy")) as proxy,
        actors.open_runtime(connect=lambda: actors.connect(proxy.path), stall_after=0.5) as rt,
    ):
        rt.watch("/global", reader, timeout=1.5)
        await trio.sleep(1)
        await xs.write("/global/value", "1")
        with trio.fail_after(5):
            await started.wait()
        proxy.stall()  # the handler's read waits on the stalled daemon past its 1.5 s timeout
        await trio.sleep(5)
        proxy.resume()
        await trio.sleep(2)
        assert seen == [b"1"]  # run again once the daemon answered: not lost, not a failure
        assert (rt.default_handled, rt.default_failures) == (2, 0)  # the initial event, then this one
        assert rt.reconnects == 0


async def test_every_state_change_passes_the_one_transition_point(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    async def flaky(ctx: DomainContext, event: WatchEvent) -> None:
        if event.path.endswith("/fail"):
            raise RuntimeError("failing on purpose")

    options = actors.RuntimeOptions(
        restart=RestartPolicy(max_restarts=1, period=60, backoff_initial=1, backoff_max=1), stop_deadline=2
    )
    async with actors.open_runtime(xs, options=options) as rt:
        counts: Counter[State] = Counter()
        moves: list[tuple[int, State | None, State | None]] = []
        told = rt.state_changed

        def kept(domid: int, old: State | None, new: State | None) -> None:
            moves.append((domid, old, new))
            if old is not None:
                counts[old] -= 1
            if new is not None:
                counts[new] += 1
            told(domid, old, new)

        rt.state_changed = kept  # type: ignore[method-assign]
        rt.watch("/local/domain/{domid}/data", flaky)

        def agree() -> None:
            assert +counts == Counter(snap.state for snap in rt.domains.values())

        for domid in (1, 2, 3, 4):
            await actors.announce_domain(xs, domid)
        for domid in (1, 2, 3, 4):
            await rt.wait_domain(domid, State.RUNNING)
        agree()
        await xs.write("/local/domain/2/data/fail", "x")  # a failure: backoff, then running again
        await trio.sleep(0.5)
        agree()
        await rt.wait_domain(2, State.RUNNING)
        for _ in range(2):  # past the restart limit: failed
            await xs.write("/local/domain/3/data/fail", "x")
            await trio.sleep(2)
        await rt.wait_domain(3, State.FAILED)
        agree()
        rt.reload(4)
        await actors.retire_domain(xs, 1)
        await rt.wait_domain(1, None)
        agree()
        rt.reset(3)
        await rt.wait_domain(3, State.RUNNING)
        await rt.wait_domain(4, State.RUNNING)
        agree()
        assert all(new in TRANSITIONS[old] for _, old, new in moves)
        assert (1, State.STOPPING, None) in moves and (3, State.FAILED, State.STARTING) in moves
        assert (4, State.STOPPING, State.STARTING) in moves  # the reload
