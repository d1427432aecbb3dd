"""Where the set of live guest domains comes from.

- ``mtwatch``: the xenwatch-multithreading protocol. The toolstack makes ``/local/domain/0/mtwatch/<domid>``
  (perms ``n0``) when it creates a domain and removes it as its last XenStore operation when it destroys it.
- ``domains``: a stock Xen host, whose libxl writes no mtwatch nodes. A domain is live while
  ``/local/domain/<domid>`` exists and IS_DOMAIN_INTRODUCED says so; its identity is ``/local/domain/<domid>/vm``.
  Followed through ``@introduceDomain``, ``@releaseDomain`` and the children of ``/local/domain``.

A source reports to a :class:`LifecycleSink`: the whole set after a full listing, or one domain after an event
that names it. Both run on one connection and end when it is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Protocol, TypeVar

import trio
from loguru import logger

from ..xs.client import XenStore
from ..xs.errors import InvalidDomid, NotFound, XenStoreError
from ..xs.subscription import WatchEvent
from ..xs.wire import check_domid

__all__ = ["DomainsSource", "LifecycleSink", "LifecycleSource", "MtwatchSource", "owner_of"]

MTWATCH_ROOT = "/local/domain/0/mtwatch"


class LifecycleSink(Protocol):
    def full(self, domains: dict[int, bytes]) -> None:
        """Exactly these domains are live now, with these identities."""

    def one(self, domid: int, identity: bytes | None) -> None:
        """This domain is live with this identity (or, with None, gone)."""


class LifecycleSource(Protocol):
    name: str

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        """Report the live domains to ``sink`` until the connection ends."""


def owner_of(perms: list[str]) -> int | None:
    try:
        return int(perms[0][1:])
    except (IndexError, ValueError):
        return None


T = TypeVar("T")


async def gather_bounded(items: Iterable[T], fn: Callable[[T], Awaitable[object]], limit: int = 64) -> None:
    """Run ``fn`` for every item, at most ``limit`` at a time (requests pipelined on the one connection)."""
    limiter = trio.CapacityLimiter(limit)

    async def one(item: T) -> None:
        async with limiter:
            await fn(item)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)


class MtwatchSource:
    """Follows ``/local/domain/0/mtwatch``: lists the whole tree on the watch's initial event (and whenever the
    root itself fires), and reads only the named child on any other event."""

    name = "mtwatch"

    def __init__(self, root: str = MTWATCH_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self._warned: set[str] = set()

    def _child(self, path: str) -> str | None:
        prefix = self.root + "/"
        if not path.startswith(prefix):
            return None
        return path[len(prefix) :].split("/", 1)[0] or None

    def _domid(self, name: str) -> int | None:
        try:
            return check_domid(name, guest_only=True)
        except InvalidDomid as exc:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning("refusing mtwatch node {!r}: {}", name[:64], exc)
            return None

    async def _examine(self, xs: XenStore, name: str, domid: int) -> bytes | None:
        """The node's identity if it is a domain's node (owned by dom0), else None."""
        path = f"{self.root}/{name}"
        try:
            value = await xs.read(path)
            perms = await xs.get_perms(path)
        except NotFound:
            self._warned.discard(name)
            return None
        if owner_of(perms) != 0:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "refusing mtwatch node {}: owned by domain {}, not dom0", path, owner_of(perms)
                )
            return None
        return value

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        async with xs.watch(self.root, token="mtw/registry") as events:
            async for event in events:
                name = self._child(event.path)
                if name is None:
                    await self._reconcile(xs, sink)
                    continue
                domid = self._domid(name)
                if domid is not None:
                    sink.one(domid, await self._examine(xs, name, domid))

    async def _reconcile(self, xs: XenStore, sink: LifecycleSink) -> None:
        sink.full(await self.listing(xs))

    async def listing(self, xs: XenStore) -> dict[int, bytes]:
        """Every domain announced under the root, with its identity (DIRECTORY_PART when large)."""
        try:
            names = await xs.ls(self.root)
        except NotFound:
            names = []
        self._warned &= set(names)
        live: dict[int, bytes] = {}

        async def examine(name: str) -> None:
            domid = self._domid(name)
            if domid is not None:
                identity = await self._examine(xs, name, domid)
                if identity is not None:
                    live[domid] = identity

        await gather_bounded(names, examine)
        return live


class DomainsSource:
    """Follows a stock host's domains (see the module docstring). Every relevant event leads to one full
    listing; events that arrive meanwhile are folded into the next one."""

    name = "domains"
    SPECIAL = ("@introduceDomain", "@releaseDomain")

    def __init__(self, base: str = "/local/domain") -> None:
        self.base = base

    def _relevant(self, path: str) -> bool:
        if path in self.SPECIAL or path == self.base:
            return True
        if not path.startswith(self.base + "/"):
            return False
        rest = path[len(self.base) + 1 :].split("/")
        return len(rest) == 1 or (len(rest) == 2 and rest[1] == "vm")

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        dirty = trio.Event()
        dirty.set()

        def mark(event: WatchEvent) -> None:
            if self._relevant(event.path):
                dirty.set()

        tokens = [(path, f"mtw/lifecycle/{i}") for i, path in enumerate((*self.SPECIAL, self.base))]
        try:
            for path, token in tokens:
                await xs.add_watch(path, token, mark)
            async with trio.open_nursery() as nursery:

                async def until_lost() -> None:
                    await xs.wait_lost()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_lost)
                while True:
                    await dirty.wait()
                    dirty = trio.Event()
                    sink.full(await self.listing(xs))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for path, token in tokens:
                    if xs.is_lost:
                        break
                    with suppress(XenStoreError):
                        await xs.remove_watch(path, token)

    async def listing(self, xs: XenStore) -> dict[int, bytes]:
        try:
            names = await xs.ls(self.base)
        except NotFound:
            return {}
        live: dict[int, bytes] = {}

        async def examine(name: str) -> None:
            try:
                domid = check_domid(name, guest_only=True)
            except InvalidDomid:
                return
            if not await xs.is_domain_introduced(domid):
                return
            try:
                live[domid] = await xs.read(f"{self.base}/{name}/vm")
            except NotFound:
                live[domid] = b""

        await gather_bounded(names, examine)
        return live
