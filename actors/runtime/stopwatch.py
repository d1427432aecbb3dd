"""Names what holds up a domain's stop: past the stop deadline, a warning every few seconds with the domid,
what it runs and the stack of every task still in its scope. (trio cannot end a task that ignores its
cancellation, e.g. one that catches ``trio.Cancelled`` in a loop; the warning is how an operator learns of it.)"""

from __future__ import annotations

import traceback

import trio

from .context import State
from .domain import DomainActor

__all__ = ["StopWatch", "task_stack"]


def task_stack(task: trio.lowlevel.Task) -> str:
    """Where a trio task is now, innermost call last."""
    return "".join(traceback.StackSummary.extract(task.iter_await_frames()).format())


class StopWatch:
    """One per runtime: one task that sleeps while no domain stops, whatever the number of domains."""

    def __init__(self, deadline: float, every: float) -> None:
        self.deadline = deadline
        self.every = every
        self._stopping: dict[DomainActor, float] = {}  # actor -> when to warn next
        self._wake = trio.Event()

    def add(self, actor: DomainActor) -> None:
        """``actor`` has begun to stop now."""
        self._stopping[actor] = trio.current_time() + self.deadline
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._stopping:
                self._wake = trio.Event()
                await self._wake.wait()
            now = trio.current_time()
            for actor, due in list(self._stopping.items()):
                if actor.stopping_since is None or actor.state is not State.STOPPING:
                    del self._stopping[actor]
                elif due <= now:
                    self.warn(actor, now)
                    self._stopping[actor] = now + self.every
            if self._stopping:
                await trio.sleep_until(min(self._stopping.values()))

    @staticmethod
    def warn(actor: DomainActor, now: float) -> None:
        since = actor.stopping_since if actor.stopping_since is not None else now
        tasks = [] if actor.nursery is None else list(actor.nursery.child_tasks)
        if actor.task is not None:
            tasks.insert(0, actor.task)
        stacks = "\n".join(f"task {task.name!r}:\n{task_stack(task)}" for task in tasks)
        actor.log.warning(
            "domain {} still stopping after {:.3g} s (deadline {:g} s){}; still running:\n{}",
            actor.domid,
            now - since,
            actor.rt.options.stop_deadline,
            f", busy with {actor.busy_path}" if actor.busy_path and actor.busy_since is not None else "",
            stacks,
        )
