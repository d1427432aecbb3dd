"""What the runtime keeps of its domains as they change: how many are in each state, and which are in trouble.

Health, ``mtwatch status`` and the metrics' aggregates read these instead of walking every domain: at 32,751
domains a walk costs tens of milliseconds of the loop each time, and an idle host has nothing to recount. The
counts move where a domain's condition moves: an actor made (``starting``), its state set, flood control
throttling it or watching it again, the actor gone. Running domains are only counted (they are the many);
every other state, and the throttled, keeps its domids (they are the few an operator looks at first).
"""

from __future__ import annotations

from collections.abc import Set

from .domain.context import State

__all__ = ["Census"]


class Census:
    """Kept counts of the runtime's domains (``rt.census``); see the module docstring. ``version`` grows at every
    change, so a reader can tell whether anything moved since it last looked."""

    __slots__ = ("_counts", "_members", "_throttled", "version")

    def __init__(self) -> None:
        self._counts: dict[State, int] = dict.fromkeys(State, 0)
        self._members: dict[State, set[int]] = {s: set() for s in State if s is not State.RUNNING}
        self._throttled: set[int] = set()
        self.version = 0

    # -- what the runtime and its actors report -------------------------------------------------------------

    def move(self, domid: int, old: State | None, new: State | None) -> None:
        """Domain ``domid``'s actor went from ``old`` to ``new`` (``old`` None: it was made; ``new`` None: it is
        gone)."""
        if old is new:
            return
        if old is not None:
            self._counts[old] -= 1
            if (members := self._members.get(old)) is not None:
                members.discard(domid)
        if new is not None:
            self._counts[new] += 1
            if (members := self._members.get(new)) is not None:
                members.add(domid)
        else:
            self._throttled.discard(domid)
        self.version += 1

    def throttle(self, domid: int, throttled: bool) -> None:
        """Flood control throttled the domain (True) or watches it again (False)."""
        if throttled:
            self._throttled.add(domid)
        else:
            self._throttled.discard(domid)
        self.version += 1

    # -- what readers get (O(1), or O(the domains in trouble)) -------------------------------------------------

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def counts(self) -> dict[State, int]:
        """Domains by state (every state, zeros included)."""
        return dict(self._counts)

    def count(self, state: State) -> int:
        return self._counts[state]

    def members(self, state: State) -> Set[int]:
        """The domids in ``state`` (a live read-only view; not for ``running``, which is only counted)."""
        if state is State.RUNNING:
            raise ValueError("running domains are counted, not listed: iterate rt.domains for them")
        return self._members[state]

    @property
    def throttled(self) -> Set[int]:
        """The domids flood control keeps unwatched now (a live read-only view)."""
        return self._throttled

    def trouble(self) -> set[int]:
        """Every domain that is not simply running: in another state, or throttled (a new set)."""
        out = set(self._throttled)
        for members in self._members.values():
            out |= members
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{n} {s.value}" for s, n in self._counts.items() if n)
        return f"Census({parts or 'no domains'}, {len(self._throttled)} throttled)"
