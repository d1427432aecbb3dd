"""The actor runtime against the embedded xenstored, on trio's autojump clock (every test takes the
``autojump_clock`` fixture: pytest-trio takes the clock only from a test's own arguments).

The server runs in the test's own trio loop, so a unix-socket round trip completes before the clock can jump.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from harness.servers import Embedded

FAST_RESTARTS = RestartPolicy(max_restarts=3, period=60, backoff_initial=1, backoff_max=30)


def data(domid: int, leaf: str = "ping") -> str:
    return f"/local/domain/{domid}/data/{leaf}"


class Recorder:
    """A handler that records (domid, path, value) and can be told to hang or fail for some domains."""

    def __init__(self) -> None:
        self.seen: dict[int, list[tuple[str, bytes | None]]] = defaultdict(list)
        self.hang: set[int] = set()
        self.fail: set[int] = set()
        self.delay: dict[int, float] = {}
        self.changed = trio.Event()

    async def __call__(self, ctx: DomainContext, event: WatchEvent) -> None:
        if ctx.domid in self.hang:
            await trio.sleep_forever()
        if ctx.domid in self.fail:
            raise RuntimeError(f"handler of domain {ctx.domid} fails on purpose")
        if ctx.domid in self.delay:
            await trio.sleep(self.delay[ctx.domid])
        try:
            value: bytes | None = await ctx.xs.read(event.path)
        except actors.NotFound:
            value = None
        self.seen[ctx.domid].append((event.path, value))
        self.changed.set()
        self.changed = trio.Event()

    def values(self, domid: int, path: str) -> list[bytes | None]:
        return [v for p, v in self.seen[domid] if p == path]

    async def wait_for(self, domid: int, path: str, value: bytes) -> None:
        while value not in self.values(domid, path):
            await self.changed.wait()


@pytest.fixture
async def rt(xs: actors.XenStore) -> AsyncIterator[actors.Runtime]:
    async with actors.open_runtime(xs, restart=FAST_RESTARTS, stop_deadline=5) as runtime:
        yield runtime


async def announce(xs: actors.XenStore, *domids: int, identity: str = "") -> None:
    for domid in domids:
        await actors.announce_domain(xs, domid, identity=identity or f"uuid-{domid}")


async def test_announce_starts_and_retire_stops_a_domain_actor(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    started: list[int] = []
    stopped: list[int] = []

    @rt.on_start
    async def hello(ctx: DomainContext) -> None:
        started.append(ctx.domid)

    @rt.on_stop
    async def bye(ctx: DomainContext) -> None:
        stopped.append(ctx.domid)

    rt.watch("/local/domain/{domid}/data", rec)
    await announce(xs, 7)
    await rt.wait_domain(7, State.RUNNING)
    snap = rt.domains[7]
    assert snap.identity == b"uuid-7"
    assert started == [7]

    await xs.write(data(7), "1")
    await rec.wait_for(7, data(7), b"1")

    await actors.retire_domain(xs, 7)
    await rt.wait_domain(7, None)
    assert stopped == [7]
    assert 7 not in rt.domains
    # Its watch is gone with it: a later write reaches no handler.
    count = len(rec.seen[7])
    await xs.write(data(7), "2")
    await trio.sleep(1)
    assert len(rec.seen[7]) == count


async def test_one_hung_domain_of_fifty_delays_no_other(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    rec.hang.add(13)
    rt.watch("/local/domain/{domid}/data", rec)
    domids = list(range(1, 51))
    await announce(xs, *domids)
    for domid in domids:
        await rt.wait_domain(domid, State.RUNNING)
    with trio.fail_after(10):
        for round_ in range(3):
            for domid in domids:
                await xs.write(data(domid), str(round_))
            for domid in domids:
                if domid != 13:
                    await rec.wait_for(domid, data(domid), str(round_).encode())
    assert rec.seen[13] == []
    stuck = rt.domains[13]
    assert stuck.state is State.RUNNING
    assert stuck.handled == 0
    assert stuck.mailbox_depth >= 1
    for domid in domids:
        if domid != 13:
            assert rt.domains[domid].failures == 0


async def test_a_crashing_handler_restarts_with_backoff_then_fails_then_recovers(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    rec.fail.add(5)
    starts: list[float] = []

    @rt.on_start
    async def mark(ctx: DomainContext) -> None:
        if ctx.domid == 5:
            starts.append(trio.current_time())

    rt.watch("/local/domain/{domid}/data", rec)
    await announce(xs, 5, 6)
    # Every start registers the watch, whose initial event makes the handler fail again.
    await rt.wait_domain(5, State.FAILED)
    snap = rt.domains[5]
    assert snap.failures == FAST_RESTARTS.max_restarts + 1
    assert snap.restarts == FAST_RESTARTS.max_restarts
    assert snap.last_error is not None and "fails on purpose" in snap.last_error
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == FAST_RESTARTS.max_restarts
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    # Failed: the watch is removed and nothing more reaches the handler.
    await xs.write(data(5), "ignored")
    await trio.sleep(5)
    assert rt.domains[5].state is State.FAILED
    # The neighbour never noticed.
    await xs.write(data(6), "fine")
    await rec.wait_for(6, data(6), b"fine")
    assert rt.domains[6].failures == 0
    # A new identity (the domid was reused) brings it back with a clean slate.
    rec.fail.discard(5)
    await announce(xs, 5, identity="uuid-5-reborn")
    await rt.wait_domain(5, State.RUNNING)
    assert rt.domains[5].identity == b"uuid-5-reborn"
    await xs.write(data(5), "back")
    await rec.wait_for(5, data(5), b"back")


async def test_reset_takes_a_domain_out_of_failed(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    rec.fail.add(9)
    rt.watch("/local/domain/{domid}/data", rec)
    await announce(xs, 9)
    await rt.wait_domain(9, State.FAILED)
    rec.fail.discard(9)
    rt.reset(9)
    await rt.wait_domain(9, State.RUNNING)
    await xs.write(data(9), "ok")
    await rec.wait_for(9, data(9), b"ok")
    with pytest.raises(KeyError):
        rt.reset(4242)


async def test_handler_timeout_is_a_failure(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(ctx: DomainContext, event: WatchEvent) -> None:
        await trio.sleep(100)

    rt.watch("/local/domain/{domid}/data", slow, timeout=2)
    await announce(xs, 3)
    await rt.wait_domain(3, State.BACKOFF)
    snap = rt.domains[3]
    assert snap.failures == 1
    assert snap.last_error is not None and "timeout of 2 s" in snap.last_error


async def test_flood_costs_bounded_memory_and_the_last_value_wins(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    # The mailbox alone (flood control off: tests/test_runtime_flood.py has it).
    async with actors.open_runtime(
        xs, restart=FAST_RESTARTS, stop_deadline=5, flood_rate=None, flood_high_water=None
    ) as rt:
        await mailbox_flood(xs, rt)


async def mailbox_flood(xs: actors.XenStore, rt: actors.Runtime) -> None:
    rec = Recorder()
    rec.delay[4] = 0.5
    rt.watch("/local/domain/{domid}/data", rec)
    await announce(xs, 4, 8)
    await rt.wait_domain(4, State.RUNNING)
    await rt.wait_domain(8, State.RUNNING)
    # 100,000 events through the same sink the connection's reader calls for this domain's watch.
    sink = next(s for token, s in xs._sinks.items() if token.startswith("mtw/4/"))
    mailbox = rt._actors[4].inbox.mailbox
    paths = [data(4, f"k{i % 50}") for i in range(100_000)]
    peak = 0
    for i, path in enumerate(paths):
        sink(WatchEvent(path, "flood", trio.current_time()))
        if i % 1000 == 0:
            peak = max(peak, len(mailbox))
    assert len(mailbox) <= mailbox.capacity + 50
    assert peak <= mailbox.capacity + 50
    assert mailbox.coalesced >= 100_000 - mailbox.capacity - 50
    # Real writes too: the last value of a flooded path reaches the handler.
    for i in range(300):
        await xs.write(data(4, "k0"), str(i))
    # The neighbour is served at once, flood or not.
    await xs.write(data(8), "now")
    with trio.fail_after(1):
        await rec.wait_for(8, data(8), b"now")
    await rec.wait_for(4, data(4, "k0"), b"299")
    assert rt.domains[4].coalesced > 0


async def test_bad_names_and_foreign_owners_start_nothing(
    xs: actors.XenStore, rt: actors.Runtime, xenstored: Embedded, autojump_clock: trio.testing.MockClock
) -> None:
    # A 3000-byte name cannot even be made: C xenstored (and the embedded one) limit the path below
    # /local/domain/<N>/ to 2048 bytes, for dom0 too. The longest that can exist is refused instead.
    with pytest.raises(actors.InvalidArgument):
        await xs.write(f"{MTWATCH_ROOT}/{'9' * 3000}", "junk")
    bad = ["abc", "-1", "007", "0", "99999", "32752", "9" * 2040]
    for name in bad:
        await xs.write(f"{MTWATCH_ROOT}/{name}", "junk")
    await xs.write(f"{MTWATCH_ROOT}/12", "owned-by-a-guest")
    await xs.set_perms(f"{MTWATCH_ROOT}/12", ["n5"])
    await announce(xs, 11)
    await rt.wait_domain(11, State.RUNNING)
    await trio.sleep(1)
    assert set(rt.domains) == {11}

    # A guest may neither create nor remove mtwatch nodes.
    async with xenstored.guest(5) as stream, actors.open_xenstore(stream) as guest:
        with pytest.raises(actors.PermissionDenied):
            await guest.write(f"{MTWATCH_ROOT}/5", "me too")
        with pytest.raises(actors.PermissionDenied):
            await guest.rm(f"{MTWATCH_ROOT}/11")
    assert set(rt.domains) == {11}


async def test_domid_reuse_stops_then_starts(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    order: list[tuple[str, bytes]] = []

    @rt.on_start
    async def up(ctx: DomainContext) -> None:
        order.append(("start", ctx.identity))

    @rt.on_stop
    async def down(ctx: DomainContext) -> None:
        order.append(("stop", ctx.identity))

    await announce(xs, 20, identity="first")
    await rt.wait_domain(20, State.RUNNING)
    await announce(xs, 20, identity="second")
    while rt.domains[20].identity != b"second" or rt.domains[20].state is not State.RUNNING:
        await rt.changed.wait()
    assert order == [("start", b"first"), ("stop", b"first"), ("start", b"second")]


async def test_initial_reconcile_sees_existing_domains(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    await announce(xs, 30, 31)
    async with actors.open_runtime(xs) as rt:
        await rt.ready.wait()
        assert set(rt.domains) == {30, 31}


async def test_global_watch_routes_to_the_owning_domain(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[tuple[int, str]] = []

    def owner(path: str) -> int | None:
        parts = path.split("/")
        return int(parts[-1]) if len(parts) == 7 and parts[-1].isdigit() else None

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        seen.append((ctx.domid, event.path))

    rt.watch("/local/domain/0/backend/vif", handler, route=owner)
    await announce(xs, 40)
    await rt.wait_domain(40, State.RUNNING)
    await xs.write("/local/domain/0/backend/vif/40", "x")
    await xs.write("/local/domain/0/backend/vif/41", "y")  # no such domain: the default actor's
    await trio.sleep(1)
    assert (40, "/local/domain/0/backend/vif/40") in seen
    assert (0, "/local/domain/0/backend/vif/41") in seen
    assert (0, "/local/domain/0/backend/vif") in seen  # the initial event has no owner


async def test_watches_can_be_added_and_removed_while_running(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    await announce(xs, 50)
    await rt.wait_domain(50, State.RUNNING)
    watch = rt.watch("/local/domain/{domid}/data", rec)
    # Registration happens in the background; the watch's initial event says it is in place.
    while not rec.seen[50]:
        await rec.changed.wait()
    await xs.write(data(50), "a")
    await rec.wait_for(50, data(50), b"a")
    rt.unwatch(watch)
    await trio.sleep(1)
    count = len(rec.seen[50])
    await xs.write(data(50), "b")
    await trio.sleep(1)
    assert len(rec.seen[50]) == count


async def test_shutdown_deadline_holds_against_a_handler_that_ignores_it(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    async def stubborn(ctx: DomainContext, event: WatchEvent) -> None:
        await trio.sleep(1000)  # never looks at any stop request: only cancellation ends it

    start = 0.0
    async with actors.open_runtime(xs, stop_deadline=3) as rt:
        rt.watch("/local/domain/{domid}/data", stubborn)
        await announce(xs, 60, 61)
        await rt.wait_domain(60, State.RUNNING)
        await rt.wait_domain(61, State.RUNNING)
        await trio.sleep(1)
        start = trio.current_time()
    elapsed = trio.current_time() - start
    assert elapsed <= 3.5
    # Every watch was removed on the way out.
    assert not [t for t in xs._sinks if t.startswith("mtw/")]


async def test_reconnect_restores_every_watch_without_failures(
    workdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The daemon goes away and comes back on the same socket with the same store (as a restarted xenstored
    with its state would): every watch is back, every live domain gets its resync, nothing is lost, doubled
    or counted as failed."""
    from actors.xenstored import XenStored

    path = os.path.join(workdir, "socket")
    daemon = XenStored()
    rec = Recorder()
    async with trio.open_nursery() as nursery:

        async def serve(scope: trio.CancelScope, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await daemon.serve(path, task_status=task_status)

        first = trio.CancelScope()
        await nursery.start(serve, first)
        async with actors.open_runtime(connect=lambda: actors.connect(path)) as rt:
            rt.watch("/local/domain/{domid}/data", rec)
            async with actors.connect(path) as toolstack:
                await announce(toolstack, 70, 71)
            await rt.wait_domain(70, State.RUNNING)
            await rt.wait_domain(71, State.RUNNING)
            # Running means watched; the watch's registration event may still be on its way to the handler.
            watched = {d: f"/local/domain/{d}/data" for d in (70, 71)}
            while not all(rec.values(d, p) for d, p in watched.items()):
                await rec.changed.wait()
            resyncs_before = {d: len(rec.values(d, p)) for d, p in watched.items()}
            first.cancel()
            await rt.connected.wait_value(False)
            await trio.sleep(3)  # a few failed attempts while nothing listens
            await nursery.start(serve, trio.CancelScope())
            await rt.connected.wait_value(True)
            # The resync: each re-registered watch fires once more for its own path (a write made before that
            # would be seen by the resync's re-read, not as an event of its own).
            while any(len(rec.values(d, p)) == resyncs_before[d] for d, p in watched.items()):
                await rec.changed.wait()
            async with actors.connect(path) as toolstack:
                await toolstack.write(data(70), "after")
                await toolstack.write(data(71), "after")
                await rec.wait_for(70, data(70), b"after")
                await rec.wait_for(71, data(71), b"after")
            assert set(rt.domains) == {70, 71}
            for domid in (70, 71):
                snap = rt.domains[domid]
                assert snap.state is State.RUNNING
                assert (snap.failures, snap.restarts) == (0, 0)
            assert rt.reconnects >= 1
        nursery.cancel_scope.cancel()


async def test_losing_the_only_connection_ends_the_runtime(
    xenstored: Embedded, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(actors.ConnectionLost, match="no connect="):
        async with actors.connect(xenstored.socket_path) as conn, actors.open_runtime(conn):
            await conn._link.stream.aclose()
            await trio.sleep_forever()


async def test_body_errors_come_out_unwrapped(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(actors.NotFound):
        async with actors.open_runtime(xs):
            await xs.read("/no/such/node")


async def test_domains_lifecycle_on_a_stock_host(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    async with actors.open_runtime(xs, lifecycle="domains") as rt:
        await rt.ready.wait()
        await xs.write("/local/domain/15/vm", "/vm/uuid-15")
        await xs.introduce(15, 0, 1)  # the C daemon wants an event channel port > 0
        await rt.wait_domain(15, State.RUNNING)
        assert rt.domains[15].identity == b"/vm/uuid-15"
        await xs.release(15)
        await rt.wait_domain(15, None)


async def test_leaving_a_reconnecting_runtime_is_prompt(
    xenstored: Embedded, autojump_clock: trio.testing.MockClock
) -> None:
    """The connection's reader is cancelled with the runtime: cleanups that would wait for a reply (an
    UNWATCH) must fail at once instead of sitting out their deadline."""
    start = 0.0
    async with actors.open_runtime(connect=lambda: actors.connect(xenstored.socket_path)) as rt:
        rt.watch("/local/domain/{domid}/data", Recorder())
        await rt.ready.wait()
        start = trio.current_time()
    assert trio.current_time() - start < 0.5


async def test_default_actor_counts_failures_and_carries_on(
    xs: actors.XenStore, rt: actors.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[str] = []

    async def picky(ctx: DomainContext, event: WatchEvent) -> None:
        if event.path.endswith("bad"):
            raise actors.HandlerError("refusing a bad path")
        seen.append(event.path)

    rt.watch("/global", picky)
    await trio.sleep(1)
    await xs.write("/global/bad", "x")
    await xs.write("/global/good", "y")
    await trio.sleep(1)
    assert rt.default_failures == 1
    assert "/global/good" in seen


async def test_on_stop_gets_the_deadline_and_no_more(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    finished: list[int] = []

    async def tidy(ctx: DomainContext) -> None:
        await trio.sleep(3 if ctx.domid == 81 else 100)
        finished.append(ctx.domid)

    async with actors.open_runtime(xs, stop_deadline=4) as rt:
        rt.on_stop(tidy)
        await announce(xs, 81, 82)
        await rt.wait_domain(81, State.RUNNING)
        await rt.wait_domain(82, State.RUNNING)
        start = trio.current_time()
        await actors.retire_domain(xs, 81)
        await actors.retire_domain(xs, 82)
        await rt.wait_domain(81, None)
        await rt.wait_domain(82, None)
        elapsed = trio.current_time() - start
    assert finished == [81]  # 3 s fits in the idle actor's 4 s; 100 s is cut at the deadline
    assert 3.9 <= elapsed <= 4.5
