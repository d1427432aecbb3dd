"""The demo's toolstack and guests (see :mod:`actors.demo`): domains announced the way the seed's libxl
patch does, churn, well-behaved guests, and the four that misbehave."""

from __future__ import annotations

import collections
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field

import trio

from .. import XenStore, announce_domain, connect, retire_domain
from ..xs.client import Transaction

__all__ = ["Cast", "Show", "play"]

PING_INTERVAL = 0.05
PING_SLOTS = 200  # a slot is written again after 10 s: longer than a healthy event ever waits
CHURN_INTERVAL = 0.5
FLOOD_BURST = 10  # writes every FLOOD_TICK seconds: about 1000 writes a second
FLOOD_TICK = 0.01
FLOOD_PATHS = 200
NATIVE_INTERVAL = 1.5


@dataclass(frozen=True)
class Cast:
    """Who plays whom: domids of the steady healthy guests, the three misbehaving ones, and the pool the
    toolstack's churn draws from (``churn_live`` of them alive at a time)."""

    healthy: tuple[int, ...] = (1, 2, 3)
    hung: int = 4
    crashing: int = 5
    flooding: int = 6
    native: int = 7  # its handler runs native code in a worker process: it segfaults, then spins
    churn: tuple[int, ...] = tuple(range(20, 30))
    churn_live: int = 4

    @property
    def steady(self) -> tuple[int, ...]:
        return (*self.healthy, self.hung, self.crashing, self.flooding, self.native)


@dataclass
class Show:
    """What the simulated toolstack and guests did, for the summary."""

    cast: Cast
    started_at: float = 0.0
    announced: int = 0
    retired: int = 0
    pings: collections.Counter[int] = field(default_factory=collections.Counter)
    flood_writes: int = 0
    hang_at: float | None = None
    crash_at: float | None = None
    native_writes: int = 0
    live: set[int] = field(default_factory=set)
    guests: dict[int, trio.CancelScope] = field(default_factory=dict)
    go: trio.Event = field(default_factory=trio.Event)


async def _create(xs: XenStore, show: Show, domid: int) -> None:
    """What libxl does at domain creation: the mtwatch node first, in the transaction that makes the domain's
    home in XenStore."""

    async def make(tx: Transaction) -> None:
        await announce_domain(tx, domid, identity=str(uuid.uuid4()))
        await tx.write(f"/local/domain/{domid}/name", f"guest-{domid}")

    await xs.run_transaction(make)
    show.announced += 1
    show.live.add(domid)


async def _destroy(xs: XenStore, show: Show, domid: int) -> None:
    """What libxl does at destruction: the domain's nodes go, then the mtwatch node as the last operation."""
    scope = show.guests.pop(domid, None)
    if scope is not None:
        scope.cancel()
    show.live.discard(domid)

    async def remove(tx: Transaction) -> None:
        if await tx.exists(f"/local/domain/{domid}"):
            await tx.rm(f"/local/domain/{domid}")

    await xs.run_transaction(remove)
    await retire_domain(xs, domid)
    show.retired += 1


async def _guest(xs: XenStore, show: Show, domid: int, scope: trio.CancelScope) -> None:
    """A well-behaved guest: a timestamp every PING_INTERVAL, each to a node of its own under ``data/ping``
    (PING_SLOTS of them in turn), so that the handler reading an event's node finds that write's time, not
    a later one's: the latency it records is the event's, however long the event waited."""
    with scope:
        for seq in itertools.count():
            await xs.write(f"/local/domain/{domid}/data/ping/{seq % PING_SLOTS}", f"{time.monotonic():.6f}")
            show.pings[domid] += 1
            await trio.sleep(PING_INTERVAL)


def _start_guest(nursery: trio.Nursery, xs: XenStore, show: Show, domid: int) -> None:
    scope = trio.CancelScope()
    show.guests[domid] = scope
    nursery.start_soon(_guest, xs, show, domid, scope)


async def _flood(xs: XenStore, show: Show, domid: int) -> None:
    """Thousands of writes: FLOOD_BURST at a time over FLOOD_PATHS nodes, as fast as xenstored takes them."""
    n = 0

    async def one(path: str, value: str) -> None:
        await xs.write(path, value)
        show.flood_writes += 1

    while True:
        async with trio.open_nursery() as burst:
            for _ in range(FLOOD_BURST):
                burst.start_soon(one, f"/local/domain/{domid}/data/flood/{n % FLOOD_PATHS}", str(n))
                n += 1
        await trio.sleep(FLOOD_TICK)


async def _native(xs: XenStore, show: Show, domid: int) -> None:
    """Data that crashes its handler's native code (a segfault), then data that sends it into an endless loop,
    in turn, again after every restart of the domain."""
    for n in itertools.count():
        await xs.write(f"/local/domain/{domid}/data/native", "segv" if n % 2 == 0 else "spin")
        show.native_writes += 1
        await trio.sleep(NATIVE_INTERVAL)


async def _churn(xs: XenStore, show: Show, nursery: trio.Nursery, rng: random.Random) -> None:
    """Domains come and go: every CHURN_INTERVAL one churn domain is destroyed and another created."""
    cast = show.cast
    while True:
        await trio.sleep(CHURN_INTERVAL)
        live = sorted(d for d in cast.churn if d in show.live)
        free = [d for d in cast.churn if d not in show.live]
        if live and (len(live) >= cast.churn_live or rng.random() < 0.5):
            await _destroy(xs, show, rng.choice(live))
        if free and len(live) <= cast.churn_live:
            domid = rng.choice(free)
            await _create(xs, show, domid)
            _start_guest(nursery, xs, show, domid)


async def play(
    socket_path: str, show: Show, rng: random.Random, *, task_status: trio.TaskStatus[None]
) -> None:
    """The toolstack and the guests, until cancelled: started once the first domains are announced and their
    guests write; the misbehaving guests and the churn begin when ``show.go`` is set."""
    cast = show.cast
    async with (
        connect(socket_path) as toolstack,
        connect(socket_path) as guests,
        connect(socket_path) as flooder,
        trio.open_nursery() as nursery,
    ):
        for domid in (*cast.steady, *cast.churn[: cast.churn_live]):
            await _create(toolstack, show, domid)
        for domid in sorted(show.live):
            _start_guest(nursery, guests, show, domid)
        task_status.started()
        await show.go.wait()
        show.hang_at = time.monotonic()
        await guests.write(f"/local/domain/{cast.hung}/data/hang", "stuck")
        show.crash_at = time.monotonic()
        await guests.write(f"/local/domain/{cast.crashing}/data/crash", "poison")
        nursery.start_soon(_flood, flooder, show, cast.flooding)
        nursery.start_soon(_native, guests, show, cast.native)
        nursery.start_soon(_churn, toolstack, show, nursery, rng)
