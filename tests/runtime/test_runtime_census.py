"""The runtime's kept counts (``rt.census``) against a full recount of ``rt.domains``, at every moment a random
churn lets the test look: domains announced, retired and announced again, handlers failing into backoff and
``failed``, floods throttling, resets. Against the embedded xenstored, on the autojump clock. And
``rt.domains`` as a view: one domain's read builds one snapshot."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.runtime import RuntimeOptions
from actors.runtime.domain.actor import DomainActor
from actors.xenstored import open_xenstored

DOMIDS = (1, 2, 3, 4)

Op = tuple[str, int, str]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), st.sampled_from(DOMIDS), st.sampled_from(["a", "b"])),
        st.tuples(st.just("retire"), st.sampled_from(DOMIDS), st.just("")),
        st.tuples(st.just("fail"), st.sampled_from(DOMIDS), st.just("")),
        st.tuples(st.just("flood"), st.sampled_from(DOMIDS), st.just("")),
        st.tuples(st.just("reset"), st.sampled_from(DOMIDS), st.just("")),
        st.tuples(st.just("sleep"), st.just(0), st.sampled_from(["0", "0.01", "0.2", "0.7", "3"])),
    ),
    max_size=25,
)


def check(rt: actors.Runtime) -> None:
    """The kept counts are exactly what a full recount finds."""
    snapshots = dict(rt.domains)
    census = rt.census
    recount = Counter(snapshot.state for snapshot in snapshots.values())
    assert census.counts() == {state: recount.get(state, 0) for state in State}
    assert census.total == len(snapshots)
    for state in State:
        if state is not State.RUNNING:
            assert set(census.members(state)) == {d for d, s in snapshots.items() if s.state is state}
    throttled = {d for d, s in snapshots.items() if s.throttled_since is not None}
    assert set(census.throttled) == throttled
    trouble = {d for d, s in snapshots.items() if s.state is not State.RUNNING} | throttled
    assert census.trouble() == trouble


async def scenario(sequence: list[Op]) -> int:
    folder = tempfile.mkdtemp(prefix="mtw", dir="/tmp")
    path = os.path.join(folder, "socket")
    options = RuntimeOptions(
        restart=RestartPolicy(max_restarts=1, period=60, backoff_initial=0.5, backoff_max=1),
        stop_deadline=1,
        flood_rate=20,
        flood_high_water=None,
    )
    checks = 0
    try:
        async with (
            open_xenstored(path),
            actors.connect(path) as xs,
            actors.open_runtime(xs, options=options) as rt,
            trio.open_nursery() as nursery,
        ):

            async def handler(ctx: DomainContext, event: WatchEvent) -> None:
                try:
                    value = await ctx.xs.read(event.path)
                except actors.NotFound:
                    return
                if value.startswith(b"fail"):
                    raise RuntimeError("failing on purpose")

            async def watcher() -> None:  # looks at every moment the runtime says something changed
                nonlocal checks
                while True:
                    await rt.changed.wait()
                    check(rt)
                    checks += 1

            rt.watch("/local/domain/{domid}/data/x", handler)
            nursery.start_soon(watcher)
            await rt.ready.wait()
            for n, (op, domid, arg) in enumerate(sequence):
                if op == "announce":
                    await actors.announce_domain(xs, domid, identity=arg)
                elif op == "retire":
                    await actors.retire_domain(xs, domid)
                elif op == "fail":
                    await xs.write(f"/local/domain/{domid}/data/x", f"fail {n}")
                elif op == "flood":
                    for i in range(60):
                        await xs.write(f"/local/domain/{domid}/data/x", f"ok {n} {i}")
                elif op == "reset":
                    if domid in rt.domains and rt.domains[domid].state is State.FAILED:
                        rt.reset(domid)
                else:
                    await trio.sleep(float(arg))
                check(rt)
                checks += 1
            await trio.sleep(5)
            check(rt)
            nursery.cancel_scope.cancel()
        check(rt)  # left: nothing counted
        assert rt.census.total == 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return checks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops)
def test_kept_counts_match_a_full_recount_under_random_churn(sequence: list[Op]) -> None:
    checks = trio.run(scenario, sequence, clock=trio.testing.MockClock(autojump_threshold=0))
    assert checks >= len(sequence)


async def test_reading_one_domain_builds_one_snapshot(
    xs: actors.XenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[int] = []
    original = DomainActor.snapshot

    def counted(self: DomainActor) -> actors.DomainSnapshot:
        built.append(self.domid)
        return original(self)

    monkeypatch.setattr(DomainActor, "snapshot", counted)
    async with actors.open_runtime(xs) as rt:
        with trio.fail_after(10):
            for domid in range(1, 21):
                await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
            for domid in range(1, 21):
                await rt.wait_domain(domid, State.RUNNING)
        built.clear()
        assert rt.domains[7].domid == 7
        assert 7 in rt.domains and 30 not in rt.domains and len(rt.domains) == 20
        assert built == [7]
        assert sorted(rt.domains) == list(range(1, 21)) and built == [7]  # keys: no snapshot at all
        walked = 0
        for domid, snapshot in rt.domains.items():  # built one at a time, as the walk gets to each
            assert snapshot.domid == domid and len(built) == walked + 2
            walked += 1
            if walked == 5:
                await actors.retire_domain(xs, 20)
                await rt.wait_domain(20, None)  # gone before the walk got to it: skipped
        assert walked == 19
        with pytest.raises(KeyError):
            rt.domains[20]
