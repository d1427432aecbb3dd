"""The toolstack side under contention: announce_domain/retire_domain redo conflicting transactions (EAGAIN)
with jittered backoff until their deadline, then raise ConflictDeadline with the count."""

from __future__ import annotations

import pickle

import pytest
import trio

import actors
from actors.toolstack import ConflictDeadline
from actors.xs.wire import Frame, Op
from harness.faultproxy import fault_proxy
from harness.servers import Embedded, Server
from harness.stockhost import mtwatch_node

# The 50 toolstacks, the proxy and (embedded) the daemon share one Python process on a machine shared with other
# test runs: what is tested is that contention never makes them give up, not how fast a starved CPU commits.
DEADLINE = 60.0


async def test_fifty_toolstack_tasks_at_once_never_give_up(server: Server) -> None:
    domids = range(1, 51)
    failures: list[BaseException] = []

    async def toolstack(xs: actors.XenStore, domid: int) -> None:
        try:
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}-old", deadline=DEADLINE)
            await actors.retire_domain(xs, domid, deadline=DEADLINE)
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}", deadline=DEADLINE)
        except actors.XenStoreError as exc:
            failures.append(exc)

    with trio.fail_after(120):
        async with (  # five toolstack processes' connections, ten tasks on each
            fault_proxy(server.socket_path) as proxy,
            actors.connect(proxy.path) as a,
            actors.connect(proxy.path) as b,
            actors.connect(proxy.path) as c,
            actors.connect(proxy.path) as d,
            actors.connect(proxy.path) as e,
            trio.open_nursery() as nursery,
        ):
            for domid in domids:
                nursery.start_soon(toolstack, (a, b, c, d, e)[domid % 5], domid)
    assert failures == []
    assert "EAGAIN" in proxy.errors  # they did contend
    async with actors.connect(server.socket_path) as xs:
        for domid in domids:
            assert await xs.read(mtwatch_node(domid)) == f"uuid-{domid}".encode()
            assert await xs.get_perms(mtwatch_node(domid)) == ["n0"]

        async def retire(domid: int) -> None:
            try:
                await actors.retire_domain(xs, domid, deadline=DEADLINE)
            except actors.XenStoreError as exc:
                failures.append(exc)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for domid in domids:
                    nursery.start_soon(retire, domid)
        assert failures == []
        assert await xs.ls(actors.MTWATCH_ROOT) == []


async def test_past_the_deadline_the_conflicts_are_counted(
    xenstored: Embedded, autojump_clock: object
) -> None:
    def conflict(frame: Frame) -> str | None:  # every commit conflicts
        return "EAGAIN" if frame.op == Op.TRANSACTION_END and frame.payload == b"T\0" else None

    async with fault_proxy(xenstored.socket_path) as proxy, actors.connect(proxy.path) as xs:
        proxy.rule = conflict
        with pytest.raises(ConflictDeadline) as info:
            await actors.announce_domain(xs, 3, identity="x")
        assert info.value.conflicts >= 2
        assert info.value.conflicts == sum(error == "EAGAIN" for _, error in proxy.refused)
        assert f"{info.value.conflicts} transaction conflicts (EAGAIN) within 10 s" in str(info.value)
        assert isinstance(info.value, actors.TransactionConflict)
        start = trio.current_time()
        with pytest.raises(ConflictDeadline):
            await actors.retire_domain(xs, 3, deadline=2.5)
        assert trio.current_time() - start >= 2.5
        copy = pickle.loads(pickle.dumps(info.value))
        assert (copy.conflicts, str(copy)) == (info.value.conflicts, str(info.value))
        proxy.rule = lambda frame: None
        await actors.announce_domain(xs, 3, identity="x")
        assert await xs.read(mtwatch_node(3)) == b"x"
