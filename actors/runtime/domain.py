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

from ..xs.errors import ConnectionLost, XenStoreError
from ..xs.subscription import WatchEvent
from .context import DomainContext, DomainSnapshot, State
from .mailbox import Envelope, Mailbox
from .supervisor import RestartTracker
from .watches import Hook, Watch

if TYPE_CHECKING:
    from loguru import Logger

    from ..xs.client import XenStore
    from .runtime import Runtime

__all__ = ["DomainActor", "HandlerError", "HandlerFailed", "HandlerTimeout", "call_handler", "log_failure"]

_UNWATCH_DEADLINE = 2.0


class HandlerError(Exception):
    """Raise this (or a subclass) from a handler for an expected failure, e.g. a command that exited non-zero:
    the supervisor treats it like any other, but logs it in one line, without a traceback."""


class HandlerTimeout(HandlerError):
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


def log_failure(log: Logger, failure: HandlerFailed, level: str = "ERROR") -> None:
    """A failure with its traceback; an expected one (HandlerError) in one line."""
    if isinstance(failure.error, HandlerError):
        log.log(level, "{} failed: {}", failure.what, failure.error)
    else:
        log.opt(exception=failure.error).log(level, "{} failed", failure.what)


async def call_hook(ctx: DomainContext, hook: Hook, what: str) -> None:
    try:
        await hook(ctx)
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
        self.desired: bytes | None = identity  # what the registry wants: an identity, or None (gone)
        self.state = State.STARTING  # waited on through the runtime's `changed` event, not per actor
        self.mailbox = Mailbox(runtime.options.mailbox_size, runtime.options.overflow_limit)
        self.tracker = RestartTracker(runtime.options.restart)
        self.generation = 0
        self.handled = 0
        self.dropped = 0
        self.interrupted = 0
        self.failures = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.log = logger.bind(domid=domid)
        self._registered: dict[int, tuple[XenStore, str, str]] = {}
        self._attach_lock = trio.Lock()
        # One task per actor, so a stop request reaches it through these rather than through a watcher task:
        # _wake exists while the actor waits in backoff or failed, _busy_scope while a handler or hook runs.
        self._wake: trio.Event | None = None
        self._reset_requested = False
        self._busy_scope: trio.CancelScope | None = None
        self._changed_at = 0.0  # when ``desired`` last changed: the stop deadline counts from there

    def snapshot(self) -> DomainSnapshot:
        return DomainSnapshot(
            domid=self.domid,
            state=self.state,
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
        self._reset_requested = True
        if self._wake is not None:
            self._wake.set()

    def set_desired(self, identity: bytes | None) -> None:
        """The registry's word: run with this identity (a change means the domid was reused), or stop (None).

        Never blocks: an idle actor is woken at once; a running handler gets most of the stop deadline to
        finish (its cancel scope's deadline is brought forward), then is cancelled.
        """
        if identity == self.desired:
            return
        self.desired = identity
        self._changed_at = trio.current_time()
        if self._wake is not None:
            self._wake.set()
        self.mailbox.interrupt()  # an idle actor wakes up and sees the change
        if self._busy_scope is not None:
            grace = trio.current_time() + self.rt.options.stop_deadline * 0.75
            self._busy_scope.deadline = min(self._busy_scope.deadline, grace)

    async def _wait_wake(self) -> None:
        self._wake = trio.Event()
        try:
            await self._wake.wait()
        finally:
            self._wake = None

    def post(self, watch: Watch, generation: int, watch_path: str, event: WatchEvent) -> None:
        """The router's way in: called from the connection's reader task, never blocks."""
        if generation != self.generation or self.state not in (State.STARTING, State.RUNNING):
            self.dropped += 1
            return
        self.mailbox.post(Envelope(watch, event, watch_path))

    async def attach(self) -> None:
        """Register every per-domain watch that is not registered on the current connection yet."""
        if self.state not in (State.STARTING, State.RUNNING):
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
                while (identity := self.desired) is not None:
                    await self._live(identity)
            finally:
                self.rt._forget(self)

    async def _live(self, identity: bytes) -> None:
        self.identity = identity
        self.tracker.reset()
        self.log.info("domain actor starting (identity {!r})", identity)
        while True:
            failure = await self._incarnation(identity)
            if self.desired != identity:
                return
            assert failure is not None
            self.failures += 1
            self.last_error = f"{failure.what}: {failure.error!r}"
            self.rt._count_failure(self.domid)
            log_failure(self.log, failure)
            if not self.tracker.failed(trio.current_time()):
                self._set_state(State.FAILED)
                policy = self.tracker.policy
                self.log.error(
                    "more than {} failures within {:g} s: domain failed; its events are dropped until its"
                    " identity changes or it is reset",
                    policy.max_restarts,
                    policy.period,
                )
                self._reset_requested = False
                while self.desired == identity and not self._reset_requested:
                    await self._wait_wake()
                if self.desired != identity:
                    return
                self.log.info("domain reset")
                self.tracker.reset()
                continue
            delay = self.tracker.next_delay()
            self._set_state(State.BACKOFF)
            self.log.info("restarting in {:.3g} s", delay)
            with trio.move_on_after(delay):
                while self.desired == identity:
                    await self._wait_wake()
            if self.desired != identity:
                return
            self.restarts += 1
            self.rt._count_restart(self.domid)

    def _set_state(self, state: State) -> None:
        self.state = state
        self.rt._changed()

    async def _incarnation(self, identity: bytes) -> HandlerFailed | None:
        """Start, then serve until asked to stop (returns None) or until a handler fails (returns the failure)."""
        self.generation += 1
        self.dropped += self.mailbox.purge()
        self._set_state(State.STARTING)
        ctx = DomainContext(self.domid, identity, self.rt, self.log)
        try:
            try:
                for hook in self.rt.start_hooks():
                    with trio.CancelScope() as self._busy_scope:
                        await call_hook(ctx, hook, "on_start hook")
                    self._busy_scope = None
                if self.desired == identity:
                    await self.attach()
                    self._set_state(State.RUNNING)
                    await self._serve(ctx, identity)
            except HandlerFailed as failure:
                return failure
            finally:
                self._busy_scope = None
            await self._stop(ctx)
            return None
        finally:
            await self.detach()
            self.dropped += self.mailbox.purge()

    async def _serve(self, ctx: DomainContext, identity: bytes) -> None:
        """Handle events one at a time, in order, until ``desired`` changes. Raises HandlerFailed."""
        while self.desired == identity:
            envelope = await self.mailbox.receive()
            if envelope is None:
                continue  # interrupted: look at desired again
            if not envelope.watch.active:
                self.dropped += 1
                continue
            self.rt._observe_latency(self.domid, trio.current_time() - envelope.event.received_at)
            completed = False
            with trio.CancelScope() as self._busy_scope:
                completed = await call_handler(ctx, envelope.watch, envelope.event)
            self._busy_scope = None
            if completed:
                self.handled += 1
                self.rt._count_event(self.domid)
            else:
                self.interrupted += 1  # a lost connection, or cut short by a stop request

    async def _stop(self, ctx: DomainContext) -> None:
        """No new events; on_stop hooks within the stop deadline. (A handler that was running had up to three
        quarters of the deadline to finish, through set_desired, before it was cancelled.)"""
        self._set_state(State.STOPPING)
        self.log.info("domain actor stopping")
        await self.detach()
        self.dropped += self.mailbox.purge()
        # The whole stop, a running handler's grace included, ends within the deadline of the request; on_stop
        # gets what the handler left of it, and at least a quarter.
        stop_at = max(
            self._changed_at + self.rt.options.stop_deadline,
            trio.current_time() + self.rt.options.stop_deadline * 0.25,
        )
        with trio.move_on_at(stop_at) as scope:
            for hook in self.rt.stop_hooks():
                try:
                    await call_hook(ctx, hook, "on_stop hook")
                except HandlerFailed as failure:
                    log_failure(self.log, failure, level="WARNING")
        if scope.cancelled_caught:
            self.log.warning("on_stop hooks cut short by the stop deadline")
