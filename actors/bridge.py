"""``mtwatch domain bridge``: the mtwatch protocol on a stock Xen host.

libxl as shipped writes no mtwatch nodes (the seed was an RFC that was never merged). The bridge follows the
host's domains as the ``domains`` lifecycle does (see :mod:`actors.runtime.lifecycle.domains`: the daemon's word on
liveness, a ``vm`` identity only when the guest cannot write it) and announces and retires
``/local/domain/0/mtwatch/<domid>`` on the toolstack's behalf, so every mtwatch consumer works there.
"""

from __future__ import annotations

import trio
from loguru import logger
from trio_util import AsyncValue

from .runtime.lifecycle.domains import DomainsSource
from .runtime.lifecycle.mtwatch import MtwatchSource
from .runtime.lifecycle.protocol import MTWATCH_ROOT
from .toolstack import announce_domain, retire_domain
from .xs.client import XenStore

__all__ = ["run_bridge"]


class _Latest:
    def __init__(self) -> None:
        self.value: AsyncValue[dict[int, bytes] | None] = AsyncValue(None)

    def full(self, domains: dict[int, bytes]) -> None:
        self.value.value = dict(domains)

    def some(self, domains: dict[int, bytes]) -> None:
        pass  # the listing's full report follows: the tree is synced with that

    def one(self, domid: int, identity: bytes | None) -> None:
        current = dict(self.value.value or {})
        if identity is None:
            current.pop(domid, None)
        else:
            current[domid] = identity
        self.value.value = current


async def sync_once(xs: XenStore, live: dict[int, bytes], root: str = MTWATCH_ROOT) -> tuple[int, int]:
    """Make the mtwatch tree match ``live``; returns (announced, retired)."""
    announced = retired = 0
    current = await MtwatchSource(root).listing(xs)
    for domid, identity in sorted(live.items()):
        if current.get(domid) != identity:
            await announce_domain(xs, domid, identity=identity, root=root)
            logger.info("announced domain {} ({!r})", domid, identity)
            announced += 1
    for domid in sorted(set(current) - set(live)):
        await retire_domain(xs, domid, root=root)
        logger.info("retired domain {}", domid)
        retired += 1
    return announced, retired


async def run_bridge(
    xs: XenStore, *, root: str = MTWATCH_ROOT, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep the mtwatch tree in step with the host's domains until the connection is lost or cancelled."""
    latest = _Latest()
    async with trio.open_nursery() as nursery:

        async def follow() -> None:
            await DomainsSource().follow(xs, latest)
            nursery.cancel_scope.cancel()

        nursery.start_soon(follow)
        first = True
        async for live in latest.value.eventual_values(lambda v: v is not None):
            await sync_once(xs, live, root)
            if first:
                first = False
                task_status.started()
