"""The per-domU actor: its own mailbox, its own nursery per incarnation, its own supervisor.

One actor per guest domain, as a ``[xen-mtwatch-<domid>]`` kthread would be: its handlers run one at a time in
event order. Everything that runs for the domain runs inside one nursery per incarnation (on_start hooks,
watches, handlers, messages, the tasks of ``ctx.start_soon``); whatever raises there, or an observer called for
the domain, or a bug in this module, is a failure of this domain only: logged with the domid, counted, the
incarnation cancelled, and the actor restarted after a backoff (on_start again, watches again; registering a
watch makes the daemon fire it once, which is the resync event). Too many failures within the policy's period
and the actor stays ``failed`` until its identity changes or ``rt.reset(domid)``.

This module is the actor's life: what the runtime asks of it (never blocking), its watches, its supervision, an
incarnation's start and stop. Its mailbox side (messages in, the serving loop out) is :mod:`.serving`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from ..._log import logger
from ..watch_rules import Watch
from .calls import HandlerFailed, call_hook, failure_of, log_failure, run_task
from .context import DomainContext, DomainSnapshot, State
from .floodgate import FloodGate
from .mailbox import Mailbox
from .owner import ActorHost
from .registrations import Registrations
from .serving import ACCEPTING, Serving
from .supervisor import RestartTracker

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["DomainActor"]


def _log_starting(identity: bytes) -> None:
    # Not from the coroutine: loguru takes its caller's frame object, which a coroutine keeps for its life.
    logger.info("domain actor starting (identity {!r})", identity)


class DomainActor(Serving):
    """Lives from its mtwatch node's appearance to its removal; see the module docstring."""

    # Slots: 32,000 actors each with an instance dict of 30 entries would cost 1.5 KB apiece.
    __slots__ = (
        "_changed_at",
        "_log",
        "_prestarted",
        "_reload_requested",
        "_reset_requested",
        "_wake",
        "desired",
        "domid",
        "failure",
        "failures",
        "flood",
        "generation",
        "identity",
        "last_error",
        "last_exception",
        "mailbox",
        "name",
        "nursery",
        "restarts",
        "rt",
        "scope",
        "state",
        "stopping_since",
        "task",
        "tracker",
        "watches",
    )

    def __init__(self, runtime: ActorHost, domid: int, identity: bytes) -> None:
        super().__init__()
        self.rt = runtime
        self.domid = domid
        self.identity = identity
        self.desired: bytes | None = identity  # what the registry wants: an identity, or None (gone)
        self.state = State.STARTING  # waited on through the runtime's `changed` event, not per actor
        options = runtime.options
        self.mailbox = Mailbox(options.mailbox_size, options.overflow_limit, options.message_limit)
        self.tracker: RestartTracker | None = None  # made at the first failure: most actors never fail
        self.generation = 0
        self.failures = 0
        self.restarts = 0
        self.name: str | None = None
        self.stopping_since: float | None = None
        self.last_error: str | None = None
        self.last_exception: BaseException | None = None
        self.failure: HandlerFailed | None = None  # the running incarnation's failure, once it has one
        self._log: Logger | None = None  # bound on first use: most actors never log outside their task
        self.scope: trio.CancelScope | None = None  # the running incarnation's nursery's scope
        self.nursery: trio.Nursery | None = None
        self.task: trio.lowlevel.Task | None = None  # the actor's own task, while it runs
        self.watches = Registrations(domid)
        self.flood = FloodGate(runtime.options)
        # One task per actor, so a stop request reaches it through these rather than through a watcher task:
        # _wake exists while the actor waits in backoff or failed.
        self._wake: trio.Event | None = None
        self._reset_requested = False
        self._reload_requested = False
        self._changed_at = 0.0  # when ``desired`` last changed: the stop deadline counts from there
        self._prestarted: bytes | None = None  # see prestart()

    def prestart(self) -> None:
        """Before its task starts: its first incarnation's name and watches are the runtime's to get (see
        :meth:`.starting.StartRequests.prestart`), for generation 1; events that arrive meanwhile wait in the
        mailbox (the watches' initial events: the first resync)."""
        self.generation = 1
        self._prestarted = self.identity

    @property
    def log(self) -> Logger:
        """loguru, bound with the domid."""
        if self._log is None:
            self._log = logger.bind(domid=self.domid)
        return self._log

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
            name=self.name,
            busy_since=self.busy_since,
            busy_path=self.busy_path,
            throttled_since=self.flood.throttled_since,
            stopping_since=self.stopping_since,
            last_exception=self.last_exception,
            dropped_by_reason=dict(self._dropped_by or {}),
        )

    # -- what the runtime calls (never blocks) ----------------------------------------------------------

    def reset(self) -> None:
        """Leave the failed state and start again with a clean restart history."""
        self._reset_requested = True
        if self._wake is not None:
            self._wake.set()

    def reload(self) -> None:
        """End the running incarnation (its tasks cancelled with reason ``reload``, on_stop hooks run) and
        start a new one (on_start hooks, watches): not a failure."""
        if self.state in ACCEPTING:
            self._reload_requested = True
            self._request_stop()

    def set_desired(self, identity: bytes | None) -> None:
        """The registry's word: run with this identity (a change means the domid was reused), or stop (None).

        An idle actor is woken at once; a running handler or hook gets three quarters of the stop deadline to
        finish (the incarnation's deadline is brought forward), then is cancelled. Asked back to what it
        runs before it stopped, the actor carries on.
        """
        if identity == self.desired:
            return
        self.desired = identity
        self._changed_at = trio.current_time()
        if self._wake is not None:
            self._wake.set()
        if identity == self.identity and self.scope is not None and self.state in ACCEPTING:
            self.scope.deadline = math.inf  # a stop withdrawn in time
            return
        self._request_stop()

    def _request_stop(self) -> None:
        # Parked on its empty mailbox, it runs nothing a deadline could cut short: the interrupt alone stops it.
        idle = self.mailbox.receiving
        self.mailbox.interrupt()  # an idle actor wakes up and sees the change
        if self.scope is not None and not idle:
            grace = trio.current_time() + self.rt.options.stop_deadline * 0.75
            self.scope.deadline = min(self.scope.deadline, grace)

    def charge(self, failure: HandlerFailed) -> None:
        """A failure that happened for this domain outside its own task (an observer, the watchdog): it ends
        the running incarnation like a handler's failure; between incarnations it is logged and counted."""
        if self.scope is not None and self.failure is None and self.state in ACCEPTING:
            self.failure = failure
            self.scope.cancel(reason="restart")
        else:
            self._record(failure)

    # -- watches ----------------------------------------------------------------------------------------

    @property
    def may_attach(self) -> bool:
        """Watches are registered while the actor starts or runs, and not throttled (the throttle's end does)."""
        return self.state in ACCEPTING and self.flood.throttled_since is None

    async def attach(self) -> None:
        """Register every per-domain watch that is not registered on the current connection yet (not while
        throttled: the throttle's end does it), in one of the runtime's pipelines with other actors'. Another
        attach or detach holding the domain's turn is waited for, then what is still missing is asked again.
        A lost connection ends it quietly (the reconnect attaches again)."""
        while self.may_attach:
            xs = self.rt.connection
            if xs is None or xs.is_lost:
                return
            if self.watches.busy:
                await self.watches.wait_turn()
                continue
            if not self.watches.missing(xs, self.rt.domain_watches()):
                return  # nothing to register (the second attach of a start): no wait
            if await self.rt.starts.ask(self, name=False, attach=True):
                return

    async def detach(self, only: Watch | None = None) -> None:
        """Unregister this actor's watches (or one of them); bounded in time, safe under cancellation. At the
        runtime's shutdown on a connection of its own, only forgotten: closing the connection next drops them
        at the daemon, and 32,000 UNWATCH round trips would only delay leaving."""
        if only is None and self.rt.closing and self.rt.owns_connection:
            self.watches.forget()
        else:
            await self.watches.detach(only)

    # -- the actor's own task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The whole life of the actor; returns once its node is gone and it has stopped. Raises nothing but
        Cancelled: a bug here is logged and ends only this actor (the next registry event makes a new one)."""
        self.task = trio.lowlevel.current_task()
        # The runtime spawned this task inside ``logger.contextualize(domid=...)``: its log lines (and the
        # handlers') carry the domid.
        try:
            while (identity := self.desired) is not None:
                await self._live(identity)
            if not self.watches.empty:  # prestarted, and gone before its task began
                await self.detach()
        except Exception:
            logger.opt(exception=True).critical("domain actor crashed: a bug in mtwatch")
        finally:
            self.task = None
            self.rt._forget(self.domid, self)

    async def _live(self, identity: bytes) -> None:
        """Incarnations with this identity, supervised, until ``desired`` changes."""
        self.identity = identity
        self.tracker = None  # a new identity starts with a clean restart history
        _log_starting(identity)
        while True:
            try:
                failure = await self._incarnation(identity)
            except Exception as exc:  # a bug in the actor's own code costs only this domain
                failure = HandlerFailed(exc, "domain actor")
            if failure is not None:
                self._record(failure)
            if self.desired != identity:
                return
            if failure is None:
                continue  # reloaded, or retired and announced again while it stopped: a fresh incarnation
            if not await self._back_off(identity):
                return
            self.restarts += 1
            self.rt._emit("restart", self.domid)

    def _record(self, failure: HandlerFailed) -> None:
        self.failures += 1
        self.last_error = f"{failure.what}: {failure.error!r}"
        self.last_exception = failure.error
        log_failure(self.log, failure)
        self.rt._emit("failure", self.domid)

    async def _back_off(self, identity: bytes) -> bool:
        """After a failure: wait the backoff, or stay failed until reset. False if ``desired`` changed."""
        if self.tracker is None:
            self.tracker = RestartTracker(self.rt.options.restart)
        tracker = self.tracker
        if not tracker.failure_allows_restart(trio.current_time()):
            self._set_state(State.FAILED)
            policy = tracker.policy
            logger.error(
                "more than {} failures within {:g} s: domain failed; its events are dropped until its"
                " identity changes or it is reset",
                policy.max_restarts,
                policy.period,
            )
            self._reset_requested = False
            while self.desired == identity and not self._reset_requested:
                await self._wait_wake()
            if self.desired == identity:
                logger.info("domain reset")
                tracker.reset()
            return self.desired == identity
        delay = tracker.next_delay()
        self._set_state(State.BACKOFF)
        logger.info("restarting in {:.3g} s", delay)
        with trio.move_on_after(delay):
            while self.desired == identity:
                await self._wait_wake()
        return self.desired == identity

    async def _wait_wake(self) -> None:
        self._wake = trio.Event()
        try:
            await self._wake.wait()
        finally:
            self._wake = None

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.rt._changed()

    async def _incarnation(self, identity: bytes) -> HandlerFailed | None:
        """Start, then serve until asked to stop (stop, then return None) or until something in the domain's
        scope fails (return the failure)."""
        prestarted = self._prestarted == identity
        self._prestarted = None
        if not prestarted:
            if not self.watches.empty:  # prestarted for an identity it no longer has
                await self.detach()
            self.generation += 1
            self._purge()
        self.failure = None
        self._reload_requested = False
        self._set_state(State.STARTING)
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self.scope, self.nursery = nursery.cancel_scope, nursery
                    ctx = DomainContext(self.domid, identity, self.rt, None, nursery, run_task)
                    if await self._start(ctx, identity, prestarted):
                        await self._serve(ctx, identity)
                    self._begin_stop()
                    nursery.cancel_scope.cancel(reason=self._stop_reason(identity))
            except* Exception as group:
                if self.failure is None:
                    self.failure = failure_of(group, "domain actor")
            finally:
                self.scope = self.nursery = None
                self.busy_since = self.busy_path = None
            if self.failure is not None:
                return self.failure
            if self.state is not State.STOPPING:  # the stop grace ran out and cancelled a handler or hook
                self._begin_stop()
            await self._stop(ctx)
            return None
        finally:
            self.stopping_since = None
            self.flood.unthrottle(self)
            await self.detach()
            self._purge()

    def _stop_reason(self, identity: bytes) -> str:
        if self._reload_requested and self.desired == identity:
            return "reload"
        if self.desired is None:
            return "shutdown" if self.rt.closing else "retired"
        return "restart"

    async def _start(self, ctx: DomainContext, identity: bytes, prestarted: bool) -> bool:
        """The name, on_start hooks, watches; True if the actor runs now (False: asked to stop meanwhile).
        (Returns before serving: one coroutine frame less per idle actor than calling serve from here.)

        The name's READ and the watches' WATCHes go in the runtime's pipelines with other starting actors'
        (see :mod:`.starting`): done before this task began for a new actor (``prestarted``), else one wait
        for both when there are no on_start hooks, which run in between."""
        hooks = self.rt.start_hooks()
        if not prestarted and not await self.rt.starts.ask(
            self, name=True, attach=not hooks and self.may_attach
        ):
            await self.attach()  # another attach or detach held the turn: wait for it, then ask again
        for hook in hooks:
            await call_hook(ctx, hook, "on_start hook")
        if self.desired != identity or self._reload_requested:
            return False
        if hooks or prestarted:  # (prestarted: nothing left to register, unless the connection was lost)
            await self.attach()
        self._set_state(State.RUNNING)
        return True

    def _begin_stop(self) -> None:
        self._set_state(State.STOPPING)
        self.stopping_since = trio.current_time()
        self.rt._stop_begins(self.domid)

    async def _stop(self, ctx: DomainContext) -> None:
        """No new events; on_stop hooks within the stop deadline. (A handler that was running had up to three
        quarters of the deadline to finish, through set_desired, before it was cancelled.)"""
        logger.info("domain actor stopping")
        await self.detach()
        self._purge()
        # The whole stop, a running handler's grace included, ends within the deadline of the request; on_stop
        # gets what the handler left of it, and at least a quarter.
        hooks = self.rt.stop_hooks()
        if not hooks:
            return
        deadline = self.rt.options.stop_deadline
        stop_at = max(self._changed_at + deadline, trio.current_time() + deadline * 0.25)
        with trio.move_on_at(stop_at) as scope:
            for hook in hooks:
                try:
                    await call_hook(ctx, hook, "on_stop hook")
                except HandlerFailed as failure:
                    log_failure(self.log, failure, level="WARNING")
        if scope.cancelled_caught:
            logger.warning("on_stop hooks cut short by the stop deadline")
