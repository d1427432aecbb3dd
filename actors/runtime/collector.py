"""What the runtime does to the garbage collector, and why (README "Performance").

CPython's collector runs a full collection whenever the objects that survived since the last one reach a
quarter of the long-lived heap: with 32,751 domain actors (some 3 million tracked objects) each full collection
walks all of them, holding the trio loop for a few hundred milliseconds, and a start-up of that many actors
triggers a string of them as the heap grows. The actors are long-lived by design: walking them again and again
finds nothing to free.

So a runtime that has many actors (``RuntimeOptions.gc_freeze_at``, 1,000 live actors by default; None: never)
calls ``gc.freeze()`` after every ``_FREEZE_EVERY`` actors it starts: every object alive then moves to the
collector's permanent generation, which full collections skip (``gc.freeze`` itself costs O(1)). This is
process-wide: the application's objects alive at that moment are frozen too. What it costs: a reference
cycle among frozen objects that becomes garbage later (an actor that failed with an exception keeps its
traceback, which refers back to its frames) is not collected while frozen; objects without cycles are freed by
their reference counts as always. When the runtime ends it calls ``gc.unfreeze()`` (only if nothing was frozen
before it first froze: a process that freezes on its own, e.g. before forking, keeps its freeze), and the next
full collection then frees whatever frozen cycles became garbage.
"""

from __future__ import annotations

import gc

__all__ = ["Collector"]

_FREEZE_EVERY = (
    256  # actors started between two freezes (gc.freeze is O(1): the count only spreads the calls)
)


class Collector:
    """The runtime's side of the collector; see the module docstring."""

    __slots__ = ("_freeze_at", "_froze", "_owns_freeze", "_since")

    def __init__(self, freeze_at: int | None) -> None:
        self._freeze_at = freeze_at
        self._since = 0
        self._froze = False
        self._owns_freeze = False

    @property
    def froze(self) -> bool:
        """Has this runtime frozen the heap?"""
        return self._froze

    def started(self, live: int) -> None:
        """An actor's task started, ``live`` actors now: freeze every ``_FREEZE_EVERY`` once there are many."""
        self._since += 1
        if self._freeze_at is None or live < self._freeze_at or self._since < _FREEZE_EVERY:
            return
        self._since = 0
        if not self._froze:
            self._froze = True
            self._owns_freeze = gc.get_freeze_count() == 0
        gc.freeze()

    def close(self) -> None:
        """The runtime ended: give the frozen objects back to the collector (if the freeze is ours alone)."""
        if self._froze and self._owns_freeze:
            gc.unfreeze()
        self._froze = False
