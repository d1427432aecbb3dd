"""Watches: the initial event, descendants, relative paths, removal, special paths, XSA-115 filtering,
XSA-326 deduplication and creation events, domain death."""

from __future__ import annotations

import pytest
import trio

from actors.xenstored import Quotas, XenStored
from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join


async def test_initial_event_and_event_frame(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, _ = raw_pair
    rid = await a.send(Op.WATCH, join("/nothing/here", "tok"))
    frames = [await a.recv_frame(), await a.recv_frame()]
    assert (frames[0].op, frames[0].req_id, frames[0].payload) == (Op.WATCH, rid, b"OK\0")
    event = frames[1]
    assert (event.op, event.req_id, event.tx_id, event.payload) == (
        Op.WATCH_EVENT,
        0,
        0,
        b"/nothing/here\0tok\0",
    )
    assert await a.error(Op.WATCH, join("/nothing/here", "tok")) == "EEXIST"
    await a.watch("/nothing/here", "other-token")  # another token is another watch
    assert await a.event() == (b"/nothing/here", b"other-token")


async def test_descendants_fire_creation_fires_only_the_created_node(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    _, a, b = raw_pair
    await b.watch("/x", "t")
    await b.event()
    await a.write("/x/y/z", "1")  # creates /x, /x/y implicitly: one event (XSA-326)
    assert await b.event() == (b"/x/y/z", b"t")
    await b.no_event()
    await a.write("/x/y/z", "2")
    await a.mkdir("/x/y/z")  # exists: no event
    await a.write("/elsewhere", "1")
    await a.set_perms("/x/y", "n0", "r1")
    assert await b.event() == (b"/x/y/z", b"t")
    assert await b.event() == (b"/x/y", b"t")
    await b.no_event()


async def test_rm_fires_removed_path_and_watched_nodes_inside(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    _, a, b = raw_pair
    await a.write("/r/s/t", "1")
    await a.write("/r/s/u", "1")
    await b.watch("/r", "parent")
    await b.watch("/r/s/t", "inside")
    await b.watch("/r/s/missing", "missing")
    for _ in range(3):
        await b.event()
    await a.rm("/r/s")
    assert await b.event() == (b"/r/s/t", b"inside")  # exact event for a watched node inside
    assert await b.event() == (b"/r/s", b"parent")
    await b.no_event()
    await a.rm("/r/s")  # already gone: no event
    await b.no_event()


async def test_watch_on_root_sees_everything_but_special_events(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    server, a, b = raw_pair
    await b.watch("/", "all")
    assert await b.event() == (b"/", b"all")
    await a.write("/p/q", "1")
    assert await b.event() == (b"/p/q", b"all")
    server.introduce(4)
    await b.no_event()


async def test_unwatch(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    assert await b.error(Op.UNWATCH, join("/u", "t")) == "ENOENT"
    await b.watch("/u", "t")
    await b.event()
    await b.unwatch("/u", "t")
    await a.write("/u", "1")
    await b.no_event()
    assert await b.error(Op.UNWATCH, join("/u", "t")) == "ENOENT"


async def test_many_watches_on_one_connection_keep_their_order_through_unwatch_and_reset(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    """A connection's watches are kept by (path, token): a duplicate among hundreds is refused, one removed in
    the middle leaves the others firing in registration order, and RESET_WATCHES drops them all."""
    _, a, b = raw_pair
    for i in range(300):
        await b.watch(f"/m/{i % 100}", f"t{i // 100}")
        await b.event()
    assert await b.error(Op.WATCH, join("/m/42", "t1")) == "EEXIST"
    await b.unwatch("/m/42", "t1")
    assert await b.error(Op.UNWATCH, join("/m/42", "t1")) == "ENOENT"
    await a.write("/m/42", "1")
    assert [await b.event(), await b.event()] == [(b"/m/42", b"t0"), (b"/m/42", b"t2")]
    await b.no_event()
    await b.watch("/m/42", "t1")  # registered again: now the last of the three
    await b.event()
    await a.write("/m/42", "2")
    assert [await b.event() for _ in range(3)] == [(b"/m/42", b"t0"), (b"/m/42", b"t2"), (b"/m/42", b"t1")]
    assert await b.call(Op.RESET_WATCHES, b"") == b"OK\0"
    await a.write("/m/7", "1")
    await b.no_event()


async def test_relative_watch_gives_relative_paths(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    _, a, b = raw_pair
    await b.watch("rel", "t")
    assert await b.event() == (b"rel", b"t")
    await a.write("/local/domain/0/rel/sub", "1")
    assert await b.event() == (b"rel/sub", b"t")
    await b.unwatch("/local/domain/0/rel", "t")  # the same watch, named absolutely


@pytest.mark.parametrize("compat", ["4.17", "4.22"])
async def test_special_watches_reach_only_connections_that_may_read_them(compat: str) -> None:
    # XSA-115: @introduceDomain and @releaseDomain fire only to connections that may read them. Both are n0 in
    # 4.17; 4.22 grants every domain read on @releaseDomain (core.c setup_structure: {DOMID_ANY, XS_PERM_READ}),
    # so there a guest gets it. The event a WATCH fires at once needs no permission (watch.c do_watch).
    async with serving(compat=compat) as (server, path), await RawClient.connect(path) as a:
        await a.watch("@introduceDomain", "in")
        await a.watch("@releaseDomain", "out")
        assert await a.event() == (b"@introduceDomain", b"in")
        assert await a.event() == (b"@releaseDomain", b"out")
        async with server.guest(7) as stream:
            assert await a.event() == (b"@introduceDomain", b"in")
            g = RawClient(stream)
            await g.watch("@introduceDomain", "g-in")
            await g.watch("@releaseDomain", "g-out")
            assert await g.event() == (b"@introduceDomain", b"g-in")  # registration always fires
            assert await g.event() == (b"@releaseDomain", b"g-out")
            await a.call(Op.INTRODUCE, b"8\x000\x001\0")
            assert await a.event() == (b"@introduceDomain", b"in")
            await a.call(Op.INTRODUCE, b"8\x000\x001\0")  # already introduced: no event
            await a.call(Op.RELEASE, b"8\0")
            assert await a.event() == (b"@releaseDomain", b"out")
            if compat == "4.22":
                assert await g.event() == (b"@releaseDomain", b"g-out")
            # one more round trip each: its reply comes after any event already fired
            await g.call(Op.GET_DOMAIN_PATH, b"7\0")
            await a.call(Op.GET_DOMAIN_PATH, b"7\0")
            assert not g.events, g.events
            assert not a.events, a.events


async def test_events_only_to_those_who_may_read(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    server, dom0, _ = raw_pair
    await dom0.write("/pub/readable", "")
    await dom0.set_perms("/pub", "n0", "r5")
    await dom0.set_perms("/pub/readable", "n0", "r5")
    await dom0.write("/private/x", "")
    async with server.guest(5) as stream:
        g = RawClient(stream)
        await g.watch("/", "root")
        assert await g.event() == (b"/", b"root")
        await dom0.write("/private/x", "secret")  # neither it nor its parent readable
        await g.no_event()
        await dom0.write("/pub/readable", "1")
        assert await g.event() == (b"/pub/readable", b"root")
        await dom0.write("/pub/hidden", "h")  # not readable itself, but its parent is
        assert await g.event() == (b"/pub/hidden", b"root")
        await dom0.set_perms("/pub/readable", "n0")  # losing access still tells (old perms)
        assert await g.event() == (b"/pub/readable", b"root")
        await dom0.write("/pub/readable", "2")  # parent readable
        assert await g.event() == (b"/pub/readable", b"root")
        await g.no_event()


async def test_identical_queued_events_are_dropped(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    server, dom0, _ = raw_pair
    await dom0.write("/flood", "")
    await dom0.set_perms("/flood", "n0", "r5")
    async with server.guest(5) as stream:
        g = RawClient(stream)
        token = "t" * 3000  # big events fill the socket buffer quickly
        await g.watch("/flood", token)
        await g.event()
        payload = b"".join(
            RawClient.frame(Op.WRITE, join("/flood", str(i), terminate=False)) for i in range(2000)
        )
        await dom0.send_raw(payload)
        for _ in range(2000):
            await dom0.recv_frame()
        received = 0
        with trio.move_on_after(0.3):
            while True:
                assert await g.event() == (b"/flood", token.encode())
                received += 1
        assert 1 <= received < 1000, received  # bounded by the socket buffer, not by the writes


async def test_slow_reader_does_not_block_others(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    server, dom0, other = raw_pair
    await other.watch("/", "x" * 2000)  # and never reads again
    with trio.fail_after(10):
        payload = b"".join(
            RawClient.frame(Op.WRITE, join(f"/many/n{i}", "v", terminate=False)) for i in range(5000)
        )
        await dom0.send_raw(payload)
        for _ in range(5000):
            await dom0.recv_frame()
        assert len(server.store.get(b"/many").children) == 5000  # type: ignore[union-attr]
        assert await dom0.read("/many/n4999") == b"v"
    assert max(c.queued_bytes for c in server.connections) < 32 * 1024 * 1024


async def test_watch_quota_of_a_guest() -> None:
    async with serving(Quotas(watches=3)) as (server, _), server.guest(5) as stream:
        g = RawClient(stream)
        for i in range(4):  # C: "watches > quota" fails: one past the quota still passes
            await g.watch(f"/w{i}", "t")
        assert await g.error(Op.WATCH, join("/w9", "t")) == "E2BIG"
        await g.call(Op.RESET_WATCHES, b"")
        await g.watch("/w9", "t")


async def test_domain_death(raw_pair: tuple[XenStored, RawClient, RawClient]) -> None:
    server, dom0, _ = raw_pair
    await dom0.write("/local/domain/6/name", "six")
    await dom0.set_perms("/local/domain/6", "n6")
    await dom0.watch("@releaseDomain", "rel")
    await dom0.watch("/local/domain/6/name", "name")
    await dom0.event()
    await dom0.event()
    async with server.guest(6) as stream:
        g = RawClient(stream)
        await g.write("data", "1")
        assert server.store.get(b"/local/domain/6/data") is not None
        server.domain_died(6)
        with trio.fail_after(5), pytest.raises(EOFError):  # its connection is dropped
            await g.recv_frame()
    assert await dom0.event() == (b"/local/domain/6/name", b"name")
    assert await dom0.event() == (b"@releaseDomain", b"rel")
    assert await dom0.ls("/local/domain") == []
    assert not server.is_introduced(6)
