"""Work over every domain, given back to the loop in slices.

At 32,751 domains even a few microseconds per domain is a tenth of a second: done in one go, it holds the trio
loop that long, and every domain's latency pays for it (README "Performance"). :func:`in_slices` walks any
iterable and checkpoints whenever :data:`SLICE` seconds of the loop's time went by since it last gave it back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import trio

__all__ = ["SLICE", "in_slices"]

SLICE = 0.002  # seconds of the loop's time a slice of work over many domains may take before giving it back

T = TypeVar("T")


async def in_slices(items: Iterable[T], budget: float | None = None) -> AsyncIterator[T]:
    """``items``, giving the trio loop back whenever ``budget`` seconds (:data:`SLICE` unless given) went by
    since it last had it."""
    budget = SLICE if budget is None else budget
    clock = time.perf_counter
    since = clock()
    for item in items:
        yield item
        if clock() - since >= budget:
            await trio.lowlevel.checkpoint()
            since = clock()
