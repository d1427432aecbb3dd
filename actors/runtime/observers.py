"""The runtime's metrics face (mixed into :class:`~.runtime.Runtime`): ``rt.observe`` callbacks and what the
runtime, its actors and the watchdog report through them. An observer that raises is a failure of the domain it
was called for."""

from __future__ import annotations

from collections.abc import Callable

from .._log import logger
from .default_actor import DefaultActor
from .domain.actor import DomainActor
from .domain.calls import HandlerFailed, log_failure
from .watchdog import LoopBlocked

__all__ = ["Observer", "Observing"]

Observer = Callable[[str, int, float], None]


class Observing:
    """Mixed into :class:`~.runtime.Runtime`."""

    _actors: dict[int, DomainActor]
    _default: DefaultActor
    _observers: list[Observer]

    def observe(self, fn: Observer) -> None:
        """``fn(kind, domid, value)`` for metrics: kinds ``event``, ``failure``, ``restart``, ``latency``
        (seconds from the reader receiving an event to its handler starting), ``reconnect`` (domid 0),
        ``stall`` (domid 0: the daemon stalled), ``blocked`` (seconds the loop was blocked, charged
        to the domain whose code ran), ``gone``, ``throttled`` (1 when flood control throttles the domain, 0
        when it is watched again), ``dropped:<reason>`` (an event or message refused or purged: reasons
        ``failed``, ``backoff``, ``stopping``, ``throttled``). An observer that raises for a domain is that
        domain's failure (for domid 0: logged and counted as a default actor failure)."""
        self._observers.append(fn)

    def _loop_blocked(self, domid: int | None, seconds: float) -> None:
        """The watchdog's report, in the trio thread: the block is ``domid``'s failure."""
        self._emit("blocked", domid or 0, seconds)
        failure = HandlerFailed(LoopBlocked(f"blocked the event loop for {seconds:.3g} s"), "domain code")
        actor = self._actors.get(domid) if domid else None
        if actor is not None:
            actor.charge(failure)
        elif domid == 0:
            self._default.failures += 1
            log_failure(logger.bind(domid=0), failure)

    def _emit(self, kind: str, domid: int, value: float = 1.0) -> None:
        for fn in self._observers:
            try:
                fn(kind, domid, value)
            except Exception as exc:
                self._observer_failed(fn, kind, domid, exc)

    def _observer_failed(self, fn: Observer, kind: str, domid: int, exc: Exception) -> None:
        """An observer raised for ``domid``: that domain's failure (only logged where there is no running
        actor to charge, or when the observer failed on the failure itself)."""
        failure = HandlerFailed(exc, f"observer {getattr(fn, '__qualname__', fn)!r} on {kind!r}")
        actor = self._actors.get(domid) if domid else None
        if actor is not None and kind != "failure":
            actor.charge(failure)
            return
        if domid == 0:
            self._default.failures += 1
        log_failure(logger.bind(domid=domid), failure)

    def _count_event(self, domid: int) -> None:
        if self._observers:
            self._emit("event", domid)

    def _observe_latency(self, domid: int, seconds: float) -> None:
        if self._observers:
            self._emit("latency", domid, seconds)
