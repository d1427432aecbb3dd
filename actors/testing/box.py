"""The sandbox: the embedded xenstored on a fresh private socket, a dom0 connection to it, the toolstack's side
(:meth:`Sandbox.create_domain`, :meth:`Sandbox.destroy_domain`) and a guest's (:meth:`Sandbox.guest`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid as uuids
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio

from ..runtime.domain.context import State
from ..runtime.lifecycle.protocol import MTWATCH_ROOT
from ..runtime.runtime import Runtime, open_runtime
from ..xenstored.domains import Quotas
from ..xenstored.server import XenStored, open_xenstored
from ..xs.client import XenStore, connect, open_xenstore
from ..xs.wire import check_domid
from . import libxl

__all__ = ["Sandbox", "SandboxDomain", "sandbox"]

Lifecycle = Literal["mtwatch", "domains"]
LIFECYCLES: tuple[Lifecycle, ...] = ("mtwatch", "domains")
_STARTED = (State.RUNNING, State.BACKOFF, State.FAILED)  # started, or failed starting
WAIT = 10.0  # seconds a sandbox waits for its runtimes to follow a domain's creation or destruction


@dataclass(frozen=True, slots=True)
class SandboxDomain:
    """A domain the sandbox made: its ``domid``, ``name``, ``uuid`` (its mtwatch node's value, the actor's
    ``identity``) and ``lifecycle`` (``"mtwatch"``: with an mtwatch node; ``"domains"``: a stock host's)."""

    domid: int
    name: str
    uuid: str
    lifecycle: Lifecycle

    @property
    def path(self) -> str:
        return f"/local/domain/{self.domid}"

    def spec(self) -> libxl.DomainSpec:
        return libxl.DomainSpec(self.domid, self.name, self.uuid, self.lifecycle == "mtwatch")


class Sandbox:
    """Made by :func:`sandbox`; see there."""

    def __init__(self, xenstored: XenStored, socket: str, xs: XenStore, lifecycle: Lifecycle) -> None:
        self.xenstored = xenstored
        """The embedded daemon itself (``store``, ``domain_shutdown(domid)``, ...)."""
        self.socket = socket
        """The daemon's socket path, for a program under test that connects by itself."""
        self.xs = xs
        """A dom0 connection (privileged, as the toolstack's)."""
        self.lifecycle: Lifecycle = lifecycle
        self.domains: dict[int, SandboxDomain] = {}
        """The domains made and not destroyed, by domid."""
        self._runtimes: list[Runtime] = []

    @property
    def compat(self) -> str:
        """The C xenstored version the daemon answers as: ``"4.22"`` or ``"4.17"``."""
        return self.xenstored.compat

    def connect(self) -> AbstractAsyncContextManager[XenStore]:
        """``async with box.connect() as xs``: a new dom0 connection of your own."""
        return connect(self.socket)

    @asynccontextmanager
    async def runtime(self, **options: Any) -> AsyncIterator[Runtime]:
        """``async with box.runtime(**options) as rt``: :func:`actors.open_runtime` on a connection of its own
        to the sandbox (reconnecting, ``connect=``), with any of its keyword arguments; entered once it has
        listed the live domains (``rt.ready``). :meth:`create_domain` and :meth:`destroy_domain` wait for the
        runtimes made here to follow them."""
        if "xs" not in options and "connect" not in options:
            options["connect"] = self.connect
        async with open_runtime(**options) as rt:
            with trio.move_on_after(WAIT) as scope:
                await rt.ready.wait()
            if scope.cancelled_caught:
                raise TimeoutError(f"the runtime did not list the sandbox's domains within {WAIT:g} s")
            self._runtimes.append(rt)
            try:
                yield rt
            finally:
                self._runtimes.remove(rt)

    async def create_domain(
        self,
        domid: int,
        *,
        name: str | None = None,
        uuid: str | None = None,
        lifecycle: Lifecycle | None = None,
        wait: bool = True,
    ) -> SandboxDomain:
        """Make guest ``domid`` as libxl does (its nodes and their permissions in a transaction, then INTRODUCE,
        which fires ``@introduceDomain``); with the ``"mtwatch"`` lifecycle (the sandbox's default unless it was
        made with another) also its mtwatch node, in that transaction, with the ``uuid`` as its value. ``name``
        defaults to ``guest-<domid>``, ``uuid`` to a fresh one. With ``wait``, returns once every runtime of
        :meth:`runtime` that follows such domains runs the domain's actor (or has failed it: ``backoff``, ``failed``).
        A domid already in use is a ValueError (destroy it first: a reused domid is a new domain)."""
        kind = lifecycle or self.lifecycle
        if kind not in LIFECYCLES:
            raise ValueError(f"lifecycle must be one of {', '.join(LIFECYCLES)}, not {kind!r}")
        check_domid(domid, guest_only=True)  # InvalidDomid (a ValueError)
        if domid in self.domains:
            raise ValueError(f"domain {domid} exists in this sandbox: destroy_domain({domid}) first")
        domain = SandboxDomain(domid, name or f"guest-{domid}", uuid or str(uuids.uuid4()), kind)
        await libxl.make_domain(self.xs, domain.spec())
        self.domains[domid] = domain
        if wait:
            await self._follow(domid, "to run", _STARTED, self._sees(kind))
        return domain

    async def destroy_domain(self, domid: int, *, wait: bool = True) -> None:
        """Destroy guest ``domid`` as libxl does: ``/vm/<uuid>``, its directory and ``/libxl/<domid>``
        removed, then the domain dies (the daemon drops its guest connections and fires ``@releaseDomain``),
        then its mtwatch node is removed (the last operation, as the seed's patch does). With ``wait``, returns
        once no runtime of :meth:`runtime` has an actor for it any more."""
        domain = self.domains.get(domid)
        if domain is None:
            raise ValueError(f"no domain {domid} in this sandbox")
        await libxl.remove_domain(self.xs, domain.spec())
        self.xenstored.domain_died(domid)
        await libxl.retire(self.xs, domain.spec())
        del self.domains[domid]
        if wait:
            await self._follow(domid, "to be gone", (None,), lambda rt: rt.live_actor(domid) is not None)

    @asynccontextmanager
    async def guest(self, domid: int) -> AsyncIterator[XenStore]:
        """``async with box.guest(5) as g``: a client connection as guest ``domid`` (as if through its ring):
        the daemon grants it what it grants that domain, and refuses the rest as it refuses a guest
        (PermissionDenied on another domain's nodes, quotas, ...). Relative paths are under its own
        ``/local/domain/<domid>``. The domain must have been made with :meth:`create_domain`."""
        if domid not in self.domains:
            raise ValueError(f"no domain {domid} in this sandbox: create_domain({domid}) first")
        async with (
            self.xenstored.guest(domid) as stream,
            open_xenstore(stream, name=f"guest {domid}") as conn,
        ):
            yield conn

    def _sees(self, lifecycle: Lifecycle) -> Callable[[Runtime], bool]:
        """Which runtimes follow a domain of ``lifecycle``: every one but those on the mtwatch tree for a
        stock host's domain (and none with a lifecycle source of their own)."""

        def sees(rt: Runtime) -> bool:
            current = rt.lifecycle_name
            if current not in ("mtwatch", "domains"):
                return False
            return not (lifecycle == "domains" and current == "mtwatch")

        return sees

    async def _follow(
        self, domid: int, what: str, states: Iterable[State | None], which: Callable[[Runtime], bool]
    ) -> None:
        wanted = tuple(states)
        for rt in [rt for rt in self._runtimes if which(rt)]:
            with trio.move_on_after(WAIT) as scope:
                await rt.wait_domain(domid, *wanted)
            if scope.cancelled_caught:
                actor = rt.domains.get(domid)
                raise TimeoutError(
                    f"domain {domid} did not come {what} in the runtime within {WAIT:g} s"
                    f" (its actor: {actor.state if actor else 'none'})"
                )


@asynccontextmanager
async def sandbox(
    compat: str = "4.22", *, lifecycle: Lifecycle = "mtwatch", quotas: Quotas | None = None
) -> AsyncIterator[Sandbox]:
    """``async with actors.testing.sandbox() as box``: the embedded xenstored, answering as C xenstored
    ``compat`` (``"4.22"`` or ``"4.17"``), on a fresh socket in a private folder under /tmp (removed on exit),
    with ``quotas`` for the guests (C xenstored's defaults otherwise). ``lifecycle`` is how
    :meth:`Sandbox.create_domain` makes domains unless told otherwise: ``"mtwatch"`` (the seed's toolstack; the
    mtwatch root is made at once, so an ``"auto"`` runtime follows the mtwatch tree) or ``"domains"`` (a stock
    host's libxl). Everything the sandbox started ends with the block."""
    if lifecycle not in LIFECYCLES:
        raise ValueError(f"lifecycle must be one of {', '.join(LIFECYCLES)}, not {lifecycle!r}")
    folder = tempfile.mkdtemp(prefix="mtwatch-", dir="/tmp")  # short: a socket path has room for 107 bytes
    path = os.path.join(folder, "xenstored")
    try:
        async with open_xenstored(path, quotas=quotas, compat=compat) as server, connect(path) as xs:
            if lifecycle == "mtwatch":
                await xs.write(MTWATCH_ROOT, "")
                await xs.set_perms(MTWATCH_ROOT, ["n0"])
            yield Sandbox(server, path, xs, lifecycle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
