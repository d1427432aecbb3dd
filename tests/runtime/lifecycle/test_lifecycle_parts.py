"""A large first listing is examined a part at a time, and each part's live domains are reported (``some``) as it
is done, before the listing's ``full`` report: on both lifecycles, over the embedded xenstored's real socket. A
refused or forged node in a part is still refused; the full report is the whole truth."""

from __future__ import annotations

import math

import trio

import actors
from actors.runtime.lifecycle.domains import DomainsSource
from actors.runtime.lifecycle.mtwatch import MtwatchSource
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from actors.runtime.lifecycle.requests import CHUNK, REPORT_BATCH

COUNT = CHUNK + 50  # two parts


class Recorder:
    def __init__(self) -> None:
        self.parts: list[dict[int, bytes]] = []
        self.live: dict[int, bytes] | None = None
        self.listed = trio.Event()

    def some(self, domains: dict[int, bytes]) -> None:
        assert self.live is None, "a part reported after the full listing"
        self.parts.append(dict(domains))

    def full(self, domains: dict[int, bytes]) -> None:
        self.live = dict(domains)
        self.listed.set()

    def one(self, domid: int, identity: bytes | None) -> None:
        pass


async def follow_until_listed(xs: actors.XenStore, source: MtwatchSource | DomainsSource) -> Recorder:
    sink = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.follow, xs, sink)
        with trio.fail_after(60):
            await sink.listed.wait()
        nursery.cancel_scope.cancel()
    return sink


async def test_mtwatch_tree_reported_in_parts(xs: actors.XenStore) -> None:
    pipe = xs.pipeline()
    writes = [pipe.write(f"{MTWATCH_ROOT}/{domid}", f"uuid-{domid}") for domid in range(1, COUNT + 1)]
    await pipe.send()
    assert all(w.result() is None for w in writes)
    await xs.set_perms(f"{MTWATCH_ROOT}/7", ["n7"])  # a guest's own node: forged, refused
    sink = await follow_until_listed(xs, MtwatchSource())
    expected = {domid: f"uuid-{domid}".encode() for domid in range(1, COUNT + 1) if domid != 7}
    assert sink.live == expected
    # Each part's domains go to the sink a few dozen a turn of the loop (a part at once would hold it).
    assert all(0 < len(part) <= REPORT_BATCH for part in sink.parts)
    assert len(sink.parts) == math.ceil(50 / REPORT_BATCH) + math.ceil((CHUNK - 1) / REPORT_BATCH)
    merged = {domid: identity for part in sink.parts for domid, identity in part.items()}
    assert merged == expected


async def test_stock_host_reported_in_parts(xs: actors.XenStore) -> None:
    pipe = xs.pipeline()
    for domid in range(1, COUNT + 1):
        pipe.write(f"/local/domain/{domid}/vm", f"/vm/uuid-{domid}")
    await pipe.send()
    for domid in range(1, COUNT + 1):
        if domid != 9:  # named under /local/domain but not introduced: not a domain
            await xs.introduce(domid, 0, 1)
    sink = await follow_until_listed(xs, DomainsSource())
    expected = {domid: f"/vm/uuid-{domid}".encode() for domid in range(1, COUNT + 1) if domid != 9}
    assert sink.live == expected
    assert all(0 < len(part) <= REPORT_BATCH for part in sink.parts)
    assert len(sink.parts) >= 2
    merged = {domid: identity for part in sink.parts for domid, identity in part.items()}
    assert merged == expected
