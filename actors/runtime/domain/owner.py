"""What a domain actor needs of its runtime: a narrow Protocol, so that the actor's module does not import the
runtime's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..options import RuntimeOptions
from ..watch_rules import Hook, Watch
from .context import DomainContext
from .starting import StartRequests

if TYPE_CHECKING:
    from ...xs.client import XenStore

__all__ = ["ActorHost", "MessageHandler"]

MessageHandler = Callable[[DomainContext, Any], Awaitable[Any]]


class ActorHost(Protocol):
    """What a domain actor needs of its runtime."""

    options: RuntimeOptions
    connection: XenStore | None
    message_handler: MessageHandler | None
    owns_connection: bool
    starts: StartRequests  # the runtime's own requests for actors, pipelined

    @property
    def xs(self) -> XenStore: ...

    @property
    def closing(self) -> bool: ...

    def domain_watches(self) -> list[Watch]: ...

    def start_hooks(self) -> tuple[Hook, ...]: ...

    def stop_hooks(self) -> tuple[Hook, ...]: ...

    def _changed(self) -> None: ...

    def _went_idle(self) -> None: ...

    def _emit(self, kind: str, domid: int, value: float = 1.0) -> None: ...

    def excused(self, domid: int, start: float) -> bool: ...

    def _count_event(self, domid: int) -> None: ...

    def _observe_latency(self, domid: int, seconds: float) -> None: ...

    def _stop_begins(self, domid: int) -> None: ...

    def _forget(self, domid: int, actor: object) -> None: ...
