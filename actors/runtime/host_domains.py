"""The ``domains`` lifecycle: a stock Xen host, whose libxl writes no mtwatch nodes.

What is trusted, and why (a guest must not be able to make, keep alive, stop or rename a domain):

- **Liveness** is the daemon's word: a domain is live while IS_DOMAIN_INTRODUCED says so. Only dom0 introduces
  and releases domains; a guest cannot forge either.
- **Candidates** are the names under ``/local/domain`` (libxl writes a domain's nodes, then introduces it). A
  guest cannot create a node there (it is dom0's, ``n0``); a name that is no introduced domain is ignored.
- **Identity** is ``/local/domain/<domid>/vm`` only when the guest cannot have written it (dom0 owns it and no
  other domain may write it, as libxl makes it: ``n0 r<domid>``); otherwise it is empty, with one warning.
  The guest's own ``name`` is never read.

Followed with two watches, ``@introduceDomain`` and ``@releaseDomain``, and no watch on ``/local/domain``, so
no guest's write reaches the registry. Without watch depth the special events do not name a domain: an
introduction costs one listing of ``/local/domain`` (DIRECTORY, or a few DIRECTORY_PART rounds) and requests
for the new names only; a release costs one pipelined round of IS_DOMAIN_INTRODUCED over the live domains.

A domid that is released and introduced again before the registry handles the first event keeps its old
identity (Xen hands domids out in increasing order and wraps only after 32,751 of them, so this needs a
wrap-around within one event's handling).
"""

from __future__ import annotations

import itertools
from contextlib import suppress

import trio
from loguru import logger

from ..xs.client import XenStore
from ..xs.errors import InvalidDomid, NotFound, XenStoreError
from ..xs.subscription import WatchEvent
from ..xs.wire import check_domid
from .source import LifecycleSink, Skipped, gather_bounded, patiently, untrusted_because

__all__ = ["DomainsSource"]

INTRODUCE = "@introduceDomain"
RELEASE = "@releaseDomain"
FAN_OUT = 4096  # requests in flight at once in a round (dom0's socket has no outstanding-request quota)


