"""What a stock toolstack (libxl) does to XenStore for a domain's life, and a log capture for warnings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger

import actors
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT

__all__ = ["create_domain", "destroy_domain", "mtwatch_node", "warnings_logged"]


async def create_domain(xs: actors.XenStore, domid: int, uuid: str) -> None:
    """What libxl does for a new domain, as far as XenStore goes (no mtwatch node: a stock toolstack)."""
    async with xs.transaction() as tx:
        await tx.write(f"/local/domain/{domid}/vm", f"/vm/{uuid}")
        await tx.write(f"/local/domain/{domid}/name", f"guest{domid}")
        await tx.set_perms(f"/local/domain/{domid}", ["n0", f"r{domid}"])
    await xs.introduce(domid, 0, 1)


async def destroy_domain(xs: actors.XenStore, domid: int) -> None:
    await xs.release(domid)
    await xs.rm(f"/local/domain/{domid}")


def mtwatch_node(domid: int) -> str:
    return f"{MTWATCH_ROOT}/{domid}"


@contextmanager
def warnings_logged() -> Iterator[list[str]]:
    """The messages of the warnings the package logs meanwhile."""
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    logger.enable("actors")
    try:
        yield seen
    finally:
        logger.disable("actors")
        logger.remove(sink)
