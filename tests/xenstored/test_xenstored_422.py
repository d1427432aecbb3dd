"""The embedded xenstored speaks the protocol of C xenstored 4.22 (and, with compat "4.17", that of 4.17).

Facts from Xen 4.22.0: docs/misc/xenstore.txt (GET/SET_FEATURE, GET/SET_QUOTA, WATCH <depth>, special watches
with a depth, @releaseDomain/<domid>), xen/include/public/io/xs_wire.h (feature bits, DOMID_ANY) and
tools/xenstored: domain.c (do_get_feature, do_set_feature, do_get_quota, do_set_quota, fire_special_watches,
do_check_domain, destroy_domain, domain_tree_remove_sub, domain_alloc_permrefs), watch.c (do_watch, is_child,
fire_watches), core.c (wire_funcs flags, perm_for_conn, setup_structure). Raw frames: the client's 4.22 API is
tested elsewhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from actors.xenstored import XenStored
from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join

GET_FEATURE, SET_FEATURE, GET_QUOTA, SET_QUOTA = 23, 24, 25, 26
DOMID_ANY = 32757
TIMEOUT = 5.0


@pytest.fixture
async def env() -> AsyncIterator[tuple[XenStored, RawClient]]:
    async with serving() as (server, path), await RawClient.connect(path) as client:
        yield server, client


@asynccontextmanager
async def as_guest(server: XenStored, domid: int) -> AsyncIterator[RawClient]:
    async with server.guest(domid) as stream:
        yield RawClient(stream)


async def event(c: RawClient) -> tuple[bytes, bytes]:
    with trio.fail_after(TIMEOUT):
        return await c.event()


async def no_more_events(*clients: RawClient) -> None:
    """No event is queued: one more round trip each, whose reply comes after any event already fired.

    GET_DOMAIN_PATH, which every connection may ask (a guest may not read "/": it is n0, core.c manual_node)."""
    for c in clients:
        assert await c.call(Op.GET_DOMAIN_PATH, b"0\0") == b"/local/domain/0\0"
        assert not c.events, c.events


async def make_home(c: RawClient, domid: int) -> None:
    await c.mkdir(f"/local/domain/{domid}")
    await c.set_perms(f"/local/domain/{domid}", f"n{domid}")


# -- features --------------------------------------------------------------------------------------------


async def test_dom0_has_every_feature(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    assert server.compat == "4.22"
    assert await c.call(GET_FEATURE, b"") == b"14\0"  # ERROR | WATCHDEPTH | DOMID_ANY
    assert await c.call(GET_FEATURE, b"0\0") == b"14\0"
    assert await c.call(GET_FEATURE, b"\0") == b"14\0"  # an empty domid is strtoul's 0
    assert await c.call(GET_FEATURE, b"5\0") == b"14\0"  # a domain not yet introduced: all by default
    assert await c.error(GET_FEATURE, b"70000\0") == "EINVAL"  # past 65535
    assert await c.error(GET_FEATURE, b"5x\0") == "EINVAL"
    assert await c.error(GET_FEATURE, b"32752\0") == "ENOENT"  # reserved: no such domain
    assert await c.error(GET_FEATURE, b"5\06\0") == "EINVAL"


async def test_features_are_set_before_introduce(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    assert await c.call(SET_FEATURE, b"5\x004\0") == b"OK\0"  # WATCHDEPTH only
    assert await c.call(GET_FEATURE, b"5\0") == b"4\0"
    assert await c.error(SET_FEATURE, b"5\x001\0") == "EINVAL"  # RECONNECTION: not offered
    assert await c.error(SET_FEATURE, b"5\0") == "EINVAL"
    async with as_guest(server, 5) as g:
        assert await g.call(GET_FEATURE, b"") == b"4\0"  # its own
        assert await g.error(GET_FEATURE, b"5\0") == "EACCES"  # naming a domain: dom0 only
        assert await g.error(SET_FEATURE, b"5\x0014\0") == "EACCES"
    assert await c.error(SET_FEATURE, b"5\x0014\0") == "EBUSY"  # introduced now
    assert await c.error(SET_FEATURE, b"0\x0014\0") == "EBUSY"  # so dom0 keeps them all


async def test_a_domain_without_watchdepth_may_not_give_a_depth(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    await make_home(c, 7)
    await c.call(SET_FEATURE, b"7\x000\0")
    async with as_guest(server, 7) as g:
        assert await g.error(Op.WATCH, join("x", "t", "1")) == "EINVAL"
        await g.watch("x", "t")  # without a depth: fine
        assert await event(g) == (b"x", b"t")


# -- quotas ----------------------------------------------------------------------------------------------


async def test_quota_names_and_global_values(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    names = b"nodes watches outstanding memory soft-memory transactions transaction-nodes node-permissions"
    assert await c.call(GET_QUOTA, b"") == names + b" path-max node-size\0"
    assert await c.call(GET_QUOTA, b"nodes\0") == b"1000\0"
    assert await c.call(GET_QUOTA, b"soft-memory\0") == b"2097152\0"
    assert await c.call(GET_QUOTA, b"node-size\0") == b"2048\0"
    assert await c.error(GET_QUOTA, b"soft-nodes\0") == "EINVAL"  # a soft quota that is off
    assert await c.error(GET_QUOTA, b"bogus\0") == "EINVAL"
    assert await c.error(GET_QUOTA, b"5\0nodes\0x\0") == "EINVAL"
    assert await c.call(SET_QUOTA, b"watches\x0050\0") == b"OK\0"
    assert await c.call(GET_QUOTA, b"watches\0") == b"50\0"
    assert await c.error(SET_QUOTA, b"watches\x000\0") == "EINVAL"  # 0 would switch it off: refused
    assert await c.error(SET_QUOTA, b"watches\0") == "EINVAL"
    async with as_guest(server, 5) as g:
        assert await g.error(GET_QUOTA, b"nodes\0") == "EACCES"
        assert await g.error(SET_QUOTA, b"nodes\x001\0") == "EACCES"


async def test_domain_quotas_start_from_the_global_ones_and_bind_the_domain(
    env: tuple[XenStored, RawClient],
) -> None:
    server, c = env
    assert await c.call(GET_QUOTA, b"5\0watches\0") == b"128\0"  # domain 5 exists from now on
    await c.call(SET_QUOTA, b"watches\x0010\0")
    assert await c.call(GET_QUOTA, b"5\0watches\0") == b"128\0"  # it kept the value it started with
    assert await c.call(GET_QUOTA, b"6\0watches\0") == b"10\0"  # a new domain takes the global one
    await c.call(SET_QUOTA, b"5\0watches\x002\0")
    assert await c.call(GET_QUOTA, b"5\0watches\0") == b"2\0"
    assert await c.error(GET_QUOTA, b"32752\0watches\0") == "ENOENT"
    await make_home(c, 5)
    async with as_guest(server, 5) as g:
        for i in range(3):  # count > quota, as C checks it: one past the quota still goes
            await g.watch(f"w{i}", "t")
        assert await g.error(Op.WATCH, join("w3", "t")) == "E2BIG"


# -- watch depth -----------------------------------------------------------------------------------------


async def test_watch_depth_limits_the_levels_that_fire(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.call(Op.WATCH, join("/a", "one", "1"))
    assert await event(c) == (b"/a", b"one")
    await c.call(Op.WATCH, join("/b", "zero", "0"))
    assert await event(c) == (b"/b", b"zero")
    await c.write("/a/x/y", "")  # creates /a, /a/x too, but fires only for /a/x/y (XSA-326): too deep
    await c.write("/a/x", "v")
    assert await event(c) == (b"/a/x", b"one")
    await c.write("/b/x", "")  # a child: not for depth 0
    await c.write("/b", "v")
    assert await event(c) == (b"/b", b"zero")
    await c.rm("/a")  # removal of the watched node itself fires
    assert await event(c) == (b"/a", b"one")
    assert await c.error(Op.WATCH, join("/c", "t", "-1")) == "EINVAL"
    await c.call(Op.WATCH, join("/", "root", "1"))
    assert await event(c) == (b"/", b"root")
    await c.write("/d/e", "")
    await c.write("/d", "v")
    assert await event(c) == (b"/d", b"root")


async def test_special_watches_with_a_depth_name_the_domain(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    server, c, bare = raw_pair
    await c.call(Op.WATCH, join("@introduceDomain", "in", "1"))
    await c.call(Op.WATCH, join("@releaseDomain", "out", "1"))
    await c.call(Op.WATCH, join("@releaseDomain", "none", "0"))  # depth 0: nothing but its first event
    for _ in range(3):
        await event(c)
    await bare.watch("@introduceDomain", "in")
    await bare.watch("@releaseDomain", "out")
    assert [await event(bare), await event(bare)] == [
        (b"@introduceDomain", b"in"),
        (b"@releaseDomain", b"out"),
    ]
    server.introduce(5)
    assert await event(c) == (b"@introduceDomain/5", b"in")
    assert await event(bare) == (b"@introduceDomain", b"in")
    await c.call(Op.RELEASE, b"5\0")
    assert await event(c) == (b"@releaseDomain/5", b"out")
    assert await event(bare) == (b"@releaseDomain", b"out")
    await no_more_events(c, bare)


async def test_release_domain_of_one_domid_fires_on_shutdown_and_on_destroy(
    raw_pair: tuple[XenStored, RawClient, RawClient],
) -> None:
    server, c, bare = raw_pair
    await c.watch("@releaseDomain/5", "five")
    await c.watch("@releaseDomain/6", "six")
    assert [await event(c), await event(c)] == [(b"@releaseDomain/5", b"five"), (b"@releaseDomain/6", b"six")]
    await bare.watch("@releaseDomain", "any")
    assert await event(bare) == (b"@releaseDomain", b"any")
    server.introduce(5)
    server.introduce(6)
    server.domain_shutdown(5)
    assert await event(c) == (b"@releaseDomain/5", b"five")
    assert await event(bare) == (b"@releaseDomain", b"any")
    server.domain_shutdown(5)  # once per shutdown
    await c.call(Op.RESUME, b"5\0")  # re-arms it
    server.domain_shutdown(5)
    assert await event(c) == (b"@releaseDomain/5", b"five")
    assert await event(bare) == (b"@releaseDomain", b"any")
    server.domain_died(5)
    assert await event(c) == (b"@releaseDomain/5", b"five")
    assert await event(bare) == (b"@releaseDomain", b"any")
    server.domain_died(6)
    assert await event(c) == (b"@releaseDomain/6", b"six")
    assert await event(bare) == (b"@releaseDomain", b"any")
    await no_more_events(c, bare)


async def test_every_domain_may_watch_release_domain(env: tuple[XenStored, RawClient]) -> None:
    """4.22's @releaseDomain grants read to DOMID_ANY; @introduceDomain stays dom0's."""
    server, c = env
    assert await c.get_perms("@releaseDomain") == [b"n0", b"r32757"]
    async with as_guest(server, 5) as g:
        await g.watch("@introduceDomain", "in")
        await g.watch("@releaseDomain", "out")
        assert [await event(g), await event(g)] == [(b"@introduceDomain", b"in"), (b"@releaseDomain", b"out")]
        server.introduce(6)
        server.domain_died(6)
        assert await event(g) == (b"@releaseDomain", b"out")
        await no_more_events(g)


# -- permissions -----------------------------------------------------------------------------------------


async def test_domid_any_grants_every_domain(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    await c.write("/pub", "p")
    await c.set_perms("/pub", "n0", f"r{DOMID_ANY}")
    assert await c.get_perms("/pub") == [b"n0", b"r32757"]
    for domid in (5, 9):
        async with as_guest(server, domid) as g:
            assert await g.read("/pub") == b"p"
            assert await g.error(Op.WRITE, join("/pub", "x", terminate=False)) == "EACCES"


async def test_domid_any_from_a_domain_without_the_feature_grants_nothing(
    env: tuple[XenStored, RawClient],
) -> None:
    server, c = env
    await make_home(c, 7)
    await c.call(SET_FEATURE, b"7\x000\0")
    async with as_guest(server, 7) as g:
        await g.write("open", "o")
        await g.set_perms("open", "n7", f"r{DOMID_ANY}")
    async with as_guest(server, 9) as g:
        assert await g.error(Op.READ, join("/local/domain/7/open")) == "EACCES"


async def test_permissions_naming_a_dead_domain_are_dropped(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    await c.write("/shared", "s")
    await c.set_perms("/shared", "n0", "r6", "w8")
    server.introduce(6)
    server.domain_died(6)
    assert await c.get_perms("/shared") == [b"n0", b"w8"]
    async with as_guest(server, 6) as g:  # a new domain 6 inherits nothing
        assert await g.error(Op.READ, join("/shared")) == "EACCES"


# -- compat 4.17 -----------------------------------------------------------------------------------------


async def test_compat_417_answers_as_417() -> None:
    async with serving(compat="4.17") as (server, path), await RawClient.connect(path) as c:
        assert server.compat == "4.17"
        for op in (GET_FEATURE, SET_FEATURE, GET_QUOTA, SET_QUOTA):
            assert await c.error(op, b"\0") == "ENOSYS"
        assert await c.error(Op.WATCH, join("/a", "t", "1")) == "EINVAL"
        assert await c.error(Op.GET_PERMS, join("@releaseDomain")) == "EINVAL"  # not a node in 4.17
        await c.write("/pub", "p")
        await c.set_perms("/pub", "n0", f"r{DOMID_ANY}")  # a reserved domid: ignored
        async with as_guest(server, 5) as g:
            assert await g.error(Op.READ, join("/pub")) == "EACCES"
        await c.watch("@releaseDomain/5", "five")  # a special path like any other: it never fires
        await c.watch("@releaseDomain", "any")
        assert [await event(c), await event(c)] == [
            (b"@releaseDomain/5", b"five"),
            (b"@releaseDomain", b"any"),
        ]
        server.domain_died(5)
        assert await event(c) == (b"@releaseDomain", b"any")
        await no_more_events(c)


def test_unknown_compat_is_refused() -> None:
    with pytest.raises(ValueError, match=r"4\.17, 4\.22"):
        XenStored(compat="4.19")
