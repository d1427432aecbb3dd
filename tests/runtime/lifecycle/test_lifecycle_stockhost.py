"""A stock host's domains (the ``domains`` lifecycle, and ``auto`` with no mtwatch node anywhere), as libxl
makes and destroys them, on the embedded and the real daemons: no guest write reaches the registry (nor can a
guest touch the nodes it watches); without watch depth, a domain destroyed as libxl does it (directory first) is
found among the dying at once, one released first by the round over the live domains (at most one round per
release), and an introduction costs a listing and the new domain's requests only."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable

import pytest
import trio
import trio.testing

import actors
from actors import State
from actors.runtime.lifecycle.domains import DomainsSource
from actors.xenstored import open_xenstored
from actors.xs.wire import Op
from harness.faultproxy import FaultProxy, fault_proxy, path_of
from harness.servers import Embedded, Server
from harness.stockhost import create_domain, destroy_domain


class Recorder:
    """A LifecycleSink that keeps the reports and wakes the test on each."""

    def __init__(self) -> None:
        self.proxy: FaultProxy | None = None  # if set, its request count at each report is kept in ``at``
        self.at: list[int] = []
        self.live: dict[int, bytes] | None = None
        self.early: dict[int, bytes] = {}  # what the first listing reported as it went
        self.reports: list[tuple[int, bytes | None]] = []
        self.changed = trio.Event()

    def full(self, domains: dict[int, bytes]) -> None:
        self.live = dict(domains)
        self._wake()

    def some(self, domains: dict[int, bytes]) -> None:
        self.early.update(domains)

    def one(self, domid: int, identity: bytes | None) -> None:
        assert self.live is not None
        self.reports.append((domid, identity))
        if self.proxy is not None:
            self.at.append(len(self.proxy.requests))
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


async def settled(proxy: FaultProxy, registry: actors.XenStore, domid: int, source: DomainsSource) -> None:
    """Until the source watches the domain's ``vm`` (without watch depth) and that watch's registration event
    has passed the proxy (the reply to a later request comes after it)."""
    vm = f"/local/domain/{domid}/vm"
    if source.watch_depth is None:
        await polled(lambda: any(frame.op == Op.WATCH and path_of(frame) == vm for frame in proxy.requests))
    await registry.read(vm)


async def polled(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds: for state that changes with no event to wait on (what the proxy saw
    pass, what the source noted)."""
    for _ in itertools.count():
        if condition():
            return
        await trio.sleep(0.005)


async def test_guest_writes_never_reach_the_registry(server: Server) -> None:
    await guest_writes(server)


async def test_guest_writes_never_reach_the_registry_as_4_17(workdir: str) -> None:
    """The embedded daemon as 4.17 (no watch depth): each domain's vm is watched."""
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path, compat="4.17") as embedded:
        await guest_writes(Embedded(embedded, path))


