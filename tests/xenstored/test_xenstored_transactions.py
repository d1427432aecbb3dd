"""Transactions: isolation, commit, abort, conflicts (EAGAIN), events at commit only, quotas."""

from __future__ import annotations

from actors.xenstored import Quotas, XenStored
from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join


async def test_changes_are_visible_only_after_commit(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    _, a, b = raw_pair
    await a.write("/t/x", "old")
    tx = await a.start()
    assert tx == 1
    await a.write("/t/x", "new", tx)
    await a.write("/t/y/z", "created", tx)
    assert await a.read("/t/x", tx) == b"new"
    assert await a.ls("/t", tx) == [b"x", b"y"]
    assert await b.read("/t/x") == b"old"
    assert await a.read("/t/x") == b"old"  # the same connection outside the transaction
    assert await b.error(Op.READ, join("/t/y/z")) == "ENOENT"
    await a.end(tx)
    assert await b.read("/t/x") == b"new"
    assert await b.read("/t/y/z") == b"created"
    assert await a.start() == 2


async def test_abort_discards(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    tx = await a.start()
    await a.write("/gone", "x", tx)
    await a.rm("/tool", tx)
    await a.end(tx, commit=False)
    assert await b.error(Op.READ, join("/gone")) == "ENOENT"
    assert await b.ls("/") == [b"tool"]
    assert await a.error(Op.TRANSACTION_END, b"T\0", tx) == "ENOENT"


async def test_conflicting_change_is_eagain(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    await a.write("/c/x", "0")
    tx = await a.start()
    assert await a.read("/c/x", tx) == b"0"
    await b.write("/c/x", "1")
    assert await a.read("/c/x", tx) == b"0"  # the transaction keeps what it read first
    await a.write("/c/y", "from tx", tx)
    assert await a.error(Op.TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    assert await b.error(Op.READ, join("/c/y")) == "ENOENT"
    assert await a.error(Op.TRANSACTION_END, b"T\0", tx) == "ENOENT"  # it is gone


async def test_concurrent_creation_conflicts(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    tx = await a.start()
    assert await a.error(Op.READ, join("/n"), tx) == "ENOENT"
    await b.write("/n", "b")
    await a.write("/other", "a", tx)
    assert await a.error(Op.TRANSACTION_END, b"T\0", tx) == "EAGAIN"


async def test_unrelated_changes_do_not_conflict(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    await a.write("/u/x", "0")
    await a.write("/v", "0")
    tx = await a.start()
    await a.write("/u/x", "tx", tx)
    await b.write("/v", "1")
    await a.end(tx)
    assert await b.read("/u/x") == b"tx"


async def test_two_transactions_second_commit_fails(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    await a.write("/k", "0")
    ta, tb = await a.start(), await b.start()
    await a.write("/k", "a", ta)
    await b.write("/k", "b", tb)
    await a.end(ta)
    assert await b.error(Op.TRANSACTION_END, b"T\0", tb) == "EAGAIN"
    assert await a.read("/k") == b"a"


async def test_rm_in_a_transaction(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    await a.write("/r/x/y", "1")
    tx = await a.start()
    await a.rm("/r/x", tx)
    assert await a.ls("/r", tx) == []
    assert await b.ls("/r") == [b"x"]
    await a.end(tx)
    assert await b.ls("/r") == []
    assert await b.error(Op.READ, join("/r/x/y")) == "ENOENT"


async def test_watch_events_fire_at_commit(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    await b.watch("/w", "tok")
    assert await b.event() == (b"/w", b"tok")
    tx = await a.start()
    await a.write("/w/x", "1", tx)
    await a.write("/w/x", "2", tx)
    await b.no_event()
    await a.end(tx)
    assert await b.event() == (b"/w/x", b"tok")
    await b.no_event()
    tx = await a.start()
    await a.write("/w/y", "1", tx)
    await a.end(tx, commit=False)
    await b.no_event()


async def test_transaction_errors(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, _ = raw_pair
    assert await a.error(Op.READ, join("/"), 42) == "ENOENT"  # unknown transaction
    assert await a.error(Op.TRANSACTION_END, b"T\0") == "ENOENT"  # no transaction named
    tx = await a.start()
    assert await a.error(Op.TRANSACTION_START, b"\0", tx) == "EBUSY"  # no nesting
    assert await a.error(Op.TRANSACTION_END, b"commit\0", tx) == "EINVAL"
    # WATCH and UNWATCH ignore the transaction id
    await a.call(Op.WATCH, join("/", "t"), tx_id=999)
    await a.end(tx)


async def test_reset_watches_drops_transactions(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, _ = raw_pair
    tx = await a.start()
    await a.call(Op.RESET_WATCHES, b"")
    assert await a.error(Op.READ, join("/"), tx) == "ENOENT"


async def test_guest_transaction_quotas() -> None:
    async with (
        serving(Quotas(transaction_nodes=5)) as (server, path),
        await RawClient.connect(path) as dom0,
        server.guest(3) as stream,
    ):
        await dom0.mkdir("/local/domain/3")
        await dom0.set_perms("/local/domain/3", "n3")
        g = RawClient(stream)
        ids = [await g.start() for _ in range(11)]  # C: "started > quota" fails: 11 are fine
        assert await g.error(Op.TRANSACTION_START, b"\0") == "ENOSPC"
        for tx in ids[1:]:
            await g.end(tx, commit=False)
        tx = ids[0]
        for i in range(4):  # with /local/domain/3 itself: 5 nodes accessed
            await g.write(f"n{i}", "x", tx)
        assert await g.error(Op.WRITE, join("n9", "x", terminate=False), tx) == "ENOSPC"
        assert await g.error(Op.TRANSACTION_END, b"T\0", tx) == "ENOMEM"  # the failure sticks
        # dom0 has no such quota
        tx = await dom0.start()
        for i in range(10):
            await dom0.write(f"/many/{i}", "x", tx)
        await dom0.end(tx)
