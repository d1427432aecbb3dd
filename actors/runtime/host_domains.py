"""The ``domains`` lifecycle: a stock Xen host, whose libxl writes no mtwatch nodes. A domain is live while
``/local/domain/<domid>`` exists and IS_DOMAIN_INTRODUCED says so; its identity is ``/local/domain/<domid>/vm``.
Followed through ``@introduceDomain``, ``@releaseDomain`` and the children of ``/local/domain``."""

from __future__ import annotations

from contextlib import suppress

import trio
from loguru import logger

from ..xs.client import XenStore
from ..xs.errors import InvalidDomid, NotFound, XenStoreError
from ..xs.subscription import WatchEvent
from ..xs.wire import check_domid
from .source import LifecycleSink, Skipped, gather_bounded, patiently, untrusted_because

__all__ = ["DomainsSource"]


class DomainsSource:
    """Follows a stock host's domains (see the module docstring). Every relevant event leads to one full
    listing; events that arrive meanwhile are folded into the next one."""

    name = "domains"
    SPECIAL = ("@introduceDomain", "@releaseDomain")

    def __init__(self, base: str = "/local/domain") -> None:
        self.base = base
        self._warned: dict[int, str] = {}

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
            while True:
                await dirty.wait()
                dirty = trio.Event()
                live = await self.listing(xs)
                if live is not None:
                    sink.full(live)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for path, token in tokens:
                    if xs.is_lost:
                        break
                    with suppress(XenStoreError):
                        await xs.remove_watch(path, token)

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

    async def listing(self, xs: XenStore) -> dict[int, bytes] | None:
        try:
            names = await patiently(f"DIRECTORY {self.base}", lambda: xs.ls(self.base))
        except NotFound:
            return {}
        if isinstance(names, Skipped):
            return None
        live: dict[int, bytes] = {}

        async def examine(name: str) -> None:
            try:
                domid = check_domid(name, guest_only=True)
            except InvalidDomid:
                return
            if not await xs.is_domain_introduced(domid):
                return
            live[domid] = await self.identity(xs, domid)

        await gather_bounded(names, examine)
        return live
