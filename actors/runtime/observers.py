"""The runtime's metrics: ``rt.observe`` callbacks and what the runtime, its actors and the watchdog report through
them. An observer that raises is a failure of the domain it was called for."""

from __future__ import annotations

from collections.abc import Callable

from .domain.calls import HandlerFailed

__all__ = ["Observer", "Observers"]

Observer = Callable[[str, int, float], None]


class Observers:
    """The callbacks registered with ``rt.observe``, owned by the runtime and called by everything that reports.
    ``failed(domid, kind, failure)`` is the runtime's: an observer raised for ``domid`` on ``kind``."""

    __slots__ = ("_failed", "_observers")

    def __init__(self, failed: Callable[[int, str, HandlerFailed], None]) -> None:
        self._observers: list[Observer] = []
        self._failed = failed

    def add(self, fn: Observer) -> None:
        self._observers.append(fn)

    def emit(self, kind: str, domid: int, value: float = 1.0) -> None:
        for fn in self._observers:
            try:
                fn(kind, domid, value)
            except Exception as exc:
                failure = HandlerFailed(exc, f"observer {getattr(fn, '__qualname__', fn)!r} on {kind!r}")
                self._failed(domid, kind, failure)

    def count_event(self, domid: int) -> None:
        if self._observers:
            self.emit("event", domid)

    def observe_latency(self, domid: int, seconds: float) -> None:
        if self._observers:
            self.emit("latency", domid, seconds)
