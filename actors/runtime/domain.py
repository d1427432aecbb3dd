"""The per-domU actor: its own mailbox, its own cancel scope, its own supervisor.

One actor per guest domain, as a ``[xen-mtwatch-<domid>]`` kthread would be: its handlers run one at a time in
event order; a handler that raises or overruns its timeout cancels only this actor's scope, is logged with the
domid and counted, and the actor restarts after a backoff (on_start again, watches again; registering a watch
makes the daemon fire it once, which is the resync event). Too many failures within the policy's period and the
actor stays ``failed`` until its identity changes or ``rt.reset(domid)``.
"""

from __future__ import annotations

import functools
from contextlib import suppress
from typing import TYPE_CHECKING

import trio
from loguru import logger
from trio_util import AsyncValue

from ..xs.errors import ConnectionLost, XenStoreError
from ..xs.subscription import WatchEvent
from .context import DomainContext, DomainSnapshot, State
from .mailbox import Envelope, Mailbox
from .supervisor import RestartTracker
from .watches import Watch

if TYPE_CHECKING:
    from ..xs.client import XenStore
    from .runtime import Runtime

__all__ = ["DomainActor", "HandlerFailed", "HandlerTimeout", "call_handler"]

_UNWATCH_DEADLINE = 2.0


class HandlerTimeout(Exception):
    """A handler ran longer than its watch's ``timeout``."""


class HandlerFailed(Exception):
    """Carries a handler's (or hook's) exception to its actor's supervisor; never leaves the actor."""

    def __init__(self, error: BaseException, what: str) -> None:
        super().__init__(f"{what}: {error!r}")
        self.error = error
        self.what = what


def _is_connection_loss(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionLost):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_connection_loss(e) for e in exc.exceptions)
    return False


async def call_handler(ctx: DomainContext, watch: Watch, event: WatchEvent) -> bool:
    """Run one handler under its watch's timeout. True if it completed, False if it was cut short by a lost
    connection (not the domain's fault: the watch fires again after the reconnect). Raises HandlerFailed."""
    try:
        if watch.timeout is None:
            await watch.handler(ctx, event)
        else:
            with trio.move_on_after(watch.timeout) as scope:
                await watch.handler(ctx, event)
            if scope.cancelled_caught:
                raise HandlerTimeout(f"handler of {watch.name!r} overran its timeout of {watch.timeout:g} s")
    except Exception as exc:
        if _is_connection_loss(exc):
            return False
        raise HandlerFailed(exc, f"handler of {watch.name!r} for {event.path}") from exc
    return True


async def call_hook(ctx: DomainContext, hook: object, what: str) -> None:
    try:
        await hook(ctx)  # type: ignore[operator]
    except Exception as exc:
        if _is_connection_loss(exc):
            return
        raise HandlerFailed(exc, what) from exc


