"""Where the set of live guest domains comes from: the lifecycle sources.

- ``mtwatch`` (:mod:`.mtwatch`): the xenwatch-multithreading nodes under ``/local/domain/0/mtwatch``.
- ``domains`` (:mod:`.domains`): a stock Xen host's domains, as its daemon knows them.
- ``auto`` (:class:`AutoSource`, the default): ``mtwatch`` whenever its root node exists (a toolstack that
  speaks the protocol, or ``mtwatch domain bridge``, made it), ``domains`` otherwise; it switches when the root
  appears or goes.

The protocol between a source and the registry, and the tools sources share, are in :mod:`.protocol` and :mod:`.requests`.
"""

from __future__ import annotations

from contextlib import suppress

import trio

from ..._log import logger
from ...xs.client import XenStore
from ...xs.errors import XenStoreError
from ...xs.subscription import WatchEvent
from ..exception_groups import one_connection_lost
from .domains import DomainsSource
from .mtwatch import MtwatchSource
from .protocol import MTWATCH_ROOT, LifecycleSink, LifecycleSource
from .requests import Skipped, gather_bounded, patiently, until_watched
from .trust import owner_of

__all__ = [
    "MTWATCH_ROOT",
    "AutoSource",
    "DomainsSource",
    "LifecycleSink",
    "LifecycleSource",
    "MtwatchSource",
    "gather_bounded",
    "owner_of",
]


class AutoSource:
    """``mtwatch`` while the root node exists, ``domains`` while it does not (see the module docstring).

    ``current`` names the source in use ("mtwatch" or "domains"; "domains" until the first look at the root);
    every choice is logged. A switch hands over with the new source's full listing, so domains the two agree
    on keep running only if their identities agree too (they differ: the toolstack's UUID against the ``vm``
    path), and restart otherwise.
    """

    name = "auto"

    def __init__(self, root: str = MTWATCH_ROOT, base: str = "/local/domain") -> None:
        self.root = root.rstrip("/") or "/"
        self.mtwatch = MtwatchSource(self.root)
        self.domains = DomainsSource(base)
        self.current = "domains"
        self.switches = 0  # changes of source after the first choice
        self._chosen = False

    async def _choice(self, xs: XenStore) -> str:
        exists = await patiently(f"READ {self.root}", lambda: xs.exists(self.root))
        if isinstance(exists, Skipped):
            return self.current
        return "mtwatch" if exists else "domains"

    def _choose(self, mode: str) -> None:
        if self._chosen and mode == self.current:
            return
        if self._chosen:
            self.switches += 1
        self._chosen = True
        self.current = mode
        state = "exists" if mode == "mtwatch" else "does not exist"
        logger.info("lifecycle: following {} ({} {})", mode, self.root, state)

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        changed = [trio.Event()]

        def mark(event: WatchEvent) -> None:
            # The root's appearance fires for the child that made it (XSA-326: no events for nodes created
            # implicitly); its removal fires for the root itself.
            if self.current == "domains" or event.path == self.root:
                changed[0].set()

        token = "mtw/auto"
        await until_watched(self.root, lambda: xs.add_watch(self.root, token, mark))
        try:
            mode = await self._choice(xs)
            while True:
                self._choose(mode)
                source: LifecycleSource = self.mtwatch if mode == "mtwatch" else self.domains
                with one_connection_lost():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(source.follow, xs, sink)
                        while mode == self.current:
                            await changed[0].wait()
                            changed[0] = trio.Event()
                            mode = await self._choice(xs)
                        nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2), suppress(XenStoreError):
                if not xs.is_lost:
                    await xs.remove_watch(self.root, token)