async def guest_writes(stock_host: Server) -> None:
    async with actors.connect(stock_host.socket_path) as xs:
        await create_domain(xs, 5, "aaaa")
        await xs.write("/local/domain/5/data", "")
        await xs.set_perms("/local/domain/5/data", ["n5"])  # the guest's own corner, as libxl makes it
        sink = Recorder()
        source = DomainsSource()
        with trio.fail_after(30):
            async with (
                stock_host.guest(5) as stream,
                actors.open_xenstore(stream, name="guest5") as guest,
                fault_proxy(stock_host.socket_path) as proxy,
                actors.connect(proxy.path) as registry,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(source.follow, registry, sink)
                await sink.until(lambda live: live == {5: b"/vm/aaaa"})
                await settled(proxy, registry, 5, source)
                requests, events = len(proxy.requests), proxy.events
                for i in range(20):
                    await guest.write(f"/local/domain/5/data/key{i}", f"value{i}")
                await guest.rm("/local/domain/5/data/key3")
                # Nor can the guest touch the nodes the registry watches (its vm, the directory above it).
                for attempt in (
                    lambda: guest.write("/local/domain/5/vm", "/vm/forged"),
                    lambda: guest.write("/local/domain/5/vm/below", "x"),
                    lambda: guest.rm("/local/domain/5/vm"),
                    lambda: guest.rm("/local/domain/5"),
                    lambda: guest.set_perms("/local/domain/5/vm", ["n5"]),
                    lambda: guest.write("/local/domain/5/vmx", "x"),
                ):
                    with pytest.raises(actors.PermissionDenied):
                        await attempt()
                # The reply comes after any event the guest's writes queued for the registry's connection.
                assert await registry.read("/local/domain/5/vm") == b"/vm/aaaa"
                assert proxy.events == events
                assert len(proxy.requests) == requests + 1
                assert sink.reports == []
                nursery.cancel_scope.cancel()


async def costs(socket_path: str) -> tuple[int | None, Counter[str], Counter[str], Counter[str]]:
    """With 40 live domains: the watch depth the source chose, and the registry's requests up to the report
    of one introduction, of one release as the test harness does it (RELEASE, then the directory removed) and
    of one as libxl does it (the directory removed, then RELEASE)."""
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
                sink.proxy = proxy
                nursery.start_soon(source.follow, registry, sink)
                await sink.until(lambda now: set(now) == set(live))
                await settled(proxy, registry, 40, source)
                start = len(proxy.requests)
                await create_domain(xs, 50, "new")
                await sink.until(lambda now: 50 in now)
                introduce = ops_between(proxy, start, sink.at[-1])
                await settled(proxy, registry, 50, source)
                start = len(proxy.requests)
                await destroy_domain(xs, 7)  # RELEASE first: found by the round
                await sink.until(lambda now: 7 not in now)
                release = ops_between(proxy, start, sink.at[-1])
                await round_done(source, registry)
                round_ = ops_since(proxy, start)
                start = len(proxy.requests)
                await xs.rm("/local/domain/8")  # libxl: the directory first, then the domain is destroyed
                if source.watch_depth is None:  # its vm's removal makes it dying
                    await polled(lambda: 8 in source.release.dying)
                await xs.release(8)
                await sink.until(lambda now: 8 not in now)
                libxl = ops_between(proxy, start, sink.at[-1])
                await round_done(source, registry)
                nursery.cancel_scope.cancel()
        assert sink.reports == [(50, b"/vm/new"), (7, None), (8, None)]
    # A release costs at most one round over the live domains (twice if the daemon says it twice, while the
    # round is under way), and the released domain's vm watch is removed.
    if source.watch_depth is None:
        assert len(live) + 1 <= round_["IS_DOMAIN_INTRODUCED"] <= 2 * (len(live) + 1), round_
        assert round_["UNWATCH"] == 1, round_
    return source.watch_depth, introduce, release, libxl


def ops_between(proxy: FaultProxy, start: int, end: int) -> Counter[str]:
    return Counter(Op(frame.op).name for frame in proxy.requests[start:end])


async def round_done(source: DomainsSource, registry: actors.XenStore) -> None:
    """Until the source's release round is over: nothing left to check, and the last requests answered."""
    await polled(lambda: not source.release.unchecked)
    await trio.testing.wait_all_tasks_blocked()  # the last checks were sent
    await registry.read("/local/domain")  # answered after them
    await trio.testing.wait_all_tasks_blocked()


async def test_introduce_and_release_cost_no_more_than_their_share(server: Server) -> None:
    depth, introduce, release, libxl = await costs(server.socket_path)
    new_domain = Counter(IS_DOMAIN_INTRODUCED=1, GET_PERMS=1, READ=1)
    if server.name == "embedded":  # Xen 4.22: depth-1 events name the domain; nothing else is read
        assert depth == 1
        assert (introduce, release, libxl) == (new_domain, Counter(IS_DOMAIN_INTRODUCED=1), release)
    else:
        assert_without_depth(depth, introduce, release, libxl)


def assert_without_depth(
    depth: int | None, introduce: Counter[str], release: Counter[str], libxl: Counter[str]
) -> None:
    """4.17: a listing, then the new domain only (its vm watched as it is read); a release found by the round (a part of it), or, as libxl
    destroys a domain, among the dying: its vm's removal checked it (IS_DOMAIN_INTRODUCED, GET_PERMS and READ of
    its vm in one pipeline: the vm is gone), the release once more."""
    assert depth is None
    assert introduce == Counter(DIRECTORY=1, IS_DOMAIN_INTRODUCED=1, GET_PERMS=1, READ=1, WATCH=1)
    assert set(release) == {"IS_DOMAIN_INTRODUCED"} and release["IS_DOMAIN_INTRODUCED"] <= 41
    assert libxl == Counter(IS_DOMAIN_INTRODUCED=2, GET_PERMS=1, READ=1)


async def test_without_watch_depth_on_the_embedded_daemon_as_4_17(workdir: str) -> None:
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path, compat="4.17"):
        assert_without_depth(*await costs(path))


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
