"""The ``mtwatch`` lifecycle: the xenwatch-multithreading protocol. The toolstack makes
``/local/domain/0/mtwatch/<domid>`` (perms ``n0``) when it creates a domain and removes it as its last XenStore
operation when it destroys it.

A node is the toolstack's word only if no guest can have written it: dom0 owns it and no other domain may write
it (see :func:`~actors.runtime.lifecycle.trust.untrusted_because`). Any other node is refused, with one warning naming it
and its permissions; a domain whose node becomes writable (SET_PERMS fires the watch) is stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AsyncExitStack

import trio

from ..._log import logger
from ...xs.client import XenStore
from ...xs.errors import InvalidDomid, NotFound
from ...xs.subscription import Subscription
from ...xs.wire import check_domid
from ..slices import in_slices
from .protocol import MTWATCH_ROOT, LifecycleSink
from .requests import Skipped, in_chunks, patiently, report_in_batches, until_watched
from .trust import Untrusted, trusted_read, trusted_reads

__all__ = ["MtwatchSource"]

RETRY_MAX = 5.0  # seconds between re-listings while the daemon keeps refusing requests


class MtwatchSource:
    """Follows ``/local/domain/0/mtwatch``: lists the whole tree on the watch's initial event (and whenever the
    root itself fires), and reads only the named child on any other event.

    A request the daemon answers with an error is retried, then skipped (logged): the domain keeps the state it
    was last reported in, and the tree is listed again after a backoff until every node could be read.
    """

    name = "mtwatch"

    def __init__(self, root: str = MTWATCH_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self._warned: dict[str, str] = {}  # node name -> why it was refused (warned once per reason)
        self._reported: dict[int, bytes] = {}  # what the sink was told last
        self._retry_in: float | None = None  # set while something was skipped

    def _child(self, path: str) -> str | None:
        prefix = self.root + "/"
        if not path.startswith(prefix):
            return None
        return path[len(prefix) :].split("/", 1)[0] or None

    def _refuse(self, name: str, why: str) -> None:
        if self._warned.get(name) != why:
            self._warned[name] = why
            logger.warning("refusing mtwatch node {}/{}: {}", self.root, name[:64], why)

    def _domid(self, name: str) -> int | None:
        try:
            return check_domid(name, guest_only=True)
        except InvalidDomid as exc:
            self._refuse(name, str(exc))
            return None

    async def _examine(self, xs: XenStore, name: str) -> bytes | Skipped | None:
        """The node's identity if it is the toolstack's word, None if it is gone or refused, SKIPPED if the
        daemon would not tell."""
        try:
            value = await trusted_read(xs, f"{self.root}/{name}")
        except NotFound:
            value = None
        return self._judged(name, value)

    def _judged(self, name: str, value: bytes | Skipped | Untrusted | None) -> bytes | Skipped | None:
        if value is None:
            self._warned.pop(name, None)
            return None
        if isinstance(value, Untrusted):
            self._refuse(name, value.why)
            return None
        if not isinstance(value, Skipped):
            self._warned.pop(name, None)
        return value

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        while True:
            async with AsyncExitStack() as stack:
                events = await until_watched(
                    self.root, lambda: stack.enter_async_context(xs.watch(self.root, token="mtw/registry"))
                )
                await self._serve(xs, sink, events)

    async def _serve(self, xs: XenStore, sink: LifecycleSink, events: Subscription) -> None:
        while True:
            event = None
            with trio.move_on_after(math.inf if self._retry_in is None else self._retry_in):
                try:
                    event = await events.receive()
                except trio.EndOfChannel:
                    return  # the watch went away (RESET_WATCHES): register it again
            name = None if event is None else self._child(event.path)
            if name is None:
                await self._reconcile(xs, sink)
                continue
            domid = self._domid(name)
            if domid is None:
                continue
            identity = await self._examine(xs, name)
            if isinstance(identity, Skipped):
                self._skipped()
                continue
            self._report_one(sink, domid, identity)

    def _skipped(self) -> None:
        self._retry_in = min(self._retry_in * 2, RETRY_MAX) if self._retry_in is not None else 0.25

    def _report_one(self, sink: LifecycleSink, domid: int, identity: bytes | None) -> None:
        if identity is None:
            self._reported.pop(domid, None)
        else:
            self._reported[domid] = identity
        sink.one(domid, identity)

    async def _reconcile(self, xs: XenStore, sink: LifecycleSink) -> None:
        try:
            names = await patiently(f"DIRECTORY {self.root}", lambda: xs.ls(self.root))
        except NotFound:
            names = []
        if isinstance(names, Skipped):
            self._skipped()
            return
        live, complete = await self._listing(xs, names, sink.some)
        if complete:
            self._retry_in = None
        else:
            self._skipped()
        self._reported = dict(live)
        sink.full(live)

    async def listing(self, xs: XenStore) -> dict[int, bytes]:
        """Every domain announced under the root, with its identity (DIRECTORY_PART when large). A node the
        daemon will not tell about keeps the identity last reported, if any."""
        try:
            names = await xs.ls(self.root)
        except NotFound:
            names = []
        return (await self._listing(xs, names))[0]

    async def _listing(
        self, xs: XenStore, names: list[str], early: Callable[[dict[int, bytes]], None] | None = None
    ) -> tuple[dict[int, bytes], bool]:
        """Examined a part at a time; each part's live domains go to ``early`` as it is done."""
        for gone in set(self._warned) - set(names):
            del self._warned[gone]
        # Two flat lists, not a tuple per domain: 32,000 small objects alive for the whole listing would be
        # promoted by the collector, and make it run its full collections more often.
        valid = [name async for name in in_slices(names) if self._domid(name) is not None]
        live: dict[int, bytes] = {}
        skipped: list[int] = []

        async def examine(part: list[str]) -> None:
            values = await trusted_reads(xs, [f"{self.root}/{name}" for name in part])
            found: dict[int, bytes] = {}
            for name, value in zip(part, values, strict=True):
                identity = self._judged(name, value)
                if isinstance(identity, Skipped):
                    skipped.append(int(name))
                elif identity is not None:
                    found[int(name)] = identity
            live.update(found)
            if early is not None and found:
                await report_in_batches(early, found)

        await in_chunks(valid, examine)
        for domid in skipped:
            if domid in self._reported:
                live[domid] = self._reported[domid]
        return live, not skipped
