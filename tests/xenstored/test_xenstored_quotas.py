"""Guest quotas with C xenstored 4.17's defaults and error names; dom0 (every socket client) is exempt."""

from __future__ import annotations

import trio

from actors.xenstored import Quotas
from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join


async def home(dom0: RawClient, domid: int) -> None:
    await dom0.mkdir(f"/local/domain/{domid}")
    await dom0.set_perms(f"/local/domain/{domid}", f"n{domid}")


def test_defaults_are_those_of_c_xenstored() -> None:
    q = Quotas()
    assert (q.nodes, q.watches, q.transactions, q.outstanding) == (1000, 128, 10, 20)
    assert (q.transaction_nodes, q.node_size, q.permissions, q.path_length) == (1024, 2048, 5, 2048)
    assert q.memory == 2621440


async def test_node_size() -> None:
    async with serving() as (server, path), await RawClient.connect(path) as dom0:
        await home(dom0, 5)
        async with server.guest(5) as stream:
            g = RawClient(stream)
            # record: 24-byte header + 8 bytes per permission + value + children; 2048 is too big
            await g.write("v", b"x" * 2015)
            assert await g.error(Op.WRITE, join("v", b"x" * 2016, terminate=False)) == "ENOSPC"
            assert await g.read("v") == b"x" * 2015
            assert await g.error(Op.WRITE, join("w/deep", b"x" * 2016, terminate=False)) == "ENOSPC"
            assert await g.error(Op.READ, join("w")) == "ENOENT"  # nothing half made
        await dom0.write("/local/domain/5/big", b"x" * 3000)  # dom0 is not limited


async def test_node_count() -> None:
    async with serving(Quotas(nodes=10)) as (server, path), await RawClient.connect(path) as dom0:
        await home(dom0, 5)  # owned by 5: counts
        async with server.guest(5) as stream:
            g = RawClient(stream)
            for i in range(8):
                await g.write(f"n{i}", "")
            assert await g.error(Op.WRITE, join("a/b", "", terminate=False)) == "ENOSPC"
            await g.write("n8", "")  # the tenth node
            assert await g.error(Op.MKDIR, join("n9")) == "ENOSPC"
            await g.rm("n0")
            await g.mkdir("n9")
            for i in range(20):  # dom0 may still create nodes owned by 5
                await dom0.write(f"/local/domain/5/d{i}", "")


async def test_permission_count() -> None:
    async with serving() as (server, path), await RawClient.connect(path) as dom0:
        await home(dom0, 5)
        async with server.guest(5) as stream:
            g = RawClient(stream)
            await g.write("p", "")
            await g.set_perms("p", "n5", "r1", "r2", "r3", "r4")
            assert await g.error(Op.SET_PERMS, join("p", "n5", "r1", "r2", "r3", "r4", "r6")) == "ENOSPC"


async def test_outstanding_requests_stall_only_that_guest() -> None:
    async with serving() as (server, path), await RawClient.connect(path) as dom0:
        await home(dom0, 5)
        async with server.guest(5) as stream:
            g = RawClient(stream)
            await g.send_raw(
                b"".join(RawClient.frame(Op.READ, join("/local/domain/5"), req_id=i) for i in range(500))
            )
            with trio.fail_after(5):
                assert await dom0.read("/local/domain/5") == b""  # others go on
                for i in range(500):
                    assert (await g.recv_frame()).req_id == i


async def test_dom0_is_exempt() -> None:
    async with (
        serving(Quotas(nodes=2, watches=1, transactions=1)) as (_, path),
        await RawClient.connect(path) as dom0,
    ):
        for i in range(5):
            await dom0.write(f"/n{i}", "")
            await dom0.watch(f"/n{i}", "t")
            await dom0.start()
