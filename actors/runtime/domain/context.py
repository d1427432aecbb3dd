"""What a handler gets to work with, and what introspection shows of a domain."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..._log import logger

if TYPE_CHECKING:
    from loguru import Logger

    from ...xs.client import XenStore

__all__ = ["DomainContext", "DomainSnapshot", "State", "TaskRunner"]


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value


class ConnectionSource(Protocol):
    @property
    def xs(self) -> XenStore: ...

    def excused(self, domid: int, start: float) -> bool:
        """Was the connection stalled, or the loop blocked by another domain, since ``start``?"""

    async def silenced(self) -> bool:
        """Is the daemon silent now (requests pending, nothing received), for ``silent_after`` at least?"""


TaskRunner = Callable[
    ["DomainContext", Callable[..., Awaitable[object]], tuple[Any, ...], str], Awaitable[None]
]
"""``runner(ctx, fn, args, what)``: how the owner of a context runs one of its per-domain tasks (and what a task
that raises costs: a domain actor fails, the default actor counts it)."""


class DomainContext:
    """Handed to every handler and hook: ``domid`` (0 in the default actor), ``identity`` (the mtwatch node's
    value, e.g. the domain's UUID), ``xs`` (the runtime's current connection), ``log`` (loguru, bound with
    the domid), ``state`` (a dict of the handlers' own, for this incarnation), and the incarnation's scope:
    ``start_soon`` and ``nursery``."""

    __slots__ = ("_log", "_nursery", "_run_task", "_source", "_state", "domid", "identity")

    def __init__(
        self,
        domid: int,
        identity: bytes,
        source: ConnectionSource,
        log: Logger | None = None,
        nursery: trio.Nursery | None = None,
        run_task: TaskRunner | None = None,
    ) -> None:
        self.domid = domid
        self.identity = identity
        self._source = source
        self._log = log  # None: bound with the domid on first use
        self._state: dict[str, Any] | None = None
        self._nursery = nursery
        self._run_task = run_task

    @property
    def state(self) -> dict[str, Any]:
        """The handlers' own dict for this incarnation (made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    @property
    def log(self) -> Logger:
        """loguru, bound with the domid."""
        if self._log is None:
            self._log = logger.bind(domid=self.domid)
        return self._log

    @property
    def xs(self) -> XenStore:
        """The connection to use now (after a reconnect, the new one)."""
        return self._source.xs

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery of this incarnation of the domain actor (for ``await ctx.nursery.start(...)``): its tasks
        are cancelled when the domain stops or restarts; one that raises is a failure of the domain."""
        if self._nursery is None:
            raise RuntimeError(f"domain {self.domid} has no running incarnation to start tasks in")
        return self._nursery

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any, name: str | None = None) -> None:
        """Run ``fn(*args)`` as a per-domain task, alive until the domain stops or restarts (cancelled then,
        with the reason: ``retired``, ``restart``, ``shutdown``, ``reload``). If it raises, the domain fails
        (logged with its domid, counted, restarted with backoff)."""
        what: str = name or str(getattr(fn, "__qualname__", repr(fn)))
        if self._run_task is None:
            self.nursery.start_soon(fn, *args, name=what)
        else:
            self.nursery.start_soon(self._run_task, self, fn, args, what, name=what)

    def __repr__(self) -> str:
        return f"DomainContext(domid={self.domid}, identity={self.identity!r})"


@dataclass(frozen=True, slots=True)
class DomainSnapshot:
    """One domain actor as ``rt.domains`` shows it. Times are trio clock values (``trio.current_time()``).

    ``name`` is ``/local/domain/<domid>/name`` read when the actor started (None if absent); ``busy_since``
    and ``busy_path`` say since when and for what path a handler has been running (``"message"`` for a
    message), ``stopping_since`` since when the domain is stopping; ``throttled_since`` is when flood control
    throttled it (None while it is not: see ``RuntimeOptions.flood_*``). ``last_error``/``last_exception`` are the
    last failure; ``dropped_by_reason`` counts the events refused by the actor's state (``failed``,
    ``backoff``, ``stopping``), the events and messages purged when an incarnation ended (``stopping``)
    and the events that arrived while it was throttled (``throttled``).
    """

    domid: int
    state: State
    identity: bytes
    mailbox_depth: int
    handled: int
    coalesced: int
    dropped: int
    failures: int
    restarts: int
    last_error: str | None
    name: str | None = None
    busy_since: float | None = None
    busy_path: str | None = None
    throttled_since: float | None = None
    stopping_since: float | None = None
    last_exception: BaseException | None = None
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)
