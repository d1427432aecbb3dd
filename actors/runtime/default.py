"""The default actor: the events that belong to no live domain actor, like dom0's default xenwatch thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from loguru import logger

from ..xs.subscription import WatchEvent
from .context import DomainContext
from .domain import HandlerFailed, call_handler, log_failure
from .mailbox import Envelope, Mailbox
from .watches import Watch

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["DefaultActor"]


class DefaultActor:
    """Runs the events that belong to no live domain actor, one at a time, like dom0's default xenwatch
    thread. A failing handler is logged and counted; the actor carries on."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.mailbox = Mailbox(runtime.options.mailbox_size, runtime.options.overflow_limit)
        self.ctx = DomainContext(0, b"", runtime, logger.bind(domid=0))
        self.handled = 0
        self.failures = 0
        self.finished = trio.Event()
        self._closing = False
        self._busy_scope: trio.CancelScope | None = None

    def post(self, watch: Watch, watch_path: str, event: WatchEvent) -> None:
        self.mailbox.post(Envelope(watch, event, watch_path))

    def stop(self, grace: float) -> None:
        """Take no new events; a running handler gets ``grace`` seconds, then is cancelled."""
        self._closing = True
        self.mailbox.interrupt()
        if self._busy_scope is not None:
            self._busy_scope.deadline = min(self._busy_scope.deadline, trio.current_time() + grace)

    async def run(self) -> None:
        with logger.contextualize(domid=0):
            try:
                await self._serve()
            finally:
                self.finished.set()

    async def _serve(self) -> None:
        while not self._closing:
            envelope = await self.mailbox.receive()
            if envelope is None or not envelope.watch.active:
                continue
            self.rt._observe_latency(0, trio.current_time() - envelope.event.received_at)
            try:
                with trio.CancelScope() as self._busy_scope:
                    if await call_handler(self.ctx, envelope.watch, envelope.event):
                        self.handled += 1
                        self.rt._count_event(0)
            except HandlerFailed as failure:
                self.failures += 1
                self.rt._count_failure(0)
                log_failure(self.ctx.log, failure)
            finally:
                self._busy_scope = None
