"""Permissions as a guest sees them (server.guest), C xenstored 4.17's rules and error names."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.xenstored import XenStored
from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join


@pytest.fixture(params=["4.17", "4.22"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[tuple[XenStored, RawClient]]:
    async with serving(compat=request.param) as (server, path), await RawClient.connect(path) as client:
        # what a toolstack does for domain 5: its home, owned by it
        await client.write("/local/domain/5/name", "guest5")
        await client.set_perms("/local/domain/5", "n5")
        await client.set_perms("/local/domain/5/name", "n0", "r5")
        yield server, client


async def test_guest_home(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    async with server.guest(5) as stream:
        g = RawClient(stream)
        assert await g.read("name") == b"guest5"
        assert await g.error(Op.WRITE, join("name", "x", terminate=False)) == "EACCES"
        await g.write("data/feature", "1")  # relative to /local/domain/5
        assert await dom0.read("/local/domain/5/data/feature") == b"1"
        assert await dom0.get_perms("/local/domain/5/data/feature") == [b"n5"]
        assert await g.ls("/local/domain/5") == [b"name", b"data"]
        assert await g.call(Op.GET_DOMAIN_PATH, b"5\0") == b"/local/domain/5\0"
        await g.rm("data")
        assert await dom0.ls("/local/domain/5") == [b"name"]


async def test_guest_without_access_gets_eacces(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    await dom0.write("/secret/key", "k")
    async with server.guest(5) as stream:
        g = RawClient(stream)
        for op in (Op.READ, Op.DIRECTORY, Op.GET_PERMS):
            assert await g.error(op, join("/tool")) == "EACCES"
            assert await g.error(op, join("/secret/key")) == "EACCES"
            # a missing node under an unreadable parent is EACCES too, not ENOENT
            assert await g.error(op, join("/secret/nope")) == "EACCES"
        assert await g.error(Op.WRITE, join("/x", "1", terminate=False)) == "EACCES"
        assert await g.error(Op.MKDIR, join("/secret/new")) == "EACCES"
        assert await g.error(Op.RM, join("/secret/key")) == "EACCES"
        assert await g.error(Op.RM, join("/secret/nope")) == "EACCES"
        assert await g.error(Op.SET_PERMS, join("/secret", "n5")) == "EACCES"
        assert await g.error(Op.READ, join("/local/domain/6/x")) == "EACCES"
        assert await g.error(Op.READ, join("nope")) == "ENOENT"  # own home: it may know


async def test_read_write_both_entries(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    await dom0.write("/pub/r", "r")
    await dom0.write("/pub/w", "w")
    await dom0.write("/pub/b", "b")
    await dom0.write("/pub/other", "o")
    await dom0.set_perms("/pub", "n0", "r5")
    await dom0.set_perms("/pub/r", "n0", "r5")
    await dom0.set_perms("/pub/w", "n0", "w5")
    await dom0.set_perms("/pub/b", "n0", "b5", "r6")
    await dom0.set_perms("/pub/other", "r0", "n5")  # everybody may read, but not 5
    async with server.guest(5) as stream:
        g = RawClient(stream)
        assert await g.read("/pub/r") == b"r"
        assert await g.error(Op.WRITE, join("/pub/r", "x", terminate=False)) == "EACCES"
        assert await g.error(Op.READ, join("/pub/w")) == "EACCES"
        await g.write("/pub/w", "w2")
        assert await dom0.read("/pub/w") == b"w2"
        await g.write("/pub/b", "b2")
        assert await g.read("/pub/b") == b"b2"
        assert await g.error(Op.READ, join("/pub/other")) == "EACCES"
        assert await g.error(Op.READ, join("/pub/missing")) == "ENOENT"  # parent readable
        assert await g.error(Op.WRITE, join("/pub/new", "x", terminate=False)) == "EACCES"
        assert await g.ls("/pub") == [b"r", b"w", b"b", b"other"]
        # a guest creating a node where it may write owns it; every other entry comes from the parent, its
        # own b5 too (C's construct_node() copies them all and replaces only the owner's domid; seen on C 4.17:
        # test_xenstored_guest_c417)
        await g.write("/pub/b/mine", "m")
        assert await dom0.get_perms("/pub/b/mine") == [b"n5", b"b5", b"r6"]
        assert await g.get_perms("/pub/b/mine") == [b"n5", b"b5", b"r6"]


async def test_guest_set_perms(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    async with server.guest(5) as stream:
        g = RawClient(stream)
        await g.write("mine", "1")
        await g.set_perms("mine", "n5", "r6", "b0")
        assert await g.get_perms("mine") == [b"n5", b"r6", b"b0"]
        assert await g.error(Op.SET_PERMS, join("mine", "n6")) == "EPERM"  # may not give it away
        assert await g.error(Op.SET_PERMS, join("name", "n5")) == "EACCES"  # not the owner
        too_many = ["n5", "r1", "r2", "r3", "r4", "r6"]
        assert await g.error(Op.SET_PERMS, join("mine", *too_many)) == "ENOSPC"
        await g.set_perms("mine", *too_many[:5])
        assert await g.error(Op.SET_PERMS, join("mine", "q5")) == "EINVAL"
        await dom0.set_perms("/local/domain/5/mine", *too_many)  # dom0 has no such quota


async def test_privileged_ops_from_a_guest_are_eacces(env: tuple[XenStored, RawClient]) -> None:
    server, _ = env
    async with server.guest(5) as stream:
        g = RawClient(stream)
        for op, payload in (
            (Op.DEBUG, b"check\0"),
            (Op.INTRODUCE, b"6\x000\x001\0"),
            (Op.RELEASE, b"5\0"),
            (Op.IS_DOMAIN_INTRODUCED, b"5\0"),
            (Op.RESUME, b"5\0"),
            (Op.SET_TARGET, b"5\x006\0"),
        ):
            assert await g.error(op, payload) == "EACCES", op
        assert await g.call(Op.RESET_WATCHES, b"") == b"OK\0"


async def test_set_target_grants_the_targets_rights(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    async with server.guest(5), server.guest(6) as stream6:
        g6 = RawClient(stream6)
        assert await g6.error(Op.READ, join("/local/domain/5/name")) == "EACCES"
        await dom0.call(Op.SET_TARGET, b"6\x005\0")  # 6 is a device model for 5
        assert await g6.read("/local/domain/5/name") == b"guest5"
        await g6.write("/local/domain/5/dm", "x")
        assert await dom0.get_perms("/local/domain/5/dm") == [b"n6"]


async def test_special_path_permissions(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    async with server.guest(5) as stream:
        g = RawClient(stream)
        assert await g.error(Op.SET_PERMS, join("@releaseDomain", "n5")) == "EACCES"
        await dom0.set_perms("@releaseDomain", "n0", "r5")
        await g.watch("@releaseDomain", "rel")
        assert await g.event() == (b"@releaseDomain", b"rel")
        server.domain_died(6)  # never introduced: no event
        await g.no_event()
        await dom0.call(Op.INTRODUCE, b"7\x000\x001\0")
        await dom0.call(Op.RELEASE, b"7\0")
        assert await g.event() == (b"@releaseDomain", b"rel")


# NEW_DOMAIN_AFTER_A_CHANGE: 4.17 tells a new domain from a dead one of the same domid by generation only
# (xenstored_domain.c: alloc_domain() takes the global count as it is, a node change increments it first, and
# chk_domain_generation() keeps a grant while d->generation <= the node's). So the new domain must come after
# some change to the store, as it does when a toolstack builds it; with nothing written in between, C 4.17 lets
# it use the dead one's grant (test_xenstored_guest_c417 shows both on the real daemon). 4.22 removes a dead
# domain's entries from every node, so there the order does not matter.
async def test_permissions_of_a_released_domain_are_ignored(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    await dom0.write("/shared", "s")
    await dom0.set_perms("/shared", "n0", "r6")
    async with server.guest(6) as stream:
        assert await RawClient(stream).read("/shared") == b"s"
    server.domain_died(6)
    await dom0.write("/elsewhere", "the toolstack builds the next domain")  # see NEW_DOMAIN_AFTER_A_CHANGE
    async with server.guest(6) as stream:  # a new domain 6: the old grant does not apply (XSA-322)
        assert await RawClient(stream).error(Op.READ, join("/shared")) == "EACCES"
    # 4.17 keeps listing the dead domain's entry (ignored); 4.22 removed it when the domain died.
    expected = [b"n0", b"r6"] if server.compat == "4.17" else [b"n0"]
    assert await dom0.get_perms("/shared") == expected


async def test_a_rewritten_node_keeps_ignoring_a_dead_domains_grant(env: tuple[XenStored, RawClient]) -> None:
    server, dom0 = env
    await dom0.write("/shared", "s")
    await dom0.set_perms("/shared", "n0", "r6")
    server.domain_died(6)
    await dom0.write("/shared", "rewritten while 6 is gone")  # stores the entry as ignored
    async with server.guest(6) as stream:
        await dom0.write("/shared", "rewritten after the new 6 appeared")
        assert await RawClient(stream).error(Op.READ, join("/shared")) == "EACCES"


async def test_a_grant_older_than_the_domain_stays_ignored_when_rewritten(
    env: tuple[XenStored, RawClient],
) -> None:
    server, dom0 = env
    await dom0.write("/shared", "s")
    await dom0.set_perms("/shared", "n0", "r6")
    server.domain_died(6)
    await dom0.write("/elsewhere", "the toolstack builds the next domain")  # see NEW_DOMAIN_AFTER_A_CHANGE
    async with server.guest(6) as stream:  # the new 6 is younger than the grant
        await dom0.write("/shared", "rewritten")
        await dom0.write("/shared/child", "inherits the ignored entry")
        g = RawClient(stream)
        assert await g.error(Op.READ, join("/shared")) == "EACCES"
        assert await g.error(Op.READ, join("/shared/child")) == "EACCES"
    expected = [b"n0", b"r6"] if server.compat == "4.17" else [b"n0"]  # 4.22 removed it at the death
    assert await dom0.get_perms("/shared") == expected
