"""What a handler gets to work with, and what introspection shows of a domain."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loguru import Logger

    from ..xs.client import XenStore

__all__ = ["DomainContext", "DomainSnapshot", "State"]


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value


class DomainContext:
    """Handed to every handler and hook: ``domid`` (0 in the default actor), ``identity`` (the mtwatch node's
    value, e.g. the domain's UUID), ``xs`` (the runtime's current connection), ``log`` (loguru, bound with
    the domid)."""

    __slots__ = ("_source", "domid", "identity", "log", "state")

    def __init__(self, domid: int, identity: bytes, source: Any, log: Logger) -> None:
        self.domid = domid
        self.identity = identity
        self._source = source
        self.log = log
        self.state: dict[str, Any] = {}  # the handlers' own per-incarnation scratch space

    @property
    def xs(self) -> XenStore:
        """The connection to use now (after a reconnect, the new one)."""
        xs: XenStore = self._source.xs
        return xs

    def __repr__(self) -> str:
        return f"DomainContext(domid={self.domid}, identity={self.identity!r})"


@dataclass(frozen=True, slots=True)
class DomainSnapshot:
    """One domain actor as ``rt.domains`` shows it."""

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
