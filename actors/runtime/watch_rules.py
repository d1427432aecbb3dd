"""Watch rules: a path template, a handler, and where its events go."""

from __future__ import annotations

import inspect
import itertools
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..xs.subscription import WatchEvent
from ..xs.wire import check_watch_path

if TYPE_CHECKING:
    from .domain.context import DomainContext

__all__ = ["ISOLATIONS", "Handler", "Hook", "Route", "Watch"]

ISOLATIONS = ("inline", "thread", "process")


Handler = Callable[["DomainContext", WatchEvent], Awaitable[None] | None]


"""``async def handler(ctx, event)``, or a plain ``def`` one, run in a worker thread (bounded pool), or with
``isolation="process"`` a module-level plain ``def`` run in a worker process (given a ProcessContext)."""


Hook = Callable[["DomainContext"], Awaitable[None]]


class ProcessPool(Protocol):
    """Where ``isolation="process"`` handlers run (the runtime's :class:`~.workers.pool.WorkerPool`)."""

    async def call(
        self,
        ctx: DomainContext,
        handler: Callable[..., Any],
        payload: Any,
        *,
        template: str | None,
        timeout: float | None,  # noqa: ASYNC109 (the watch's own)
        what: str,
    ) -> Any: ...


class Route(Protocol):
    """``route(path) -> domid | None``: which domain owns an event of a global watch (mtwatch's get_domid)."""

    def __call__(self, path: str, /) -> int | None: ...


_ids = itertools.count(1)


@dataclass(eq=False)
class Watch:
    """One watch rule. With ``{domid}`` in its template it is registered once per live domain, while that
    domain's actor runs; without, it is one watch whose events go to the default actor, or to the domain
    ``route(path)`` names."""

    template: str
    handler: Handler
    timeout: float | None = None
    route: Route | None = None
    name: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    active: bool = True
    limiter: trio.CapacityLimiter | None = None  # the worker threads of a plain def handler
    abandoned: int = 0  # threads of this watch's handler left running past its timeout
    isolation: str | None = None  # None: "thread" for a plain def, else "inline"
    initial: bool = True  # False: the watch's registration event is not handed to the handler
    pool: ProcessPool | None = None  # the worker processes, for isolation="process"

    def __post_init__(self) -> None:
        # A plain def function or method runs in a worker thread; anything else is called and awaited.
        handler = self.handler
        plain = inspect.isfunction(handler) or inspect.ismethod(handler)
        self.threaded = plain and not inspect.iscoroutinefunction(handler)
        if self.isolation is None:
            self.isolation = "thread" if self.threaded else "inline"
        elif self.isolation not in ISOLATIONS:
            raise ValueError(
                f"isolation must be one of {', '.join(map(repr, ISOLATIONS))}, not {self.isolation!r}"
            )
        elif self.isolation == "process":
            from .workers.context import check_process_handler

            check_process_handler(handler)
            self.threaded = False
        elif (self.isolation == "thread") != self.threaded:
            kind = "a plain def" if self.isolation == "thread" else "an async def"
            raise ValueError(f"isolation={self.isolation!r} needs {kind} handler")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        if fields - {"domid"}:
            raise ValueError(f"watch template {self.template!r}: only {{domid}} may be filled in")
        self.per_domain = "domid" in fields
        if self.per_domain and self.route is not None:
            raise ValueError("route= is for global watches; a {domid} template is per domain already")
        check_watch_path(self.path(1))  # InvalidPath now rather than at the daemon
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if not self.name:
            self.name = self.template

    def path(self, domid: int) -> str:
        return self.template.format(domid=domid) if self.per_domain else self.template

    def token(self, domid: int | None, generation: int) -> str:
        if domid is None:
            return f"mtw/g/{self.id}"
        return f"mtw/{domid}/{generation}/{self.id}"
