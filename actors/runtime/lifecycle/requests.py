"""How the lifecycle sources ask the daemon: a bounded fan-out of requests, listings examined in parts, the
retry of requests the daemon answered with an error (:func:`patiently`), and WATCHes registered until accepted."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, TypeVar

import trio

from ..._log import logger
from ...xs.errors import ConnectionLost, NotFound, XenStoreError
from ..exception_groups import one_connection_lost

__all__ = [
    "BACKOFF",
    "CHUNK",
    "REPORT_BATCH",
    "RETRIES",
    "SKIPPED",
    "WATCH_RETRY_FIRST",
    "WATCH_RETRY_MAX",
    "Skipped",
    "gather_bounded",
    "in_chunks",
    "patiently",
    "report_in_batches",
    "until_watched",
]


T = TypeVar("T")


async def gather_bounded(items: Iterable[T], fn: Callable[[T], Awaitable[object]], limit: int = 64) -> None:
    """Run ``fn`` for every item, at most ``limit`` at a time (requests pipelined on the one connection).

    A connection lost under several items at once comes out as one bare ConnectionLost, not an exception
    group (Python 3.11's ``suppress`` and ``except`` do not look inside groups), also when siblings were
    cancelled meanwhile; any other exception comes out as it is, in its group.
    """
    limiter = trio.CapacityLimiter(limit)

    async def one(item: T) -> None:
        async with limiter:
            await fn(item)

    with one_connection_lost():
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(one, item)


CHUNK: Final = 256  # the domains of a listing examined (pipelined) and reported together


REPORT_BATCH: Final = 64  # domains of a listing reported to the sink in one turn of the loop


async def report_in_batches(early: Callable[[dict[int, bytes]], None], found: dict[int, bytes]) -> None:
    """``early(some of found)`` a few dozen domains a turn of the loop: each domain reported costs the sink an
    actor made, and a part's worth at once would hold the loop for milliseconds."""
    items = list(found.items())
    for start in range(0, len(items), REPORT_BATCH):
        early(dict(items[start : start + REPORT_BATCH]))
        await trio.lowlevel.checkpoint()


async def in_chunks(items: list[T], fn: Callable[[list[T]], Awaitable[object]], size: int = CHUNK) -> None:
    """``fn`` for every ``size`` items of ``items``, two parts at a time: while one part's answers are
    handled (and its domains reported), the next one's requests are with the daemon."""
    parts = [items[start : start + size] for start in range(0, len(items), size)]
    await gather_bounded(parts, fn, 2)


class Skipped:
    """What :func:`patiently` returns for a request the daemon kept refusing (already logged)."""

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED: Final = Skipped()


RETRIES: Final = 3


BACKOFF: Final = 0.05


async def patiently(
    what: str, request: Callable[[], Awaitable[T]], *, retries: int = RETRIES, backoff: float = BACKOFF
) -> T | Skipped:
    """``await request()``; an error reply (EIO, EACCES, ...) is retried ``retries`` times with jittered
    exponential backoff, then logged once (with ``what``, the node, and the error) and SKIPPED is returned.

    NotFound is an answer, not a failure: it is raised to the caller. So are ConnectionLost (the source ends
    with its connection) and the local validation errors (ValueError: a bug of the caller).
    """
    for attempt in range(retries + 1):
        try:
            return await request()
        except (NotFound, ConnectionLost, ValueError):
            raise
        except XenStoreError as exc:
            if attempt == retries:
                logger.warning("registry: skipping {} after {} attempts: {}", what, attempt + 1, exc)
                return SKIPPED
            logger.debug("registry: {} failed ({}); retrying", what, exc)
            await trio.sleep(random.uniform(0.5, 1.0) * backoff * 2**attempt)
    raise AssertionError("unreachable")


WATCH_RETRY_FIRST: Final = 0.05


WATCH_RETRY_MAX: Final = 5.0


async def until_watched(path: str, register: Callable[[], Awaitable[T]]) -> T:
    """``await register()`` (a WATCH of ``path``) until the daemon accepts it: a refusal (an error reply) is
    logged and tried again after a doubling delay (up to 5 s). ConnectionLost and ValueError are raised."""
    delay = WATCH_RETRY_FIRST
    while True:
        try:
            return await register()
        except (ConnectionLost, ValueError):
            raise
        except XenStoreError as exc:
            logger.warning("registry: cannot watch {}: {}; trying again in {:.2g} s", path, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)
