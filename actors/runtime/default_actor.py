"""The default actor: the events that belong to no live domain actor, like dom0's default xenwatch thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._log import logger
from ..xs.subscription import WatchEvent
from .domain.calls import HandlerFailed, failure_of, log_failure, run_task
from .domain.context import DomainContext, State
from .domain.mailbox import Envelope
from .domain.owner import ActorHost
from .domain.serving import Inbox
from .watch_rules import Watch

__all__ = ["DefaultActor"]


class DefaultActor:
    """Runs the events that belong to no live domain actor, one at a time, like dom0's default xenwatch
    thread, through the same serving loop as a domain actor's (:meth:`.domain.serving.Inbox.serve`). A failing
    handler (or a task of ``ctx.start_soon``) is logged and counted; the actor carries on. Its life has two
    states: running, then stopping (the runtime's stop)."""

    def __init__(self, runtime: ActorHost) -> None:
        self.rt = runtime
        self.state = State.RUNNING
        self.ending = False  # the runtime's stop
        self.generation = 0  # one incarnation, the whole runtime's life
        self.inbox = Inbox(0, runtime, self, None, survive=self._fail)
        self.ctx = DomainContext(0, b"", runtime, logger.bind(domid=0))
        self.failures = 0
        self.finished = trio.Event()
        self._scope: trio.CancelScope | None = None

    @property
    def handled(self) -> int:
        return self.inbox.handled

    def post(self, watch: Watch, watch_path: str, event: WatchEvent) -> None:
        """The router's way in: never blocks (no flood control: the default actor is dom0's)."""
        self.inbox.mailbox.post(Envelope(watch, event, watch_path))

    def stop(self, deadline: float) -> None:
        """Take no new events; a running handler has until ``deadline`` (trio clock), then is cancelled (and so
        are the default actor's tasks)."""
        self.state = State.STOPPING
        self.ending = True
        self.inbox.mailbox.interrupt()
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, deadline)

    async def run(self) -> None:
        with logger.contextualize(domid=0):
            try:
                while not self.ending:
                    try:
                        async with trio.open_nursery() as nursery:
                            self._scope = nursery.cancel_scope
                            self.ctx = DomainContext(0, b"", self.rt, self.ctx.log, nursery, self._run_task)
                            await self.inbox.serve(self.ctx)
                            nursery.cancel_scope.cancel(reason="shutdown")
                    except* (
                        Exception
                    ) as group:  # a bug of its own or of a task on ctx.nursery: logged, it goes on
                        self._fail(failure_of(group, "default actor"))
            finally:
                self._scope = None
                self.inbox.purge()  # what waits at the stop is dropped, and counted
                self.finished.set()

    def _fail(self, failure: HandlerFailed) -> None:
        self.failures += 1
        self.rt.observers.emit("failure", 0)
        log_failure(self.ctx.log, failure)

    async def _run_task(
        self, ctx: DomainContext, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...], what: str
    ) -> None:
        try:
            await run_task(ctx, fn, args, what)
        except HandlerFailed as failure:
            self._fail(failure)
