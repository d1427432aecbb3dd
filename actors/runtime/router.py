"""Where an event goes.

A per-domain watch needs no lookup here: its token (``mtw/<domid>/<generation>/<watch>``) is registered with a
sink bound to its domain actor, so the connection's reader hands the event straight to that actor's mailbox,
and a late event of an earlier incarnation finds no sink (or the wrong generation) and is dropped. A global
watch's events come through :meth:`Router.deliver`: to the actor of the domain its ``route(path)`` names when
that domain is live, else to the default actor (the mtwatch design's ``get_domid``).
"""

from __future__ import annotations

import functools
from contextlib import suppress
from typing import TYPE_CHECKING, Protocol

from .._log import logger
from ..xs.errors import ConnectionLost, TokenInUse, XenStoreError
from ..xs.subscription import WatchEvent
from .default_actor import DefaultActor
from .watch_rules import Watch

if TYPE_CHECKING:
    from ..xs.client import XenStore

__all__ = ["RoutedActor", "RoutedInbox", "Router", "RouterHost"]


class RoutedInbox(Protocol):
    def post_routed(self, watch: Watch, watch_path: str, event: WatchEvent) -> None: ...


class RoutedActor(Protocol):
    """What the router needs of a domain actor."""

    @property
    def inbox(self) -> RoutedInbox: ...


class RouterHost(Protocol):
    """What the router needs of its runtime."""

    connection: XenStore | None

    def live_actor(self, domid: int) -> RoutedActor | None: ...

    def went_idle(self) -> None: ...


class Router:
    """Global watches: registration on the current connection, and delivery of their events."""

    def __init__(self, runtime: RouterHost, default: DefaultActor) -> None:
        self.rt = runtime
        self.default = default
        self.registering = 0  # global watches whose WATCH is under way (settle() waits for them)

    def deliver(self, watch: Watch, event: WatchEvent) -> None:
        """Called from the connection's reader task: constant work, never blocks."""
        domid: int | None = None
        if watch.route is not None:
            try:
                domid = watch.route(event.path)
            except Exception:
                logger.opt(exception=True).error(
                    "route function of {!r} failed on {}", watch.name, event.path
                )
        if domid is not None:
            actor = self.rt.live_actor(domid)
            if actor is not None:
                actor.inbox.post_routed(watch, watch.template, event)  # refused and counted unless running
                return
        self.default.post(watch, watch.template, event)

    async def register(self, watch: Watch) -> None:
        xs = self.rt.connection
        if xs is None or xs.is_lost or not watch.active:
            return
        self.registering += 1
        try:
            await xs.add_watch(watch.template, watch.token(None, 0), functools.partial(self.deliver, watch))
        except ConnectionLost:
            pass  # the reconnect registers it
        except TokenInUse:
            pass  # this watch's own token: the connection's registration and rt.watch() raced, it is watched
        except XenStoreError as exc:
            logger.warning("cannot watch {}: {}", watch.template, exc)
        finally:
            self.registering -= 1
            self.rt.went_idle()

    async def unregister(self, watch: Watch) -> None:
        xs = self.rt.connection
        if xs is None or xs.is_lost:
            return
        with suppress(XenStoreError):
            await xs.remove_watch(watch.template, watch.token(None, 0))
