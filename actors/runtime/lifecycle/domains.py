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
  of ``/local/domain`` (DIRECTORY, or a few DIRECTORY_PART rounds) and requests for the new names only. A
  release is looked for among the *dying* domains first, then by one round of IS_DOMAIN_INTRODUCED over the
  live domains, sent a few at a time while nothing else waits (see :mod:`.release`). A domain is dying
  once its ``vm`` node is gone while it is still introduced: each live domain's ``vm`` is watched (a guest
  cannot write, remove or re-permission it, nor the directory above it: no guest makes that watch fire), and
  libxl removes the domain's directory before it destroys the domain. A toolstack that releases first is
  found by the round; one that removes the directory after is found at once when it does.

A domain the daemon would not tell about (its IS_DOMAIN_INTRODUCED or ``vm`` refused even after retries) keeps
the state the registry last reported, and is asked about again after a backoff (0.25 s doubling to 5 s), as is
a listing of ``/local/domain`` it refused.

A domid that is released and introduced again before the registry notices the release keeps its old identity
unless its ``vm`` changes meanwhile (Xen hands domids out in increasing order and wraps only after 32,751 of
them, so this needs a wrap-around within one round).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from contextlib import suppress

import trio

from ..._log import logger
from ...xs.client import XenStore
from ...xs.errors import (
    ConnectionLost,
    InvalidArgument,
    InvalidDomid,
    NotFound,
    OperationFailed,
    PermissionDenied,
    Unsupported,
    XenStoreError,
)
from ...xs.wire import Feature, check_domid
from .protocol import LifecycleSink
from .release import FAN_OUT, INTRODUCE, RELEASE, Pending, ReleaseRound
from .requests import Skipped, gather_bounded, in_chunks, patiently, report_in_batches
from .trust import Untrusted, trusted_read, trusted_reads

__all__ = ["DomainsSource"]

VM_TOKEN = "mtw/lifecycle/vm"
RETRY_FIRST = 0.25  # seconds before asking again about a domain the daemon would not tell about
RETRY_MAX = 5.0


