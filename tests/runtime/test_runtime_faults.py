"""Connection loss at any moment never ends a runtime that has ``connect=`` (Python 3.11: exception groups from
concurrent listings and attaches included), and is never charged to a domain. A cuttable proxy between the
runtime and the embedded xenstored cuts the connection 100 times at random moments (during the listing, the
attaching of watches, hooks, handlers' requests) while the toolstack announces, retires and writes."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, ReconnectPolicy, State, WatchEvent
from harness.proxy import CuttableProxy, open_proxy
from harness.servers import Embedded

ROOT = actors.MTWATCH_ROOT
CUTS = 100
DOMAINS = 100


class LastValues:
    """Every handler's reads, by domain: what each saw last."""

    def __init__(self, delay: float = 0) -> None:
        self.last: dict[int, bytes] = {}
        self.changed = trio.Event()
        self.delay = delay

    async def __call__(self, ctx: DomainContext, event: WatchEvent) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        with contextlib.suppress(actors.NotFound):  # announced, but never written to yet
            self.last[ctx.domid] = await ctx.xs.read(f"/local/domain/{ctx.domid}/data")
        self.changed.set()
        self.changed = trio.Event()


async def cutter(proxy: CuttableProxy, rng: random.Random, done: trio.Event) -> None:
    """Cuts after a random number of scheduling rounds (the embedded daemon answers within one instant of
    the autojump clock, so this is what lands a cut in the middle of a listing or an attach), or a random
    while."""
    while proxy.cuts < CUTS:
        await proxy.wait_live(1)
        if rng.random() < 0.7:
            for _ in range(rng.randrange(400)):
                await trio.lowlevel.checkpoint()
        else:
            await trio.sleep(rng.choice([0.002, 0.05, 0.3]))
        proxy.cut()
    done.set()


async def toolstack(xs: actors.XenStore, rng: random.Random, done: trio.Event) -> None:
    """Writes, announces and retires until the cutter is done."""
    n = 0
    while not done.is_set():
        n += 1
        domid = rng.randrange(1, DOMAINS + 11)
        action = rng.random()
        if action < 0.1:
            await actors.retire_domain(xs, domid)
        elif action < 0.2:
            await actors.announce_domain(xs, domid, identity=rng.choice(["a", "b"]))
        else:
            await xs.write(f"/local/domain/{domid}/data", f"v{n}")
        await trio.sleep(rng.choice([0, 0.001, 0.01, 0.1]))


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_hundred_random_cuts_end_nothing_and_cost_no_domain(
    xenstored: Embedded, xs: actors.XenStore, workdir: str, seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(seed)
    for domid in range(1, DOMAINS + 1):
        await actors.announce_domain(xs, domid, identity="a")
    handler = LastValues()
    async with (
        open_proxy(xenstored.socket_path, os.path.join(workdir, "proxy")) as proxy,
        actors.open_runtime(
            connect=lambda: actors.connect(proxy.path),
            reconnect=ReconnectPolicy(backoff_initial=0.01, backoff_max=0.5),
        ) as rt,
    ):

        @rt.on_start
        async def hello(ctx: DomainContext) -> None:
            await ctx.xs.read(f"{ROOT}/{ctx.domid}")  # a request of a hook's, to be cut too

        rt.watch("/local/domain/{domid}/data", handler)
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cutter, proxy, rng, done)
            nursery.start_soon(toolstack, xs, rng, done)
        assert proxy.cuts >= CUTS
        # The tree as the toolstack left it, and a last value for every live domain.
        wanted = {int(name): await xs.read(f"{ROOT}/{name}") for name in await xs.ls(ROOT)}
        for domid in wanted:
            await xs.write(f"/local/domain/{domid}/data", f"last {domid}")

        def settled() -> bool:
            domains = rt.domains
            return set(domains) == set(wanted) and all(
                domains[d].state is State.RUNNING
                and domains[d].identity == wanted[d]
                and handler.last.get(d) == f"last {d}".encode()
                for d in wanted
            )

        with trio.fail_after(60):
            while not settled():
                with trio.move_on_after(0.5):
                    await handler.changed.wait()
        assert rt.connected.value
        assert rt.reconnects >= CUTS
        for snap in rt.domains.values():
            assert (snap.failures, snap.restarts) == (0, 0), snap


async def test_stalls_of_the_daemon_are_not_charged_to_domains_and_drop_nothing(
    xenstored: Embedded, xs: actors.XenStore, workdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The proxy holds every byte for 5 s, then twelve times for 2 s within 36 s: handlers (timeout 1.5 s)
    waiting on their reads are interrupted, not failed; every domain handles its last value afterwards."""
    for domid in range(1, 21):
        await actors.announce_domain(xs, domid, identity="a")
        await xs.write(f"/local/domain/{domid}/data", "0")
    handler = LastValues(delay=0.2)
    stalls: list[int] = []
    async with (
        open_proxy(xenstored.socket_path, os.path.join(workdir, "proxy")) as proxy,
        actors.open_runtime(connect=lambda: actors.connect(proxy.path), stall_after=0.5) as rt,
    ):
        rt.observe(lambda kind, domid, value: stalls.append(domid) if kind == "stall" else None)
        rt.watch("/local/domain/{domid}/data", handler, timeout=1.5)
        with trio.fail_after(30):
            while len(handler.last) < 20:
                await handler.changed.wait()
        for n, length in enumerate([5.0] + [2.0] * 12, start=1):
            for domid in range(1, 21):
                await xs.write(f"/local/domain/{domid}/data", f"{n}")
            await trio.sleep(0.1)  # the handlers have their events, and will read in 0.1 s
            proxy.stall()
            await trio.sleep(length)
            proxy.resume()
            await trio.sleep(1)
        with trio.fail_after(30):
            while any(handler.last.get(d) != b"13" for d in range(1, 21)):
                await handler.changed.wait()
        assert len(stalls) >= 10 and set(stalls) == {0}
        for snap in rt.domains.values():
            assert snap.state is State.RUNNING
            assert (snap.failures, snap.restarts, snap.dropped) == (0, 0, 0), snap
        assert rt.reconnects == 0
