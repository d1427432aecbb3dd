"""A domain actor is a failure boundary: one nursery per incarnation (``ctx.start_soon``), and whatever raises in
a domain's scope - handler, hook, per-domain task, an observer called for it - costs that domain only. Against
the embedded xenstored, on the autojump clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.runtime import RuntimeOptions

OPTIONS = RuntimeOptions(
    restart=RestartPolicy(max_restarts=3, period=60, backoff_initial=1, backoff_max=30), stop_deadline=5
)


@pytest.fixture
async def rt(xs: actors.XenStore) -> AsyncIterator[actors.Runtime]:
    async with actors.open_runtime(xs, options=OPTIONS) as runtime:
        yield runtime


async def announce(xs: actors.XenStore, *domids: int, identity: str = "") -> None:
    for domid in domids:
        await actors.announce_domain(xs, domid, identity=identity or f"uuid-{domid}")


async def until(rt: actors.Runtime, check: object) -> None:
    """Until ``check()``: looked at whenever a domain changes state, and every simulated second; a simulated
    minute at most."""
    assert callable(check)
    with trio.fail_after(60):
        while not check():
            with trio.move_on_after(1):
                await rt.changed.wait()


async def test_a_per_domain_task_lives_with_its_incarnation_and_learns_why_it_ends(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    ticks: dict[int, int] = {}
    reasons: list[tuple[int, str | None]] = []

    async def ticker(ctx: DomainContext) -> None:
        try:
            while True:
                ticks[ctx.domid] = ticks.get(ctx.domid, 0) + 1
                await trio.sleep(1)
        except trio.Cancelled as cancelled:
            reasons.append((ctx.domid, cancelled.reason))
            raise

    @rt.on_start
    async def start(ctx: DomainContext) -> None:
        ctx.start_soon(ticker, ctx)

    await announce(xs, 3, 4)
    await rt.wait_domain(3, State.RUNNING)
    await rt.wait_domain(4, State.RUNNING)
    await trio.sleep(5)
    assert ticks[3] >= 5 and ticks[4] >= 5
    await actors.retire_domain(xs, 3)
    await rt.wait_domain(3, None)
    assert reasons == [(3, "retired")]
    rt.reload(4)
    await until(rt, lambda: len(reasons) == 2)
    await rt.wait_domain(4, State.RUNNING)
    assert reasons[1] == (4, "reload")
    assert rt.domains[4].failures == 0
    await announce(xs, 4, identity="reused")
    await until(rt, lambda: len(reasons) == 3)
    assert reasons[2] == (4, "restart")


async def test_a_failing_task_is_its_domains_failure_only(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    boom = ValueError("console reader broke")

    async def reader(ctx: DomainContext) -> None:
        await trio.sleep(2)
        if ctx.domid == 5:
            raise boom
        await trio.sleep_forever()

    rt.on_start(lambda ctx: _start(ctx, reader))
    await announce(xs, 5, 6)
    await until(rt, lambda: 5 in rt.domains and rt.domains[5].failures == 1)
    snap = rt.domains[5]
    assert snap.last_exception is boom
    assert snap.last_error is not None and "task" in snap.last_error
    await until(rt, lambda: rt.domains[5].restarts == 1 and rt.domains[5].state is State.RUNNING)
    assert rt.domains[6].failures == 0 and rt.domains[6].state is State.RUNNING


async def _start(ctx: DomainContext, fn: object) -> None:
    assert callable(fn)
    ctx.start_soon(fn, ctx)


async def test_an_observer_that_raises_for_a_domain_fails_that_domain_only(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    handled: list[int] = []

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        handled.append(ctx.domid)

    def observer(kind: str, domid: int, value: float) -> None:
        if kind == "event" and domid == 8:
            raise RuntimeError("metrics exporter bug")

    rt.observe(observer)
    rt.watch("/local/domain/{domid}/data", handler)
    await announce(xs, 8, 9)
    await until(rt, lambda: 8 in rt.domains and rt.domains[8].failures >= 1)
    assert "metrics exporter bug" in (rt.domains[8].last_error or "")
    await until(rt, lambda: handled.count(9) == 1)  # the initial event
    await xs.write("/local/domain/9/data", "x")
    await until(rt, lambda: handled.count(9) >= 2)
    assert rt.domains[9].failures == 0


async def test_reannounced_during_a_slow_on_stop_it_runs_again(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """The old ``assert failure is not None`` crash: retired, then announced again with the same identity
    while its on_stop hook runs."""
    starts: list[int] = []

    @rt.on_start
    async def up(ctx: DomainContext) -> None:
        starts.append(ctx.domid)

    @rt.on_stop
    async def slow(ctx: DomainContext) -> None:
        await trio.sleep(0.02)

    for _ in range(10):
        await announce(xs, 11)
        await rt.wait_domain(11, State.RUNNING)
        await actors.retire_domain(xs, 11)
        await until(rt, lambda: rt.domains[11].state is State.STOPPING)
        await announce(xs, 11)
        await trio.sleep(0.1)
        await until(rt, lambda: 11 in rt.domains and rt.domains[11].state is State.RUNNING)
        assert rt.domains[11].failures == 0
        await actors.retire_domain(xs, 11)
        await rt.wait_domain(11, None)
    assert len(starts) == 20


async def test_the_name_and_the_stop_time_show_in_the_snapshot(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    await xs.write("/local/domain/12/name", "web-1")

    @rt.on_stop
    async def slow(ctx: DomainContext) -> None:
        await trio.sleep(1)

    await announce(xs, 12, 13)
    await rt.wait_domain(12, State.RUNNING)
    await rt.wait_domain(13, State.RUNNING)
    assert rt.domains[12].name == "web-1"
    assert rt.domains[13].name is None
    assert rt.domains[12].stopping_since is None
    await actors.retire_domain(xs, 12)
    await until(rt, lambda: rt.domains[12].state is State.STOPPING)
    assert rt.domains[12].stopping_since == pytest.approx(trio.current_time(), abs=0.5)


async def test_on_start_hooks_that_never_end_do_not_hold_up_other_domains_starting(
    rt: actors.Runtime, xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    """The runtime's own start requests go a bounded number of actors at a time (256); the on_start hooks are
    outside that bound, so 300 domains whose hook hangs leave room for one more to start."""
    hung = list(range(1, 301))
    release = trio.Event()

    @rt.on_start
    async def hook(ctx: DomainContext) -> None:
        if ctx.domid in hung:
            await release.wait()

    async with trio.open_nursery() as nursery:
        for first in range(0, len(hung), 50):
            nursery.start_soon(announce, xs, *hung[first : first + 50])
    await until(rt, lambda: len(rt.domains) == len(hung))
    await announce(xs, 400)
    with trio.fail_after(60):
        await rt.wait_domain(400, State.RUNNING)
    assert all(rt.domains[domid].state is State.STARTING for domid in hung)
    release.set()
    await until(rt, lambda: all(snapshot.state is State.RUNNING for snapshot in rt.domains.values()))


async def test_a_hung_handler_leaves_the_on_stop_hooks_their_share_of_the_stop_deadline(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    """One stop deadline, shared out in one place: a handler that never returns is cut at three quarters of it,
    and the on_stop hooks still run within the last quarter."""
    entered = trio.Event()
    stopped_at: list[float] = []

    async def hang(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        if event.path.endswith("/go"):
            entered.set()
            await trio.sleep_forever()

    async with actors.open_runtime(xs, stop_deadline=8) as rt:

        @rt.on_stop
        async def cleanup(ctx: actors.DomainContext) -> None:
            stopped_at.append(trio.current_time())

        rt.watch("/local/domain/{domid}/data", hang)
        await actors.announce_domain(xs, 4, identity="a")
        await rt.wait_domain(4, actors.State.RUNNING)
        await xs.write("/local/domain/4/data/go", "1")
        await entered.wait()
        retired = trio.current_time()
        await actors.retire_domain(xs, 4)
        await rt.wait_domain(4, None)
    assert len(stopped_at) == 1
    assert 6 <= stopped_at[0] - retired < 8  # the handler had 6 s of the 8; the hook ran in the last 2
