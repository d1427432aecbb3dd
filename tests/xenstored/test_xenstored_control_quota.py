"""CONTROL ``quota`` of the embedded xenstored answers as C xenstored does: 4.22's text by default (every
accounting item, with the highest value seen), 4.17's with ``compat="4.17"`` (checked line by line against
Debian's C xenstored 4.17 after the same guest's requests); and a domain's memory is kept as the store
changes, without a scan."""

from __future__ import annotations

import contextlib
import random

import pytest

from actors.xenstored.testing import RawClient, XsError, serving
from actors.xs.wire import Op, join


async def fill(dom0: RawClient, guest: RawClient) -> None:
    """The same requests on any daemon: a guest with 3 nodes of its own, 2 watches, 1 open transaction."""
    await guest.write("/local/domain/5/a", "1")
    await guest.write("/local/domain/5/b", "22")
    await guest.watch("/local/domain/5/a", "ta")
    await guest.watch("/local/domain/5/b", "tb")
    await guest.start()


async def home(dom0: RawClient) -> None:
    await dom0.mkdir("/local/domain/5")
    await dom0.set_perms("/local/domain/5", "n5")


def counts(reply: bytes) -> list[tuple[str, str]]:
    """Name and first number of each line but memory's (whose bytes differ between daemons)."""
    lines = reply.rstrip(b"\0").decode().splitlines()
    return [
        (line.split(":")[0].strip(), line.split(":")[1].split()[0])
        for line in lines[1:]
        if "memory" not in line
    ]


async def test_4_22_prints_every_item_with_the_highest_seen() -> None:
    async with serving() as (server, path), await RawClient.connect(path) as dom0:
        await home(dom0)
        async with server.guest(5) as stream:
            await fill(dom0, RawClient(stream))
            reply = await dom0.call(Op.DEBUG, join("quota", "5"))
        lines = reply.rstrip(b"\0").decode().splitlines()
        assert lines[0] == "Domain 5:"
        assert [line[:17] for line in lines[1:]] == [
            "nodes            ",
            "watches          ",
            "outstanding      ",
            "memory           ",
            "transactions     ",
            "transaction-nodes",
            "node-permissions ",
            "path-max         ",
            "node-size        ",
        ]
        assert lines[1] == "nodes            :        3 (max        3)"
        assert lines[2] == "watches          :        2 (max        2)"
        assert lines[5] == "transactions     :        1 (max        1)"
        settings = (await dom0.call(Op.DEBUG, join("quota"))).decode()
        assert settings.startswith("Quota settings:\nnodes            :     1000 Nodes per domain\n")
        assert "transactions     :       10 Active transactions per domain\n" in settings
        assert await dom0.error(Op.DEBUG, join("quota", "9")) == "ENOENT"  # a domain it does not know


@pytest.mark.cxenstored
async def test_4_17_answers_as_debians_c_xenstored(cxenstored_ready: None, workdir: str) -> None:
    from harness.cxenstored import open_cxenstored

    replies = {}
    async with open_cxenstored(workdir) as real, await RawClient.connect(real.socket_path) as dom0:
        await home(dom0)
        async with real.guest(5) as stream:
            await fill(dom0, RawClient(stream))
            replies["c"] = (
                await dom0.call(Op.DEBUG, join("quota", "5")),
                await dom0.call(Op.DEBUG, join("quota")),
            )
    async with serving(compat="4.17") as (server, path), await RawClient.connect(path) as dom0:
        await home(dom0)
        async with server.guest(5) as stream:
            await fill(dom0, RawClient(stream))
            replies["embedded"] = (
                await dom0.call(Op.DEBUG, join("quota", "5")),
                await dom0.call(Op.DEBUG, join("quota")),
            )
    (c_use, c_limits), (use, limits) = replies["c"], replies["embedded"]
    assert (
        counts(use)
        == counts(c_use)
        == [("nodes", "3"), ("watches", "2"), ("transactions", "1"), ("outstanding", "0")]
    )
    assert [len(line) for line in use.split(b"\n")] == [
        len(line) for line in c_use.split(b"\n")
    ]  # the same layout
    assert limits == c_limits


async def test_a_domains_memory_is_kept_as_the_store_changes() -> None:
    rng = random.Random(21)
    async with serving() as (server, path), await RawClient.connect(path) as dom0:
        store = server.core.store
        for step in range(400):
            domid = rng.choice((5, 6, 7))
            node = f"/local/domain/{rng.choice((5, 6, 7))}/n{rng.randrange(20)}"
            what = rng.random()
            if what < 0.5:
                await dom0.write(node, "x" * rng.randrange(50))
            elif what < 0.8:
                with contextlib.suppress(XsError):  # ENOENT: its parent was never made
                    await dom0.rm(node)
            else:
                await dom0.write(node, "")
                await dom0.set_perms(node, f"n{domid}", "r0")
            if step % 50 == 0:
                for owner in (0, 5, 6, 7):
                    scanned = sum(n.size() + len(p) for p, n in store.nodes.items() if n.owner == owner)
                    assert store.memory(owner) == scanned
