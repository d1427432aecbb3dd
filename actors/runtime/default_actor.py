"""The default actor: the events that belong to no live domain actor, like dom0's default xenwatch thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._log import logger
from ..xs.subscription import WatchEvent
from .domain.calls import HandlerFailed, call_handler, failure_of, log_failure, run_task
from .domain.context import DomainContext
from .domain.mailbox import Envelope, Mailbox
from .options import RuntimeOptions
from .watch_rules import Watch

if TYPE_CHECKING:
    from ..xs.client import XenStore

__all__ = ["DefaultActor", "DefaultHost"]


class DefaultHost(Protocol):
    """What the default actor needs of its runtime."""

    options: RuntimeOptions

    @property
    def xs(self) -> XenStore: ...

    def _count_event(self, domid: int) -> None: ...

    def _went_idle(self) -> None: ...

    def _emit(self, kind: str, domid: int, value: float = 1.0) -> None: ...

    def excused(self, domid: int, start: float) -> bool: ...

    def _observe_latency(self, domid: int, seconds: float) -> None: ...


class DefaultActor:
    """Runs the events that belong to no live domain actor, one at a time, like dom0's default xenwatch
    thread. A failing handler (or a task of ``ctx.start_soon``) is logged and counted; the actor carries on."""

    def __init__(self, runtime: DefaultHost) -> None:
        self.rt = runtime
        self.mailbox = Mailbox(runtime.options.mailbox_size, runtime.options.overflow_limit)
        self.ctx = DomainContext(0, b"", runtime, logger.bind(domid=0))
        self.handled = 0
        self.failures = 0
        self.finished = trio.Event()
        self._closing = False
        self._scope: trio.CancelScope | None = None

    def post(self, watch: Watch, watch_path: str, event: WatchEvent) -> None:
        self.mailbox.post(Envelope(watch, event, watch_path))

    def stop(self, grace: float) -> None:
        """Take no new events; a running handler gets ``grace`` seconds, then is cancelled (and so are the
        default actor's tasks)."""
        self._closing = True
        self.mailbox.interrupt()
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)

    async def run(self) -> None:
        with logger.contextualize(domid=0):
            try:
                while not self._closing:
                    try:
                        async with trio.open_nursery() as nursery:
                            self._scope = nursery.cancel_scope
                            self.ctx = DomainContext(0, b"", self.rt, self.ctx.log, nursery, self._run_task)
                            await self._serve()
                            nursery.cancel_scope.cancel(reason="shutdown")
                    except* (
                        Exception
                    ) as group:  # a bug of its own or of a task on ctx.nursery: logged, it goes on
                        self._fail(failure_of(group, "default actor"))
            finally:
                self._scope = None
                self.finished.set()

    def _fail(self, failure: HandlerFailed) -> None:
        self.failures += 1
        self.rt._emit("failure", 0)
        log_failure(self.ctx.log, failure)

    async def _run_task(
        self, ctx: DomainContext, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...], what: str
    ) -> None:
        try:
            await run_task(ctx, fn, args, what)
        except HandlerFailed as failure:
            self._fail(failure)

    async def _serve(self) -> None:
        while not self._closing:
            if not len(self.mailbox):
                self.rt._went_idle()  # about to park: wakes a settle()
            envelope = await self.mailbox.receive()
            if envelope is None or not isinstance(envelope, Envelope) or not envelope.watch.active:
                continue
            now = trio.current_time()
            self.rt._observe_latency(0, now - envelope.event.received_at)
            try:
                if await call_handler(self.ctx, envelope.watch, envelope.event, now):
                    self.handled += 1
                    self.rt._count_event(0)
            except HandlerFailed as failure:
                self._fail(failure)
