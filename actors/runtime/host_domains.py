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
no guest's write reaches the registry. The first report on each connection is a full listing.

- With watch depth (the connection has the WATCHDEPTH feature: C xenstored 4.22, the embedded xenstored), the
  watches have depth 1 and each event names its domain (``@introduceDomain/<domid>``): only that domain is
  read. ``@releaseDomain/<domid>`` fires on shutdown as well as on destruction: the domain is gone once it is
  no longer introduced.
- Without (4.17, oxenstored, the xenbus device), the events name no domain: an introduction costs one listing
  of ``/local/domain`` (DIRECTORY, or a few DIRECTORY_PART rounds) and requests for the new names only; a
  release costs one pipelined round of IS_DOMAIN_INTRODUCED over the live domains.

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
from ..xs.daemon import Feature
from ..xs.errors import (
    InvalidArgument,
    InvalidDomid,
    NotFound,
    OperationFailed,
    PermissionDenied,
    Unsupported,
    XenStoreError,
)
from ..xs.subscription import WatchEvent
from ..xs.wire import check_domid
from .source import LifecycleSink, Skipped, gather_bounded, patiently, untrusted_because

__all__ = ["DomainsSource"]

INTRODUCE = "@introduceDomain"
RELEASE = "@releaseDomain"
FAN_OUT = 4096  # requests in flight at once in a round (dom0's socket has no outstanding-request quota)


class _Pending:
    """What the special watches said since the registry last looked: a domid-less event (no watch depth) is a
    flag, a depth-1 event names its domain."""

    def __init__(self) -> None:
        self.depth: int | None = None
        self.wake = trio.Event()
        self.introduced = self.released = False
        self.named_in: set[int] = set()
        self.named_out: set[int] = set()

    def mark(self, event: WatchEvent) -> None:
        into = event.path.startswith(INTRODUCE)
        if event.domid is not None:
            (self.named_in if into else self.named_out).add(event.domid)
        elif self.depth is not None:
            return  # with depth, only the registration event names no domain
        elif into:
            self.introduced = True
        else:
            self.released = True
        self.wake.set()

    def take(self) -> tuple[bool, bool, set[int], set[int]]:
        """What was said, forgotten here."""
        taken = (self.introduced, self.released, self.named_in, self.named_out)
        self.introduced = self.released = False
        self.named_in, self.named_out = set(), set()
        self.wake = trio.Event()
        return taken


class DomainsSource:
    """Follows a stock host's domains (see the module docstring). The first report on each connection is a full
    listing; after that, each introduction or release is reported domain by domain."""

    name = "domains"

    def __init__(self, base: str = "/local/domain") -> None:
        self.base = base
        self._warned: dict[int, str] = {}
        self._live: dict[int, bytes] = {}  # what the sink was told on this connection
        self.rounds = 0  # release rounds over every live domain (without watch depth)
        self.watch_depth: int | None = None  # 1 on a daemon with WATCHDEPTH, once following

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
        return await self._listed(xs, domids)

    async def _listed(self, xs: XenStore, domids: list[int]) -> dict[int, bytes]:
        """The introduced ones of ``domids`` with their identities; one the daemon would not tell about keeps
        the identity the sink was last told, if any."""
        found, unknown = await self._examine(xs, domids)
        for domid in unknown & set(self._live):
            found[domid] = self._live[domid]
        return found

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        pending = _Pending()
        tokens = [(INTRODUCE, "mtw/lifecycle/introduce"), (RELEASE, "mtw/lifecycle/release")]
        try:
            await self._watch(xs, tokens, pending)
            domids = await self._names_until_listed(xs)
            # The listing's reply came after the watches' initial events, and after any event of a change made
            # before the daemon listed: the listing covers them all.
            pending.take()
            found = await self._listed(xs, domids)
            self._live = dict(found)
            sink.full(found)
            while True:
                await pending.wake.wait()
                introduced, released, named_in, named_out = pending.take()
                if released:
                    await self._released(xs, sink)
                if named_out:
                    await self._released_named(xs, sink, named_out)
                if introduced:
                    await self._introduced_new(xs, sink)
                if named_in:
                    await self._introduced_named(xs, sink, named_in)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for path, token in tokens:
                    if xs.is_lost:
                        break
                    with suppress(XenStoreError):
                        await xs.remove_watch(path, token)

    async def _watch(self, xs: XenStore, tokens: list[tuple[str, str]], pending: _Pending) -> None:
        """Depth-1 special watches where the daemon has WATCHDEPTH (Xen 4.22: events name the domain), else
        plain ones (4.17, oxenstored, xenbus)."""
        depth: int | None = None
        with suppress(Unsupported, InvalidArgument, PermissionDenied, OperationFailed):
            if (await xs.capabilities()).features & Feature.WATCHDEPTH:
                pending.depth = 1
                await xs.add_watch(tokens[0][0], tokens[0][1], pending.mark, depth=1)
                depth = 1
        self.watch_depth = pending.depth = depth
        logger.info(
            "domains lifecycle: {}",
            "depth-1 @introduceDomain/@releaseDomain watches (events name the domain)"
            if depth
            else "@introduceDomain/@releaseDomain watches without depth (a release checks every live domain)",
        )
        for path, token in tokens[1 if depth else 0 :]:
            await xs.add_watch(path, token, pending.mark, depth=depth)

    async def _released_named(self, xs: XenStore, sink: LifecycleSink, domids: set[int]) -> None:
        """Depth-1 ``@releaseDomain/<domid>`` (shutdown or destroy): gone once no longer introduced."""
        await self._report_gone(xs, sink, sorted(domids & set(self._live)))

    async def _report_gone(self, xs: XenStore, sink: LifecycleSink, domids: list[int]) -> None:
        """Of ``domids``, report those no longer introduced as gone (one pipelined round)."""
        gone: list[int] = []

        async def check(domid: int) -> None:
            if await self._introduced(xs, domid) is False:
                gone.append(domid)

        await gather_bounded(domids, check, FAN_OUT)
        for domid in sorted(gone):
            self._report(sink, domid, None)

    async def _introduced_named(self, xs: XenStore, sink: LifecycleSink, domids: set[int]) -> None:
        """Depth-1 ``@introduceDomain/<domid>``: only that domain is read (again, if its domid was reused)."""
        found, _ = await self._examine(xs, sorted(domids))
        for domid, identity in sorted(found.items()):
            if self._live.get(domid) != identity:
                self._report(sink, domid, identity)

    async def _released(self, xs: XenStore, sink: LifecycleSink) -> None:
        """One pipelined round of IS_DOMAIN_INTRODUCED over the live domains; the ones no longer introduced
        are gone."""
        self.rounds += 1
        await self._report_gone(xs, sink, list(self._live))

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
