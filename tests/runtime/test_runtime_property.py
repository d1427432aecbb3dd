"""Property: any sequence of announce, retire and re-announce (same or new identity, at any moment of a start,
a stop or a restart, with slow hooks and failing handlers) ends with exactly the actors the tree asks for,
each running with the tree's identity. Against the embedded xenstored, on the autojump clock."""

from __future__ import annotations

import os
import shutil
import tempfile

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.runtime import RuntimeOptions
from actors.xenstored import open_xenstored

DOMIDS = (1, 2, 3)
ROOT = actors.MTWATCH_ROOT

Op = tuple[str, int, str]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), st.sampled_from(DOMIDS), st.sampled_from(["a", "b"])),
        st.tuples(st.just("retire"), st.sampled_from(DOMIDS), st.just("")),
        st.tuples(st.just("fail"), st.sampled_from(DOMIDS), st.just("")),
        st.tuples(st.just("bounce"), st.sampled_from(DOMIDS), st.sampled_from(["0.005", "0.05", "0.6"])),
        st.tuples(st.just("sleep"), st.just(0), st.sampled_from(["0", "0.005", "0.02", "0.3", "1.5", "4"])),
    ),
    max_size=30,
)
delays = st.sampled_from([0.0, 0.02, 0.5, 3.0])


async def scenario(sequence: list[Op], start_delay: float, stop_delay: float) -> None:
    folder = tempfile.mkdtemp(prefix="mtw", dir="/tmp")
    path = os.path.join(folder, "socket")
    options = RuntimeOptions(
        restart=RestartPolicy(max_restarts=1000, period=60, backoff_initial=0.5, backoff_max=2),
        stop_deadline=2,
    )
    try:
        async with (
            open_xenstored(path),
            actors.connect(path) as xs,
            actors.open_runtime(xs, options=options) as rt,
        ):

            @rt.on_start
            async def up(ctx: DomainContext) -> None:
                ctx.start_soon(trio.sleep_forever)
                await trio.sleep(start_delay)

            @rt.on_stop
            async def down(ctx: DomainContext) -> None:
                await trio.sleep(stop_delay)

            async def handler(ctx: DomainContext, event: WatchEvent) -> None:
                try:
                    value = await ctx.xs.read(event.path)
                except actors.NotFound:
                    return
                if value.startswith(b"fail"):
                    raise RuntimeError("failing on purpose")

            rt.watch("/local/domain/{domid}/fail", handler)
            await rt.ready.wait()
            for n, (op, domid, arg) in enumerate(sequence):
                if op == "announce":
                    await actors.announce_domain(xs, domid, identity=arg)
                elif op == "retire":
                    await actors.retire_domain(xs, domid)
                elif op == "bounce":  # retired, then announced again with the same identity soon after
                    await actors.retire_domain(xs, domid)
                    await trio.sleep(float(arg))
                    await actors.announce_domain(xs, domid, identity="a")
                elif op == "fail":
                    await xs.write(f"/local/domain/{domid}/fail", f"fail {n}")
                else:
                    await trio.sleep(float(arg))
            for domid in DOMIDS:  # no more failures from here on
                await xs.write(f"/local/domain/{domid}/fail", "ok")
            wanted: dict[int, bytes] = {}
            for name in await xs.ls(ROOT) if await xs.exists(ROOT) else []:
                wanted[int(name)] = await xs.read(f"{ROOT}/{name}")

            def settled() -> bool:
                domains = rt.domains
                return set(domains) == set(wanted) and all(
                    domains[d].state is State.RUNNING and domains[d].identity == wanted[d] for d in wanted
                )

            with trio.fail_after(120):
                while not settled():
                    with trio.move_on_after(1):
                        await rt.changed.wait()
            # And it stays so (no late stop or restart pending).
            await trio.sleep(10)
            assert settled(), (sequence, wanted, rt.domains)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops, start_delay=delays, stop_delay=delays)
def test_any_sequence_ends_with_the_actors_the_tree_asks_for(
    sequence: list[Op], start_delay: float, stop_delay: float
) -> None:
    trio.run(scenario, sequence, start_delay, stop_delay, clock=trio.testing.MockClock(autojump_threshold=0))
