"""Names what holds up a domain's stop: past the stop deadline, a warning every few seconds with the domid,
what it runs and the stack of every task still in its scope. (trio cannot end a task that ignores its
cancellation, e.g. one that catches ``trio.Cancelled`` in a loop; the warning is how an operator learns of it.)"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING, Protocol

import trio

from .domain.context import State
from .domain.stacks import domain_tasks, task_stack

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["StopWatch", "Stopping"]


class Busy(Protocol):
    @property
    def busy_path(self) -> str | None: ...

    @property
    def busy_since(self) -> float | None: ...


class Stopping(Protocol):
    """What the stop watch reads of a stopping domain actor (:class:`~.domain.actor.DomainActor`)."""

    @property
    def domid(self) -> int: ...

    @property
    def state(self) -> State: ...

    @property
    def stopping_since(self) -> float | None: ...

    @property
    def task(self) -> trio.lowlevel.Task | None: ...

    @property
    def nursery(self) -> trio.Nursery | None: ...

    @property
    def inbox(self) -> Busy: ...

    @property
    def log(self) -> Logger: ...


class StopWatch:
    """One per runtime: one task that sleeps while no domain stops, whatever the number of domains. The stopping
    actors are kept in a heap by when each is due a warning: 32,000 actors stopping at once (the runtime's
    shutdown) cost a push each and one look at the earliest, not a scan of all of them at every wake-up."""

    def __init__(self, deadline: float, every: float) -> None:
        self.deadline = deadline
        self.every = every
        self._due: dict[Stopping, float] = {}  # actor -> when to warn next (its entry in the heap)
        self._heap: list[tuple[float, int, Stopping]] = []  # (due, order of adding, actor); stale ones too
        self._order = itertools.count()
        self._wake = trio.Event()

    def add(self, actor: Stopping, deadline: float) -> None:
        """``actor`` has begun to stop, due by ``deadline`` (its stop's deadline)."""
        self._push(actor, deadline)
        self._wake.set()

    def _push(self, actor: Stopping, due: float) -> None:
        self._due[actor] = due
        heapq.heappush(self._heap, (due, next(self._order), actor))

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                due, _, actor = heapq.heappop(heap)
                if self._due.get(actor) != due:
                    continue  # stale: added again since, or done
                if actor.stopping_since is None or actor.state is not State.STOPPING:
                    del self._due[actor]
                    continue
                self.warn(actor, now)
                self._push(actor, now + self.every)
            if not heap:
                self._due.clear()
            self._wake = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._wake.wait()

    def warn(self, actor: Stopping, now: float) -> None:
        since = actor.stopping_since if actor.stopping_since is not None else now
        inbox = actor.inbox
        tasks = domain_tasks(actor)
        stacks = "\n".join(f"task {task.name!r}:\n{task_stack(task)}" for task in tasks)
        actor.log.warning(
            "domain {} still stopping after {:.3g} s (deadline {:g} s){}; still running:\n{}",
            actor.domid,
            now - since,
            self.deadline,
            f", busy with {inbox.busy_path}" if inbox.busy_path and inbox.busy_since is not None else "",
            stacks,
        )