class DomainsSource:
    """Follows a stock host's domains (see the module docstring). The first report on each connection is a full
    listing; after that, each introduction or release is reported domain by domain."""

    name = "domains"

    def __init__(self, base: str = "/local/domain") -> None:
        self.base = base
        self._warned: dict[int, str] = {}
        self._live: dict[int, bytes] = {}  # what the sink was told on this connection
        self.watch_depth: int | None = None  # 1 on a daemon with WATCHDEPTH, once following
        self.release = ReleaseRound(self._live)
        self._vm_watched: set[int] = set()
        self._unknown: set[int] = set()  # domains the daemon would not tell about: asked again
        self._relist = False  # a listing of the base was refused: asked again
        self._retry_in: float | None = None
        self._retry_at: float | None = None

    @property
    def rounds(self) -> int:
        """Release rounds over every live domain (without watch depth) so far."""
        return self.release.rounds

    # -- what a domain is ----------------------------------------------------------------------------------

    async def identity(self, xs: XenStore, domid: int) -> bytes | Skipped | None:
        """``/local/domain/<domid>/vm`` if the guest cannot have written it (dom0's node, writable by no other
        domain, as libxl makes it); empty (warned once) if it may have: a guest must not choose its own
        identity. None if there is no such node, SKIPPED if the daemon would not tell."""
        try:
            value = await trusted_read(xs, self._vm(domid))
        except NotFound:
            return None
        return value if isinstance(value, Skipped) else self._identity(domid, value)

    def _identity(self, domid: int, value: bytes | Untrusted) -> bytes:
        if isinstance(value, Untrusted):
            if self._warned.get(domid) != value.why:
                self._warned[domid] = value.why
                logger.warning(
                    "not trusting {} as domain {}'s identity: {}", self._vm(domid), domid, value.why
                )
            return b""
        self._warned.pop(domid, None)
        return value

    def _vm(self, domid: int) -> str:
        return f"{self.base}/{domid}/vm"

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

    async def _examine(self, xs: XenStore, domids: list[int]) -> tuple[dict[int, bytes | None], set[int]]:
        """Of ``domids``: the introduced ones with their ``vm`` (None: there is none), and those the daemon
        would not tell about. The rest are not introduced.

        One pipeline asks IS_DOMAIN_INTRODUCED of every domain, then :func:`trusted_reads` the ``vm`` node of
        the introduced ones (nothing is asked of a domain already gone); a domain whose IS_DOMAIN_INTRODUCED
        the daemon refused is asked again one request at a time, with retries."""
        found: dict[int, bytes | None] = {}
        unknown: set[int] = set()
        again: list[int] = []
        pipe = xs.pipeline()
        asked = [(domid, pipe.is_domain_introduced(domid)) for domid in domids]
        await pipe.send()
        introduced: list[int] = []
        for domid, answer in asked:
            try:
                if answer.result():
                    introduced.append(domid)
            except XenStoreError:
                again.append(domid)
        values = await trusted_reads(xs, [self._vm(domid) for domid in introduced])
        for domid, value in zip(introduced, values, strict=True):
            if isinstance(value, Skipped):
                unknown.add(domid)  # refused even after retries (logged)
            else:
                found[domid] = None if value is None else self._identity(domid, value)

        async def examine(domid: int) -> None:
            said = await self._introduced(xs, domid)
            if said is None:
                unknown.add(domid)
            elif said:
                identity = await self.identity(xs, domid)
                if isinstance(identity, Skipped):
                    unknown.add(domid)
                else:
                    found[domid] = identity

        await gather_bounded(again, examine, FAN_OUT)
        return found, unknown

    # -- following -----------------------------------------------------------------------------------------

    async def listing(self, xs: XenStore) -> dict[int, bytes] | None:
        """Every live domain with its identity (None: the daemon would not list ``/local/domain``)."""
        domids = await self._names(xs)
        if domids is None:
            return None
        return await self._listed(xs, domids)

    async def _listed(
        self, xs: XenStore, domids: list[int], early: Callable[[dict[int, bytes]], None] | None = None
    ) -> dict[int, bytes]:
        """The introduced ones of ``domids`` with their identities; one the daemon would not tell about keeps
        the identity the sink was last told, if any, and is asked about again later. Examined a part at a
        time; each part's live domains go to ``early`` as it is done."""
        found: dict[int, bytes | None] = {}
        unknown: set[int] = set()

        async def examine(part: list[int]) -> None:
            found_here, unknown_here = await self._examine(xs, part)
            found.update(found_here)
            unknown.update(unknown_here)
            if early is not None and found_here:
                await report_in_batches(early, {domid: vm or b"" for domid, vm in found_here.items()})

        await in_chunks(domids, examine)
        listed = {domid: vm or b"" for domid, vm in found.items()}
        for domid in unknown:
            if domid in self._live:
                listed[domid] = self._live[domid]
        self._unknown = unknown
        return listed

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        pending = Pending(self.base)
        tokens = [(INTRODUCE, "mtw/lifecycle/introduce"), (RELEASE, "mtw/lifecycle/release")]
        self._restart()
        try:
            await self._watch(xs, tokens, pending)
            domids = await self._names_until_listed(xs)
            # The listing's reply came after the watches' initial events, and after any event of a change made
            # before the daemon listed: the listing covers them all.
            pending.take()
            found = await self._listed(xs, domids, sink.some)
            self._live.clear()
            self._live.update(found)
            sink.full(found)
            self._schedule_retry()
            self.release.to_watch.extend(sorted(found))  # while no event waits: the domains run meanwhile
            await self._serve(xs, sink, pending)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                tokens += [(self._vm(domid), f"{VM_TOKEN}/{domid}") for domid in self._vm_watched]
                self._vm_watched.clear()
                if not xs.is_lost:
                    await gather_bounded(tokens, lambda watch: _unwatch(xs, *watch), FAN_OUT)

    def _restart(self) -> None:
        """Forget what belonged to the last connection (its watches, its pending round and retries)."""
        self._vm_watched.clear()
        self.release.restart()
        self._relist = False
        self._retry_in = self._retry_at = None

    async def _serve(self, xs: XenStore, sink: LifecycleSink, pending: Pending) -> None:
        """Events first; while none waits, the first listing's ``vm`` watches, then the release round, a few
        at a time; retries when due."""
        while True:
            if not pending.wake.is_set():
                if self.release.to_watch:
                    await self._watch_vms(xs, pending, self.release.next_to_watch())
                    continue
                if self.release.unchecked:
                    await self._report_gone(xs, sink, self.release.next_batch())
                    continue
                with trio.move_on_after(self._retry_after()):
                    await pending.wake.wait()
            said = pending.take()
            if said.touched:
                await self._touched(xs, sink, said.touched)
            if said.released:
                await self._report_gone(xs, sink, self.release.start())
            if said.named_out:
                await self._report_gone(xs, sink, sorted(said.named_out & set(self._live)))
            if said.introduced:
                await self._introduced_new(xs, sink, pending)
            if said.named_in:
                await self._learn(xs, sink, pending, sorted(said.named_in))
            if self._retry_at is not None and self._retry_at <= trio.current_time():
                await self._retry(xs, sink, pending)

    async def _watch(self, xs: XenStore, tokens: list[tuple[str, str]], pending: Pending) -> None:
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
            else "@introduceDomain/@releaseDomain watches without depth, and each domain's vm node",
        )
        for path, token in tokens[1 if depth else 0 :]:
            await xs.add_watch(path, token, pending.mark, depth=depth)

    async def _watch_vms(self, xs: XenStore, pending: Pending, domids: list[int]) -> None:
        """Without watch depth: watch each new domain's ``vm`` node, whose removal makes it dying. A WATCH the
        daemon refuses leaves that domain to the release round."""
        if self.watch_depth is not None:
            return
        new = [domid for domid in domids if domid not in self._vm_watched]
        self._vm_watched.update(new)

        async def watch(domid: int) -> None:
            try:
                await xs.add_watch(self._vm(domid), f"{VM_TOKEN}/{domid}", pending.mark_vm)
            except (ConnectionLost, ValueError):
                raise
            except XenStoreError as exc:
                self._vm_watched.discard(domid)
                logger.debug("registry: cannot watch {} ({}): its release is left to the round", domid, exc)

        await gather_bounded(new, watch, FAN_OUT)

    async def _touched(self, xs: XenStore, sink: LifecycleSink, domids: set[int]) -> None:
        """A live domain's ``vm`` changed (only dom0 can do that): gone if no longer introduced, dying if its
        ``vm`` is gone, renamed if its ``vm`` says something else (a reused domid)."""
        live = sorted(domids & set(self._live))
        found, unknown = await self._examine(xs, live)
        gone = [domid for domid in live if domid not in found and domid not in unknown]
        await self._report_gone(xs, sink, gone)
        for domid, vm in found.items():
            if vm is None:
                self.release.dying.add(domid)
            elif vm != self._live[domid]:
                self.release.dying.discard(domid)
                self._report(sink, domid, vm)
        self.release.dying.update(unknown)  # checked first at the next release; the round checks it anyway

    async def _report_gone(self, xs: XenStore, sink: LifecycleSink, domids: list[int]) -> None:
        """Of ``domids``, report those no longer introduced as gone (one pipelined round), then unwatch them."""
        gone: list[int] = []

        async def check(domid: int) -> None:
            if await self._introduced(xs, domid) is False:
                gone.append(domid)

        await gather_bounded(domids, check, FAN_OUT)
        gone.sort()
        for domid in gone:
            if domid in self._live:
                self._report(sink, domid, None)
        await self._unwatch_vms(xs, gone)

    async def _unwatch_vms(self, xs: XenStore, domids: list[int]) -> None:
        unwatched = [domid for domid in domids if domid in self._vm_watched and domid not in self._live]
        self._vm_watched.difference_update(unwatched)
        await gather_bounded(unwatched, lambda domid: _unwatch(xs, self._vm(domid), f"{VM_TOKEN}/{domid}"))

    async def _introduced_new(self, xs: XenStore, sink: LifecycleSink, pending: Pending) -> None:
        """One listing of the base; only names that are no live domain are examined."""
        domids = await self._names(xs)
        self._relist = domids is None
        if domids is None:
            self._schedule_retry()
            return
        await self._learn(xs, sink, pending, [domid for domid in domids if domid not in self._live])

    async def _learn(self, xs: XenStore, sink: LifecycleSink, pending: Pending, domids: list[int]) -> None:
        """Examine ``domids``: report each introduced one whose identity is not the one the sink was told;
        remember the ones the daemon would not tell about, to ask again. Without watch depth, their ``vm``
        watches are sent with the examination, so a domain is watched once reported (its directory may go
        right after); the ones found not introduced are unwatched."""
        examined: list[tuple[dict[int, bytes | None], set[int]]] = []

        async def examine_or_watch(examine: bool) -> None:
            if examine:
                examined.append(await self._examine(xs, domids))
            else:
                await self._watch_vms(xs, pending, domids)

        await gather_bounded([True, False], examine_or_watch)
        found, unknown = examined[0]
        self._unknown.difference_update(domids)
        self._unknown.update(unknown)
        for domid, vm in sorted(found.items()):
            if self._live.get(domid) != (vm or b""):
                self._report(sink, domid, vm or b"")
        self._schedule_retry()
        await self._unwatch_vms(
            xs, [domid for domid in domids if domid not in found and domid not in unknown]
        )

    async def _retry(self, xs: XenStore, sink: LifecycleSink, pending: Pending) -> None:
        self._retry_at = None
        if self._relist:
            await self._introduced_new(xs, sink, pending)
        await self._learn(xs, sink, pending, sorted(self._unknown))

    def _schedule_retry(self) -> None:
        """Ask again after a backoff while something is unknown (doubling while the daemon keeps refusing)."""
        if not self._unknown and not self._relist:
            self._retry_in = self._retry_at = None
        elif self._retry_at is None:
            self._retry_in = RETRY_FIRST if self._retry_in is None else min(self._retry_in * 2, RETRY_MAX)
            self._retry_at = trio.current_time() + self._retry_in

    def _retry_after(self) -> float:
        return math.inf if self._retry_at is None else max(0.0, self._retry_at - trio.current_time())

    def _report(self, sink: LifecycleSink, domid: int, identity: bytes | None) -> None:
        if identity is None:
            self._live.pop(domid, None)
            self._warned.pop(domid, None)
            self.release.dying.discard(domid)
        else:
            self._live[domid] = identity
        sink.one(domid, identity)


async def _unwatch(xs: XenStore, path: str, token: str) -> None:
    with suppress(XenStoreError):  # a watch the daemon no longer has, or a lost connection: nothing to undo
        await xs.remove_watch(path, token)
