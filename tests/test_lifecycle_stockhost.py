"""A stock host's domains (the ``domains`` lifecycle, and ``auto`` with no mtwatch node anywhere), as libxl
makes and destroys them, on the embedded and the C daemon: no guest write reaches the registry, a release costs
one pipelined round over the live domains, an introduction a listing and the new domain's requests only."""

from __future__ import annotations

import os
from collections import Counter

import trio

import actors
from actors import State
from actors.runtime.lifecycle import DomainsSource
from actors.xenstored import open_xenstored
from actors.xs.wire import Op
from conftest import Server
from harness.faultproxy import FaultProxy, fault_proxy
from harness.stockhost import create_domain, destroy_domain


class Recorder:
    """A LifecycleSink that keeps the reports and wakes the test on each."""

    def __init__(self) -> None:
        self.live: dict[int, bytes] | None = None
        self.reports: list[tuple[int, bytes | None]] = []
        self.changed = trio.Event()

    def full(self, domains: dict[int, bytes]) -> None:
        self.live = dict(domains)
        self._wake()

    def one(self, domid: int, identity: bytes | None) -> None:
        assert self.live is not None
        self.reports.append((domid, identity))
        if identity is None:
            self.live.pop(domid, None)
        else:
            self.live[domid] = identity
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, predicate: object) -> None:
        while self.live is None or not predicate(self.live):  # type: ignore[operator]
            await self.changed.wait()


def ops_since(proxy: FaultProxy, start: int) -> Counter[str]:
    return Counter(Op(frame.op).name for frame in proxy.requests[start:])


async def test_guest_writes_never_reach_the_registry(server: Server) -> None:
    async with actors.connect(server.socket_path) as xs:
        await create_domain(xs, 5, "aaaa")
        await xs.write("/local/domain/5/data", "")
        await xs.set_perms("/local/domain/5/data", ["n5"])  # the guest's own corner, as libxl makes it
        sink = Recorder()
        with trio.fail_after(30):
            async with (
                server.guest(5) as stream,
                actors.open_xenstore(stream, name="guest5") as guest,
                fault_proxy(server.socket_path) as proxy,
                actors.connect(proxy.path) as registry,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(DomainsSource().follow, registry, sink)
                await sink.until(lambda live: live == {5: b"/vm/aaaa"})
                requests, events = len(proxy.requests), proxy.events
                for i in range(20):
                    await guest.write(f"/local/domain/5/data/key{i}", f"value{i}")
                await guest.rm("/local/domain/5/data/key3")
                # The reply comes after any event the guest's writes queued for the registry's connection.
                assert await registry.read("/local/domain/5/vm") == b"/vm/aaaa"
                assert proxy.events == events
                assert len(proxy.requests) == requests + 1
                nursery.cancel_scope.cancel()


async def costs(socket_path: str) -> tuple[int | None, Counter[str], Counter[str]]:
    """With 40 live domains: the watch depth the source chose, and the registry's requests for one
    introduction and for one release."""
    live = range(1, 41)
    async with actors.connect(socket_path) as xs:
        for domid in live:
            await create_domain(xs, domid, f"uuid-{domid}")
        sink = Recorder()
        source = DomainsSource()
        with trio.fail_after(60):
            async with (
                fault_proxy(socket_path) as proxy,
                actors.connect(proxy.path) as registry,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(source.follow, registry, sink)
                await sink.until(lambda now: set(now) == set(live))
                start = len(proxy.requests)
                await create_domain(xs, 50, "new")
                await sink.until(lambda now: 50 in now)
                introduce = ops_since(proxy, start)
                start = len(proxy.requests)
                await destroy_domain(xs, 7)
                await sink.until(lambda now: 7 not in now)
                release = ops_since(proxy, start)
                nursery.cancel_scope.cancel()
        assert sink.reports == [(50, b"/vm/new"), (7, None)]
    return source.watch_depth, introduce, release


async def test_introduce_and_release_cost_no_more_than_their_share(server: Server) -> None:
    depth, introduce, release = await costs(server.socket_path)
    new_domain = Counter(IS_DOMAIN_INTRODUCED=1, GET_PERMS=1, READ=1)
    if server.name == "embedded":  # Xen 4.22: depth-1 events name the domain; nothing else is read
        assert depth == 1
        assert (introduce, release) == (new_domain, Counter(IS_DOMAIN_INTRODUCED=1))
    else:  # 4.17: a listing, then the new domain only; a release: one round over the 41 live domains
        assert depth is None
        assert (introduce, release) == (new_domain + Counter(DIRECTORY=1), Counter(IS_DOMAIN_INTRODUCED=41))


async def test_without_watch_depth_on_the_embedded_daemon_as_4_17(workdir: str) -> None:
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path, compat="4.17"):
        depth, introduce, release = await costs(path)
    assert depth is None
    assert introduce == Counter(DIRECTORY=1, IS_DOMAIN_INTRODUCED=1, GET_PERMS=1, READ=1)
    assert release == Counter(IS_DOMAIN_INTRODUCED=41)


async def test_stock_host_as_libxl_does_it_with_the_default_lifecycle(server: Server) -> None:
    seen: Counter[int] = Counter()
    ran = [trio.Event()]

    async def rule(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        seen[ctx.domid] += 1
        ran[0].set()

    async with actors.connect(server.socket_path) as xs:
        for domid in (1, 2):
            await create_domain(xs, domid, f"uuid-{domid}")
        with trio.fail_after(30):
            async with actors.open_runtime(xs) as rt:  # "auto": no mtwatch node anywhere
                rt.watch("/local/domain/{domid}/name", rule)
                await rt.wait_domain(1, State.RUNNING)
                await rt.wait_domain(2, State.RUNNING)
                await create_domain(xs, 3, "uuid-3")
                await rt.wait_domain(3, State.RUNNING)
                await destroy_domain(xs, 2)
                await rt.wait_domain(2, None)
                await create_domain(xs, 2, "uuid-2-again")  # the domid reused
                await rt.wait_domain(2, State.RUNNING)
                assert rt.domains[2].identity == b"/vm/uuid-2-again"
                assert {d: s.identity for d, s in rt.domains.items()} == {
                    1: b"/vm/uuid-1",
                    2: b"/vm/uuid-2-again",
                    3: b"/vm/uuid-3",
                }
                while set(seen) != {1, 2, 3}:  # every domain's rule ran (its initial event at least)
                    await ran[0].wait()
                    ran[0] = trio.Event()
                assert not await xs.exists(actors.MTWATCH_ROOT)