class DomainActor:
    """Lives from its mtwatch node's appearance to its removal; see the module docstring."""

    def __init__(self, runtime: Runtime, domid: int, identity: bytes) -> None:
        self.rt = runtime
        self.domid = domid
        self.identity = identity
        self.desired: AsyncValue[bytes | None] = AsyncValue(identity)
        self.state: AsyncValue[State] = AsyncValue(State.STARTING)
        self.mailbox = Mailbox(runtime.mailbox_size, runtime.overflow_limit)
        self.tracker = RestartTracker(runtime.restart_policy)
        self.generation = 0
        self.handled = 0
        self.dropped = 0
        self.interrupted = 0
        self.failures = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.log = logger.bind(domid=domid)
        self._reset = trio.Event()
        self._registered: dict[int, tuple[XenStore, str, str]] = {}
        self._attach_lock = trio.Lock()
        self._in_handler: trio.Event | None = None
        self._serve_scope: trio.CancelScope | None = None
        self._failure: HandlerFailed | None = None

    # -- what the registry and the runtime call ------------------------------------------------------------

    def snapshot(self) -> DomainSnapshot:
        return DomainSnapshot(
            domid=self.domid,
            state=self.state.value,
            identity=self.identity,
            mailbox_depth=len(self.mailbox),
            handled=self.handled,
            coalesced=self.mailbox.coalesced,
            dropped=self.dropped,
            failures=self.failures,
            restarts=self.restarts,
            last_error=self.last_error,
        )

    def reset(self) -> None:
        """Leave the failed state and start again with a clean restart history."""
        self._reset.set()

    def post(self, watch: Watch, generation: int, watch_path: str, event: WatchEvent) -> None:
        """The router's way in: called from the connection's reader task, never blocks."""
        if generation != self.generation or self.state.value is State.STOPPING:
            self.dropped += 1
            return
        self.mailbox.post(Envelope(watch, event, generation, watch_path))

    async def attach(self) -> None:
        """Register every per-domain watch that is not registered on the current connection yet."""
        if self.state.value not in (State.STARTING, State.RUNNING):
            return
        async with self._attach_lock:
            xs = self.rt.connection
            if xs is None or xs.is_lost:
                return
            generation = self.generation
            for watch in self.rt.domain_watches():
                held = self._registered.get(watch.id)
                if held is not None and held[0] is xs:
                    continue
                path, token = watch.path(self.domid), watch.token(self.domid, generation)
                sink = functools.partial(self.post, watch, generation, path)
                try:
                    await xs.add_watch(path, token, sink)
                except ConnectionLost:
                    return  # the reconnect attaches again
                except XenStoreError as exc:
                    self.log.warning("cannot watch {}: {}", path, exc)
                    continue
                self._registered[watch.id] = (xs, path, token)

    async def detach(self, only: Watch | None = None) -> None:
        """Unregister this actor's watches (or one of them); bounded in time, safe under cancellation."""
        with trio.CancelScope(shield=True), trio.move_on_after(_UNWATCH_DEADLINE):
            async with self._attach_lock:
                for watch_id in list(self._registered):
                    if only is not None and watch_id != only.id:
                        continue
                    xs, path, token = self._registered.pop(watch_id)
                    if not xs.is_lost:
                        with suppress(XenStoreError):
                            await xs.remove_watch(path, token)

    # -- the actor's own task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The whole life of the actor; returns once its node is gone and it has stopped."""
        with logger.contextualize(domid=self.domid):
            try:
                while (identity := self.desired.value) is not None:
                    await self._live(identity)
            finally:
                self.rt._forget(self)

    async def _live(self, identity: bytes) -> None:
        self.identity = identity
        self.tracker.reset()
        self.log.info("domain actor starting (identity {!r})", identity)
        while True:
            failure = await self._incarnation(identity)
            if self.desired.value != identity:
                return
            assert failure is not None
            self.failures += 1
            self.last_error = f"{failure.what}: {failure.error!r}"
            self.rt._count_failure(self.domid)
            self.log.opt(exception=failure.error).error("{} failed", failure.what)
            if not self.tracker.failed(trio.current_time()):
                self.state.value = State.FAILED
                self.rt._changed()
                policy = self.tracker.policy
                self.log.error(
                    "more than {} failures within {:g} s: domain failed; its events are dropped until its"
                    " identity changes or it is reset",
                    policy.max_restarts,
                    policy.period,
                )
                self._reset = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reset_when_changed, identity)
                    await self._reset.wait()
                    nursery.cancel_scope.cancel()
                if self.desired.value != identity:
                    return
                self.log.info("domain reset")
                self.tracker.reset()
                continue
            delay = self.tracker.next_delay()
            self.state.value = State.BACKOFF
            self.rt._changed()
            self.log.info("restarting in {:.3g} s", delay)
            with trio.move_on_after(delay):
                await self.desired.wait_value(lambda v: v != identity)
            if self.desired.value != identity:
                return
            self.restarts += 1
            self.rt._count_restart(self.domid)

    async def _reset_when_changed(self, identity: bytes) -> None:
        await self.desired.wait_value(lambda v: v != identity)
        self._reset.set()

    async def _incarnation(self, identity: bytes) -> HandlerFailed | None:
        """Start, serve until asked to stop (returns None) or until a handler fails (returns the failure)."""
        self.generation += 1
        self.dropped += self.mailbox.purge()
        self._failure = None
        self.state.value = State.STARTING
        self.rt._changed()
        ctx = DomainContext(self.domid, identity, self.rt, self.log)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    for hook in self.rt.start_hooks():
                        await call_hook(ctx, hook, "on_start hook")
                except HandlerFailed as failure:
                    return failure
                await self.attach()
                if self.state.value is State.STARTING:
                    self.state.value = State.RUNNING
                    self.rt._changed()
                self._serve_scope = trio.CancelScope()
                nursery.start_soon(self._serve, ctx, self.generation, self._serve_scope, nursery.cancel_scope)
                await self.desired.wait_value(lambda v: v != identity)
                await self._stop(ctx)
            return self._failure
        finally:
            self._serve_scope = None
            await self.detach()
            self.dropped += self.mailbox.purge()

    async def _serve(
        self, ctx: DomainContext, generation: int, scope: trio.CancelScope, incarnation: trio.CancelScope
    ) -> None:
        with scope:
            try:
                while True:
                    envelope = await self.mailbox.receive()
                    if envelope.generation != generation or not envelope.watch.active:
                        self.dropped += 1
                        continue
                    self.rt._observe_latency(self.domid, trio.current_time() - envelope.event.received_at)
                    self._in_handler = done = trio.Event()
                    try:
                        completed = await call_handler(ctx, envelope.watch, envelope.event)
                    finally:
                        self._in_handler = None
                        done.set()
                    if completed:
                        self.handled += 1
                        self.rt._count_event(self.domid)
                    else:
                        self.interrupted += 1
            except HandlerFailed as failure:
                self._failure = failure
                incarnation.cancel()

    async def _stop(self, ctx: DomainContext) -> None:
        """Graceful stop: no new events, the running handler may finish within most of the stop deadline, then
        it is cancelled; on_stop hooks get the rest of the deadline."""
        self.state.value = State.STOPPING
        self.rt._changed()
        self.log.info("domain actor stopping")
        deadline = self.rt.stop_deadline
        stop_at = trio.current_time() + deadline
        await self.detach()
        self.dropped += self.mailbox.purge()
        running = self._in_handler
        if running is not None:
            with trio.move_on_at(stop_at - deadline * 0.25):
                await running.wait()
        if self._serve_scope is not None:
            self._serve_scope.cancel()
        with trio.move_on_at(stop_at) as scope:
            for hook in self.rt.stop_hooks():
                try:
                    await call_hook(ctx, hook, "on_stop hook")
                except HandlerFailed as failure:
                    self.log.opt(exception=failure.error).warning("{} failed", failure.what)
        if scope.cancelled_caught:
            self.log.warning("on_stop hooks cut short by the stop deadline ({:g} s)", deadline)
