"""What a process handler gets: :class:`ProcessContext`, picklable, and its XenStore connection of its own."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loguru import Logger

    from ...xs.sync import SyncXenStore

__all__ = ["ProcessContext", "check_process_handler"]

# The worker's connections, by address: kept for the worker's life, shared by the calls it runs.
_connections: dict[tuple[str, bool], SyncXenStore] = {}


class ProcessContext:
    """Handed to a process handler (``def handler(ctx, event)`` run with ``isolation="process"``) in its
    worker process: ``domid``, ``name`` (the domain's name when its actor started, or None), ``identity``
    (its mtwatch node's value), ``template`` (the watch's path template; None for a message handler),
    ``log`` (loguru bound with the domid: its lines go to the runtime's log, with the worker's ``pid``) and
    ``xs``, a blocking :class:`~actors.xs.sync.SyncXenStore` on a connection of the worker's own to the
    runtime's xenstored (made on first use, kept for the worker's life)."""

    __slots__ = ("_log", "domid", "identity", "name", "template", "xenbus", "xenstore")

    def __init__(
        self,
        domid: int,
        identity: bytes,
        name: str | None = None,
        template: str | None = None,
        xenstore: str | None = None,
        xenbus: bool = False,
    ) -> None:
        self.domid = domid
        self.identity = identity
        self.name = name
        self.template = template
        self.xenstore = xenstore  # the socket's path (or the xenbus device) the runtime's connection uses
        self.xenbus = xenbus
        self._log: Logger | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ProcessContext,
            (self.domid, self.identity, self.name, self.template, self.xenstore, self.xenbus),
        )

    @property
    def log(self) -> Logger:
        """loguru, bound with the domid; in a worker its lines go to the runtime's log."""
        if self._log is None:
            from loguru import logger

            self._log = logger.bind(domid=self.domid)
        return self._log

    @property
    def xs(self) -> SyncXenStore:
        """A blocking client on the worker's own connection to the runtime's xenstored."""
        if self.xenstore is None:
            raise RuntimeError(
                "the runtime's connection has no address a worker can connect to (a stream given to"
                " open_xenstore): connect the runtime with actors.connect(path)"
            )
        key = (self.xenstore, self.xenbus)
        xs = _connections.get(key)
        if xs is None or xs.closed:
            from ...xs.sync import SyncXenStore

            xs = _connections[key] = SyncXenStore(self.xenstore, xenbus=self.xenbus)
        return xs

    def __repr__(self) -> str:
        return f"ProcessContext(domid={self.domid}, identity={self.identity!r}, name={self.name!r})"


def check_process_handler(handler: Callable[..., Any]) -> None:
    """A process handler is a plain ``def`` that a worker can import by name (module level), or anything
    else picklable by reference (a ``functools.partial`` of one). TypeError otherwise, at registration."""
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    ):
        raise TypeError(f"{handler!r}: a process handler is a plain def function, not async")
    if not callable(handler):
        raise TypeError(f"{handler!r} is not callable")
    try:
        data = pickle.dumps(handler, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
    except Exception as exc:
        raise TypeError(
            f"{handler!r}: a process handler must be found by its import path (a module-level def), not"
            f" a lambda, a nested function or a bound method: {exc}"
        ) from None
