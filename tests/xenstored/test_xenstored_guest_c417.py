"""What a guest sees, the same on Debian's real C xenstored 4.17 and on the embedded one with compat "4.17".

These are the answers that six tests of test_xenstored_perms, test_xenstored_422 and test_xenstored_watches got
wrong while XenStored.guest() swallowed the errors of its block (issue 23): each case here runs against both
daemons, so the expectation is C's, not ours. Sources, Xen 4.17.7: tools/xenstore/xenstored_core.c
(construct_node, manual_node), xenstored_domain.c (alloc_domain, chk_domain_generation,
domain_adjust_node_perms), xenstored_transaction.c (access_node); 4.22's differences are in the files named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join
from harness.servers import Embedded, Server

TIMEOUT = 10.0


@pytest.fixture(params=["embedded", pytest.param("cxenstored", marks=pytest.mark.cxenstored)])
async def daemon(request: pytest.FixtureRequest, workdir: str) -> AsyncIterator[Server]:
    """The embedded xenstored answering as C 4.17, or Debian's C xenstored 4.17 itself."""
    if request.param == "embedded":
        async with serving(compat="4.17") as (server, path):
            yield Embedded(server, path)
        return
    request.getfixturevalue("cxenstored_ready")
    from harness.cxenstored import open_cxenstored

    async with open_cxenstored(workdir) as real:
        yield real


@asynccontextmanager
async def dom0(daemon: Server) -> AsyncIterator[RawClient]:
    """A dom0 connection that watches @releaseDomain, to wait for a death (asynchronous in the C daemon)."""
    async with await RawClient.connect(daemon.socket_path) as conn:
        with trio.fail_after(TIMEOUT):
            await conn.watch("@releaseDomain", "released")
            assert await conn.event() == (b"@releaseDomain", b"released")
            yield conn


async def died(daemon: Server, conn: RawClient, domid: int) -> None:
    """Domain ``domid`` (introduced) dies; returns once the daemon has released it."""
    daemon.domain_died(domid)
    assert await conn.event() == (b"@releaseDomain", b"released")


async def test_a_guests_new_node_keeps_every_entry_of_its_parent(daemon: Server) -> None:
    # construct_node(): the parent's permissions are copied whole, then only the owner's domid is replaced
    async with dom0(daemon) as conn:
        await conn.write("/pub/b", "b")
        await conn.set_perms("/pub", "n0", "r5")
        await conn.set_perms("/pub/b", "n0", "b5", "r6")
        async with daemon.guest(5) as stream:
            g = RawClient(stream)
            await g.write("/pub/b/mine", "m")
            assert await g.get_perms("/pub/b/mine") == [b"n5", b"b5", b"r6"]
        assert await conn.get_perms("/pub/b/mine") == [b"n5", b"b5", b"r6"]


async def test_the_root_is_not_readable_by_a_guest(daemon: Server) -> None:
    # manual_node("/", ...) stores "/" with the one entry n0 (4.22 the same)
    async with dom0(daemon), daemon.guest(5) as stream:
        assert await RawClient(stream).error(Op.READ, join("/")) == "EACCES"


async def test_special_watches_of_a_guest_fire_only_at_registration(daemon: Server) -> None:
    # XSA-115: only connections that may read @introduceDomain / @releaseDomain (n0) get their events; the
    # event a WATCH fires at once is sent without a permission check (do_watch). 4.22 grants every domain
    # read on @releaseDomain (setup_structure): there the guest gets that one (test_xenstored_watches).
    async with dom0(daemon) as conn, daemon.guest(5) as stream:
        g = RawClient(stream)
        await g.watch("@introduceDomain", "in")
        await g.watch("@releaseDomain", "out")
        assert [await g.event(), await g.event()] == [
            (b"@introduceDomain", b"in"),
            (b"@releaseDomain", b"out"),
        ]
        await conn.call(Op.INTRODUCE, b"8\x000\x001\0")
        await conn.call(Op.RELEASE, b"8\0")
        assert await conn.event() == (b"@releaseDomain", b"released")
        # fire_watches() queued any event for the guest in the same pass: it would come before this reply
        assert await g.call(Op.GET_DOMAIN_PATH, b"5\0") == b"/local/domain/5\0"
        assert not g.events, g.events


async def test_a_domain_back_before_the_store_changed_keeps_the_dead_ones_grant(daemon: Server) -> None:
    # 4.17 tells a new domain from a dead one with the same domid by generation only: alloc_domain() takes the
    # global count as it is, a node change increments it first (access_node), and chk_domain_generation()
    # keeps a grant when d->generation <= the node's. Nothing written between the death and the new domain:
    # the new one counts as older than the node, and the grant applies. (4.22 removes the entries of a dead
    # domain from every node: test_xenstored_422.)
    async with dom0(daemon) as conn:
        await conn.write("/shared", "s")
        await conn.set_perms("/shared", "n0", "r6")
        async with daemon.guest(6) as stream:
            assert await RawClient(stream).read("/shared") == b"s"
        await died(daemon, conn, 6)
        async with daemon.guest(6) as stream:
            assert await RawClient(stream).read("/shared") == b"s"


async def test_a_dead_domains_grant_is_ignored_once_the_store_changed(daemon: Server) -> None:
    async with dom0(daemon) as conn:
        await conn.write("/shared", "s")
        await conn.set_perms("/shared", "n0", "r6")
        async with daemon.guest(6) as stream:
            assert await RawClient(stream).read("/shared") == b"s"
        await died(daemon, conn, 6)
        await conn.write("/elsewhere", "the toolstack builds the next domain")
        async with daemon.guest(6) as stream:  # younger than the grant: domain_adjust_node_perms() ignores it
            g = RawClient(stream)
            assert await g.error(Op.READ, join("/shared")) == "EACCES"
            await conn.write("/shared", "rewritten")  # stored with the entry marked ignored
            await conn.write("/shared/child", "inherits the ignored entry")
            assert await g.error(Op.READ, join("/shared")) == "EACCES"
            assert await g.error(Op.READ, join("/shared/child")) == "EACCES"
        # still listed: XS_PERM_IGNORE is not part of what GET_PERMS prints
        assert await conn.get_perms("/shared") == [b"n0", b"r6"]
        assert await conn.get_perms("/shared/child") == [b"n0", b"r6"]