class DomainsSource:
    """Follows a stock host's domains (see the module docstring). The first report on each connection is a full
    listing; after that, each introduction or release is reported domain by domain."""

    name = "domains"

    def __init__(self, base: str = "/local/domain") -> None:
        self.base = base
        self._warned: dict[int, str] = {}
        self._live: dict[int, bytes] = {}  # what the sink was told on this connection
        self.rounds = 0  # release rounds done (for tests and metrics)

    # -- what a domain is ----------------------------------------------------------------------------------

    async def identity(self, xs: XenStore, domid: int) -> bytes:
        """``/local/domain/<domid>/vm`` if the guest cannot have written it (dom0's node, writable by no other
        domain, as libxl makes it), else empty (warned once): a guest must not choose its own identity."""
        path = f"{self.base}/{domid}/vm"
        try:
            perms = await patiently(f"GET_PERMS {path}", lambda: xs.get_perms(path))
            value = await patiently(f"READ {path}", lambda: xs.read(path))
        except NotFound:
            return b""
        if isinstance(perms, Skipped) or isinstance(value, Skipped):
            return b""
        why = untrusted_because(perms)
        if why is not None:
            if self._warned.get(domid) != why:
                self._warned[domid] = why
                logger.warning(
                    "not trusting {} as domain {}'s identity: {} (permissions {})",
                    path,
                    domid,
                    why,
                    " ".join(perms)[:128],
                )
            return b""
        self._warned.pop(domid, None)
        return value

    async def _introduced(self, xs: XenStore, domid: int) -> bool | None:
        """IS_DOMAIN_INTRODUCED, or None when the daemon would not say (then the domain keeps its state)."""
        answer = await patiently(f"IS_DOMAIN_INTRODUCED {domid}", lambda: xs.is_domain_introduced(domid))
        return None if isinstance(answer, Skipped) else answer

    async def _names(self, xs: XenStore) -> list[int] | None:
        """The guest domids named under the base (None: the daemon would not list it)."""
        try:
            names = await patiently(f"DIRECTORY {self.base}", lambda: xs.ls(self.base))
        except NotFound:
            return []
        if isinstance(names, Skipped):
            return None
        domids = []
        for name in names:
            with suppress(InvalidDomid):
                domids.append(check_domid(name, guest_only=True))
        return domids

    async def _names_until_listed(self, xs: XenStore) -> list[int]:
        for delay in itertools.count(1):  # the daemon refused (logged): try again, less often
            domids = await self._names(xs)
            if domids is not None:
                return domids
            await trio.sleep(min(delay, 5))
        raise AssertionError("unreachable")

    async def _examine(self, xs: XenStore, domids: list[int]) -> tuple[dict[int, bytes], set[int]]:
        """Of ``domids``: the introduced ones with their identities, and those the daemon would not tell."""
        found: dict[int, bytes] = {}
        unknown: set[int] = set()

        async def examine(domid: int) -> None:
            introduced = await self._introduced(xs, domid)
            if introduced is None:
                unknown.add(domid)
            elif introduced:
                found[domid] = await self.identity(xs, domid)

        await gather_bounded(domids, examine, FAN_OUT)
        return found, unknown

    # -- following -----------------------------------------------------------------------------------------

    async def listing(self, xs: XenStore) -> dict[int, bytes] | None:
        """Every live domain with its identity (None: the daemon would not list ``/local/domain``)."""
        domids = await self._names(xs)
        if domids is None:
            return None
        found, unknown = await self._examine(xs, domids)
        for domid in unknown & set(self._live):
            found[domid] = self._live[domid]
        return found

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        introduced = trio.Event()
        released = trio.Event()
        wake = trio.Event()

        def mark(event: WatchEvent) -> None:
            (introduced if event.path.startswith(INTRODUCE) else released).set()
            wake.set()

        tokens = [(INTRODUCE, "mtw/lifecycle/introduce"), (RELEASE, "mtw/lifecycle/release")]
        try:
            for path, token in tokens:
                await xs.add_watch(path, token, mark)
            domids = await self._names_until_listed(xs)
            # The listing's reply came after the watches' initial events, and after any event of a change made
            # before the daemon listed: the listing covers them all.
            introduced, released, wake = trio.Event(), trio.Event(), trio.Event()
            found, unknown = await self._examine(xs, domids)
            for domid in unknown & set(self._live):
                found[domid] = self._live[domid]
            self._live = dict(found)
            sink.full(found)
            while True:
                await wake.wait()
                wake = trio.Event()
                if released.is_set():
                    released = trio.Event()
                    await self._released(xs, sink)
                if introduced.is_set():
                    introduced = trio.Event()
                    await self._introduced_new(xs, sink)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for path, token in tokens:
                    if xs.is_lost:
                        break
                    with suppress(XenStoreError):
                        await xs.remove_watch(path, token)

    async def _released(self, xs: XenStore, sink: LifecycleSink) -> None:
        """One pipelined round of IS_DOMAIN_INTRODUCED over the live domains; the ones no longer introduced
        are gone."""
        self.rounds += 1
        gone: list[int] = []

        async def check(domid: int) -> None:
            if await self._introduced(xs, domid) is False:
                gone.append(domid)

        await gather_bounded(list(self._live), check, FAN_OUT)
        for domid in sorted(gone):
            self._report(sink, domid, None)

    async def _introduced_new(self, xs: XenStore, sink: LifecycleSink) -> None:
        """One listing of the base; only names that are no live domain are examined."""
        domids = await self._names(xs)
        if domids is None:
            return
        found, _ = await self._examine(xs, [d for d in domids if d not in self._live])
        for domid, identity in sorted(found.items()):
            self._report(sink, domid, identity)

    def _report(self, sink: LifecycleSink, domid: int, identity: bytes | None) -> None:
        if identity is None:
            self._live.pop(domid, None)
            self._warned.pop(domid, None)
        else:
            self._live[domid] = identity
        sink.one(domid, identity)
