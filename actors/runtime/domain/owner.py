"""What a domain actor needs of its runtime: a narrow Protocol, so that the actor's module does not import the
runtime's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..census import Census
from ..options import RuntimeOptions
from ..watch_rules import Hook, Watch
from .context import DomainContext, State
from .starting import StartRequests

if TYPE_CHECKING:
    from ...xs.client import XenStore

__all__ = ["ActorHost", "MessageHandler", "Observing"]

MessageHandler = Callable[[DomainContext, Any], Awaitable[Any]]


class Observing(Protocol):
    """The runtime's observers, as the actors report to them (:class:`~actors.runtime.observers.Observers`)."""

    def emit(self, kind: str, domid: int, value: float = 1.0) -> None: ...

    def count_event(self, domid: int) -> None: ...

    def observe_latency(self, domid: int, seconds: float) -> None: ...


class ActorHost(Protocol):
    """What a domain actor needs of its runtime."""

    options: RuntimeOptions
    connection: XenStore | None
    owns_connection: bool
    starts: StartRequests  # the runtime's own requests for actors, pipelined
    census: Census  # the kept counts of the domains by state, told of every change

    @property
    def observers(self) -> Observing: ...

    @property
    def message_handler(self) -> MessageHandler | None: ...

    @property
    def xs(self) -> XenStore: ...

    @property
    def closing(self) -> bool: ...

    def domain_watches(self) -> list[Watch]: ...

    def start_hooks(self) -> tuple[Hook, ...]: ...

    def stop_hooks(self) -> tuple[Hook, ...]: ...

    def went_idle(self) -> None:
        """An actor is about to park on its empty mailbox (wakes a ``settle()``)."""

    def excused(self, domid: int, start: float) -> bool: ...

    async def silenced(self) -> bool:
        """Is the daemon silent now (requests pending, nothing received), for ``silent_after`` at least?"""

    def state_changed(self, domid: int, old: State | None, new: State | None) -> None:
        """Every move of a domain actor's life (None: no actor), through :meth:`.life.Life.move`."""
