"""What a lifecycle source is, and the tools the sources share: the sink and source protocols, the bounded
fan-out of requests, the retry of requests the daemon answered with an error, and the trust rule for nodes.

A source reports to a :class:`LifecycleSink`: the whole set after a full listing, or one domain after an event
that names it. It runs on one connection and ends (with ConnectionLost) only when that connection is lost: an
error reply is the request's, never the source's (see :func:`patiently`).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import trio
from loguru import logger

from ..xs.client import XenStore
from ..xs.errors import ConnectionLost, NotFound, XenStoreError
from ..xs.pipeline import Pipeline

__all__ = [
    "MTWATCH_ROOT",
    "SKIPPED",
    "LifecycleSink",
    "LifecycleSource",
    "Skipped",
    "Untrusted",
    "gather_bounded",
    "in_chunks",
    "one_connection_lost",
    "owner_of",
    "patiently",
    "trusted_read",
    "trusted_reads",
    "until_watched",
    "untrusted_because",
]

MTWATCH_ROOT: Final = "/local/domain/0/mtwatch"


class LifecycleSink(Protocol):
    def full(self, domains: dict[int, bytes]) -> None:
        """Exactly these domains are live now, with these identities."""

    def one(self, domid: int, identity: bytes | None) -> None:
        """This domain is live with this identity (or, with None, gone)."""

    def some(self, domains: dict[int, bytes]) -> None:
        """These domains are live, with these identities: a part of a listing still under way (its
        :meth:`full` report follows), so that their actors start while the daemon answers for the rest."""


class LifecycleSource(Protocol):
    name: str

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        """Report the live domains to ``sink`` until the connection ends (then raise ConnectionLost)."""


T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


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


async def in_chunks(items: list[T], fn: Callable[[list[T]], Awaitable[object]], size: int = CHUNK) -> None:
    """``fn`` for every ``size`` items of ``items``, two parts at a time: while one part's answers are
    handled (and its domains reported), the next one's requests are with the daemon."""
    parts = [items[start : start + size] for start in range(0, len(items), size)]
    await gather_bounded(parts, fn, 2)


@contextmanager
def one_connection_lost() -> Iterator[None]:
    """Around a nursery: a group holding ConnectionLost (and perhaps the Cancelled of siblings) comes out as
    one bare ConnectionLost, which ``except ConnectionLost`` and ``suppress`` catch on Python 3.11 too; a group
    with anything else in it comes out as it is.

    Not ``except*``: an exception raised in an ``except*`` clause is wrapped in a new group together with the
    unhandled rest."""
    try:
        yield
    except BaseExceptionGroup as group:
        lost, rest = group.split(ConnectionLost)
        if lost is None or (rest is not None and rest.split(trio.Cancelled)[1] is not None):
            raise
        raise first_leaf(lost) from None


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in a (nested) group that is not a group."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


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


def owner_of(perms: list[str]) -> int | None:
    try:
        return int(perms[0][1:])
    except (IndexError, ValueError):
        return None


def untrusted_because(perms: list[str]) -> str | None:
    """Why a node with these permissions cannot be trusted as the toolstack's word, or None if it can.

    Trusted: dom0 owns it (first entry ``n0`` or ``r0``: what everybody else gets is nothing or read) and no
    later entry grants another domain write (``w``/``b``). A guest that may write a node may forge it.
    """
    if not perms:
        return "no permissions"
    first = perms[0]
    if first[:1] not in ("n", "r") or owner_of(perms) != 0:
        return "not owned by dom0 with n/r for everybody else"
    for entry in perms[1:]:
        letter, domid = entry[:1], entry[1:]
        if letter not in ("n", "r", "w", "b") or not domid.isdigit():
            return f"unreadable entry {entry[:16]!r}"
        if letter in ("w", "b") and int(domid) != 0:
            return f"domain {int(domid)} may write it"
    return None


@dataclass(frozen=True)
class Untrusted:
    """What :func:`trusted_read` returns for a node some guest may have written: why, with its permissions."""

    why: str


async def trusted_read(xs: XenStore, path: str) -> bytes | Skipped | Untrusted:
    """The node's value if it is the toolstack's word (see :func:`untrusted_because`); Untrusted if a guest may
    have written it; SKIPPED if the daemon would not tell (retried, logged: see :func:`patiently`).

    NotFound (the node does not exist) is raised, as are ConnectionLost and ValueError."""
    perms = await patiently(f"GET_PERMS {path}", lambda: xs.get_perms(path))
    value = await patiently(f"READ {path}", lambda: xs.read(path))
    if isinstance(perms, Skipped) or isinstance(value, Skipped):
        return SKIPPED
    return _trusted(perms, value)


def _trusted(perms: list[str], value: bytes) -> bytes | Untrusted:
    why = untrusted_because(perms)
    if why is not None:
        return Untrusted(f"{why} (permissions {' '.join(perms)[:128]})")
    return value


class _TrustedAnswer:
    """A node's GET_PERMS and READ in a pipeline (see :func:`trusted_reads`)."""

    __slots__ = ("_perms", "_value")

    def __init__(self, pipe: Pipeline, path: str) -> None:
        self._perms, self._value = pipe.get_perms(path), pipe.read(path)

    def judge(self) -> bytes | Untrusted | None:
        """Once the pipeline is sent: the answers judged as :func:`trusted_read` does (None: the node does not
        exist); the error of a request the daemon refused (or that timed out) is raised: ask that node again
        the patient way, with :func:`trusted_read`."""
        perms, value = self._perms, self._value
        if isinstance(perms.error, NotFound) or isinstance(value.error, NotFound):
            return None
        return _trusted(perms.result(), value.result())


async def trusted_reads(xs: XenStore, paths: list[str]) -> list[bytes | Skipped | Untrusted | None]:
    """:func:`trusted_read` of many nodes, pipelined (None where a node does not exist); the few the daemon
    refused are asked again one by one, with retries. ConnectionLost and ValueError are raised."""
    pipe = xs.pipeline()
    asked = [_TrustedAnswer(pipe, path) for path in paths]
    await pipe.send()
    results: list[bytes | Skipped | Untrusted | None] = []
    again: list[int] = []
    for index, answer in enumerate(asked):
        try:
            results.append(answer.judge())
        except XenStoreError:
            results.append(SKIPPED)
            again.append(index)

    async def patient(index: int) -> None:
        try:
            results[index] = await trusted_read(xs, paths[index])
        except NotFound:
            results[index] = None

    await gather_bounded(again, patient)
    return results


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
