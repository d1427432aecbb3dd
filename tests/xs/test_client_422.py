"""The client's Xen 4.21/4.22 API against the embedded xenstored speaking C 4.22, and the same calls refused
with Unsupported when it answers as 4.17."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio

import actors
from actors.xenstored import XenStored, open_xenstored
from actors.xs.capabilities import Feature
from actors.xs.errors import Unsupported
from actors.xs.events import WatchEvent
from actors.xs.wire import DOMID_ANY


@pytest.fixture
async def xs422(workdir: str) -> AsyncIterator[tuple[XenStored, actors.XenStore]]:
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path) as server, actors.connect(path) as xs:
        yield server, xs


async def next_event(sink: list[WatchEvent], count: int) -> None:
    with trio.fail_after(5):
        while len(sink) < count:  # noqa: ASYNC110 - events arrive through the sink
            await trio.sleep(0.01)


async def test_features_and_quotas(xs422: tuple[XenStored, actors.XenStore]) -> None:
    _, xs = xs422
    assert await xs.features() == Feature.ERROR | Feature.WATCHDEPTH | Feature.DOMID_ANY
    await xs.set_features(7, Feature.WATCHDEPTH)  # before INTRODUCE
    assert await xs.features(domid=7) == Feature.WATCHDEPTH
    await xs.introduce(7, 0, 1)
    with pytest.raises(actors.XenStoreError):  # EBUSY: the domain has its features now
        await xs.set_features(7, Feature.ERROR)
    names = await xs.quota()
    assert {"nodes", "watches", "transactions"} <= set(names)
    nodes = await xs.quota("nodes")
    await xs.set_quota("nodes", nodes + 5)
    assert await xs.quota("nodes") == nodes + 5
    await xs.set_quota("watches", 7, domid=7)
    assert await xs.quota("watches", domid=7) == 7
    with pytest.raises(actors.InvalidArgument):
        await xs.quota("no-such-quota")


async def test_depth_one_special_watches_name_the_domain(xs422: tuple[XenStored, actors.XenStore]) -> None:
    _, xs = xs422
    introduced: list[WatchEvent] = []
    released: list[WatchEvent] = []
    await xs.add_watch("@introduceDomain", "in", introduced.append, depth=1)
    await xs.add_watch("@releaseDomain", "out", released.append, depth=1)
    await next_event(introduced, 1)
    await next_event(released, 1)
    assert introduced[0].initial and released[0].initial
    await xs.introduce(9, 0, 1)
    await next_event(introduced, 2)
    assert (introduced[1].path, introduced[1].domid, introduced[1].initial) == (
        "@introduceDomain/9",
        9,
        False,
    )
    await xs.release(9)
    await next_event(released, 2)
    assert (released[1].path, released[1].domid) == ("@releaseDomain/9", 9)


async def test_depth_zero_watches_the_node_only(xs422: tuple[XenStored, actors.XenStore]) -> None:
    _, xs = xs422
    await xs.write("/d/a", "1")
    async with xs.watch("/d", depth=0) as events:
        assert (await events.receive()).initial
        await xs.write("/d/a", "2")  # a child: not watched at depth 0
        await xs.write("/d", "x")
        with trio.fail_after(5):
            event = await events.receive()
        assert (event.path, event.initial) == ("/d", False)


async def test_domid_any_in_permissions(xs422: tuple[XenStored, actors.XenStore]) -> None:
    _, xs = xs422
    await xs.write("/shared", "v")
    await xs.set_perms("/shared", ["n0", f"r{DOMID_ANY}"])
    assert await xs.get_perms("/shared") == ["n0", f"r{DOMID_ANY}"]


async def test_compat_417_refuses_with_unsupported(workdir: str) -> None:
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path, compat="4.17"), actors.connect(path) as xs:
        caps = await xs.capabilities()
        assert (caps.features, caps.feature_ops, caps.directory_part, caps.reset_watches) == (
            Feature(0),
            False,
            True,
            True,
        )
        for call in (xs.features(), xs.set_features(3, 4), xs.quota(), xs.set_quota("nodes", 1)):
            with pytest.raises(Unsupported):
                await call
        with pytest.raises(Unsupported, match="WATCHDEPTH"):
            await xs.add_watch("@introduceDomain", "t", lambda e: None, depth=1)
        with pytest.raises(Unsupported, match="DOMID_ANY"):
            await xs.set_perms("/", ["n0", f"r{DOMID_ANY}"])
