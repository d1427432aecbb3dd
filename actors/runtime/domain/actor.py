"""The per-domU actor: its own mailbox, its own nursery per incarnation, its own supervisor.

One actor per guest domain, as a ``[xen-mtwatch-<domid>]`` kthread would be: its handlers run one at a time in
event order. Everything that runs for the domain runs inside one nursery per incarnation (on_start hooks,
watches, handlers, messages, the tasks of ``ctx.start_soon``); whatever raises there, or an observer called for
the domain, or a bug in this module, is a failure of this domain only: logged with the domid, counted, the
incarnation cancelled, and the actor restarted after a backoff (on_start again, watches again; registering a
watch makes the daemon fire it once, which is the resync event). Too many failures within the policy's period
and the actor stays ``failed`` until its identity changes or ``rt.reset(domid)``.

This module is the actor's own task: what the runtime asks of it (never blocking, each an event applied to its
:class:`~.life.Life`, the state machine), its watches, its supervision, an incarnation's start and stop. It owns
its :class:`~.serving.Inbox` (events and messages in, the serving loop out) and its life.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from ..._log import logger
from ..watch_rules import Watch
from .calls import HandlerFailed, call_hook, failure_of, log_failure, run_task
from .context import DomainContext, DomainSnapshot, State
from .life import ACCEPTING, Action, Asked, Event, Life
from .owner import ActorHost
from .registrations import Registrations
from .serving import Inbox
from .supervisor import RestartTracker

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["DomainActor"]


def _log_starting(identity: bytes) -> None:
    # Not from the coroutine: loguru takes its caller's frame object, which a coroutine keeps for its life.
    logger.info("domain actor starting (identity {!r})", identity)


class DomainActor:
    """Lives from its mtwatch node's appearance to its removal; see the module docstring."""

    # Slots: 32,000 actors each with an instance dict would cost a kilobyte apiece.
    __slots__ = (
        "_log",
        "domid",
        "failures",
        "inbox",
        "last_error",
        "last_exception",
        "life",
        "name",
        "nursery",
        "restarts",
        "rt",
        "scope",
        "task",
        "tracker",
        "watches",
    )

    def __init__(self, runtime: ActorHost, domid: int, identity: bytes) -> None:
        self.rt = runtime
        self.domid = domid
        self.life = Life(runtime, domid, identity, runtime.options.stop_deadline)
        self.inbox = Inbox(domid, runtime, self.life, self)
        self.tracker: RestartTracker | None = None  # made at the first failure: most actors never fail
        self.failures = 0
        self.restarts = 0
        self.name: str | None = None
        self.last_error: str | None = None
        self.last_exception: BaseException | None = None
        self._log: Logger | None = None  # bound on first use: most actors never log outside their task
        self.scope: trio.CancelScope | None = None  # the running incarnation's nursery's scope
        self.nursery: trio.Nursery | None = None
        self.task: trio.lowlevel.Task | None = None  # the actor's own task, while it runs
        self.watches = Registrations(domid)

    def prestart(self) -> None:
        """Before its task starts: its first incarnation's name and watches are the runtime's to get (see
        :meth:`.starting.StartRequests.prestart`), for generation 1; events that arrive meanwhile wait in the
        mailbox (the watches' initial events: the first resync). Its task is then run with ``prestarted``."""
        self.life.generation = 1

    @property
    def state(self) -> State:
        state = self.life.state
        assert state is not None
        return state

    @property
    def identity(self) -> bytes:
        return self.life.identity

    @property
    def log(self) -> Logger:
        """loguru, bound with the domid."""
        if self._log is None:
            self._log = logger.bind(domid=self.domid)
        return self._log

    @property
    def stopping_since(self) -> float | None:
        return self.life.stopping_since

    def snapshot(self) -> DomainSnapshot:
        inbox = self.inbox
        return DomainSnapshot(
            domid=self.domid,
            state=self.state,
            identity=self.life.identity,
            mailbox_depth=len(inbox.mailbox),
            handled=inbox.handled,
            coalesced=inbox.mailbox.coalesced,
            dropped=inbox.dropped,
            failures=self.failures,
            restarts=self.restarts,
            last_error=self.last_error,
            name=self.name,
            busy_since=inbox.busy_since,
            busy_path=inbox.busy_path,
            throttled_since=inbox.flood.throttled_since,
            stopping_since=self.stopping_since,
            last_exception=self.last_exception,
            dropped_by_reason=inbox.dropped_by_reason,
        )

    # -- what the runtime calls (never blocks): events applied to the life ---------------------------

    def set_desired(self, identity: bytes | None, *, stopping: bool = False) -> None:
        """The registry's word: run with this identity (a change means the domid was reused), or stop (None;
        ``stopping``: the runtime's own stop).

        An idle actor is woken at once; a running handler or hook has the stop deadline less the on_stop hooks'
        share (the incarnation's scope is due then: :meth:`Life.serve_until`), then is cancelled, and the on_stop
        hooks get what is left of the deadline, at least their share.
        Asked back to what it runs before it stopped, the actor carries on.
        """
        self._act(self.life.announce(identity, stopping=stopping))

    def reset(self) -> None:
        """Leave the failed state and start again with a clean restart history."""
        self._act(self.life.apply(Event.RESET))

    def reload(self) -> None:
        """End the running incarnation (its tasks cancelled with reason ``reload``, on_stop hooks run) and
        start a new one (on_start hooks, watches): not a failure."""
        self._act(self.life.apply(Event.RELOAD))

    def charge(self, failure: HandlerFailed) -> None:
        """A failure that happened for this domain outside its own task (an observer, the watchdog): it ends
        the running incarnation like a handler's failure; between incarnations it is logged and counted."""
        self._act(self.life.apply(Event.FAILURE), failure)

    def _act(self, action: Action, failure: HandlerFailed | None = None) -> None:
        """Do what the life decided (waking a waiting task is the life's own)."""
        scope = self.scope
        if action is Action.END:
            # Parked on its empty mailbox, it runs nothing a deadline could cut short: the interrupt alone
            # stops it.
            mailbox = self.inbox.mailbox
            idle = mailbox.receiving
            mailbox.interrupt()  # an idle actor wakes up and sees the change
            if scope is not None and not idle:
                scope.deadline = min(scope.deadline, self.life.serve_until())
        elif action is Action.WITHDRAW:
            if scope is not None:
                scope.deadline = math.inf  # a stop withdrawn in time
        elif action is Action.CANCEL or action is Action.RECORD:
            assert failure is not None
            if action is Action.CANCEL and scope is not None and self.life.failure is None:
                self.life.failure = failure
                scope.cancel(reason="restart")
            else:  # no incarnation open yet, or it has failed already
                self._record(failure)

    # -- watches ----------------------------------------------------------------------------------------

    @property
    def may_attach(self) -> bool:
        """Watches are registered while the actor starts or runs, and not throttled (the throttle's end does)."""
        return self.life.state in ACCEPTING and self.inbox.flood.throttled_since is None

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

    async def run(self, prestarted: bool = False) -> None:
        """The whole life of the actor; returns once its node is gone and it has stopped. Raises nothing but
        Cancelled: a bug here is logged and ends only this actor (the next registry event makes a new one).
        ``prestarted``: its first incarnation's name and watches were got before (see :meth:`prestart`)."""
        self.task = trio.lowlevel.current_task()
        life = self.life
        first: bytes | None = life.identity if prestarted else None
        # The runtime spawned this task inside ``logger.contextualize(domid=...)``: its log lines (and the
        # handlers') carry the domid.
        try:
            while (identity := life.desired) is not None:
                await self._live(identity, first == identity)
                first = None
            if not self.watches.empty:  # prestarted, and gone before its task began
                await self.detach()
        except Exception:
            logger.opt(exception=True).critical("domain actor crashed: a bug in mtwatch")
        finally:
            self.task = None
            life.move(None)  # gone: the runtime forgets it

    async def _live(self, identity: bytes, prestarted: bool) -> None:
        """Incarnations with this identity, supervised, until ``desired`` changes."""
        life = self.life
        self.tracker = None  # a new identity starts with a clean restart history
        _log_starting(identity)
        while True:
            try:
                failure = await self._incarnation(identity, prestarted)
            except Exception as exc:  # a bug in the actor's own code costs only this domain
                failure = HandlerFailed(exc, "domain actor")
            prestarted = False
            if failure is not None:
                self._record(failure)
            if life.desired != identity:
                return
            if failure is None:
                continue  # reloaded, or retired and announced again while it stopped: a fresh incarnation
            if not await self._back_off(identity):
                return
            self.restarts += 1
            self.rt.observers.emit("restart", self.domid)

    def _record(self, failure: HandlerFailed) -> None:
        self.failures += 1
        self.last_error = f"{failure.what}: {failure.error!r}"
        self.last_exception = failure.error
        log_failure(self.log, failure)
        self.rt.observers.emit("failure", self.domid)

    async def _back_off(self, identity: bytes) -> bool:
        """After a failure: wait the backoff, or stay failed until reset. False if ``desired`` changed."""
        life = self.life
        if self.tracker is None:
            self.tracker = RestartTracker(self.rt.options.restart)
        tracker = self.tracker
        if not tracker.failure_allows_restart(trio.current_time()):
            life.move(State.FAILED)
            policy = tracker.policy
            logger.error(
                "more than {} failures within {:g} s: domain failed; its events are dropped until its"
                " identity changes or it is reset",
                policy.max_restarts,
                policy.period,
            )
            while life.desired == identity and life.asked is not Asked.RESET:
                await life.wait()
            if life.desired == identity:
                logger.info("domain reset")
                tracker.reset()
            return life.desired == identity
        delay = tracker.next_delay()
        life.move(State.BACKOFF)
        logger.info("restarting in {:.3g} s", delay)
        with trio.move_on_after(delay):
            while life.desired == identity:
                await life.wait()
        return life.desired == identity

    async def _incarnation(self, identity: bytes, prestarted: bool) -> HandlerFailed | None:
        """Start, then serve until asked to stop (stop, then return None) or until something in the domain's
        scope fails (return the failure)."""
        life = self.life
        inbox = self.inbox
        life.incarnate(identity, prestarted)
        if not prestarted:
            if not self.watches.empty:  # prestarted for an identity it no longer has, or the last one's
                await self.detach()
            inbox.purge()
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self.scope, self.nursery = nursery.cancel_scope, nursery
                    ctx = DomainContext(self.domid, identity, self.rt, None, nursery, run_task)
                    if await self._start(ctx, prestarted):
                        await inbox.serve(ctx)
                    reason = self._stop_reason(identity)
                    self._begin_stop()
                    nursery.cancel_scope.cancel(reason=reason)
            except* Exception as group:
                if life.failure is None:
                    life.failure = failure_of(group, "domain actor")
            finally:
                self.scope = self.nursery = None
                inbox.busy_since = inbox.busy_path = None
            if life.failure is not None:
                return life.failure
            if life.state is not State.STOPPING:  # the stop deadline ran out and cancelled a handler or hook
                self._begin_stop()
            await self._stop(ctx)
            return None
        finally:
            inbox.flood.unthrottle(self)
            await self.detach()
            inbox.purge()

    def _stop_reason(self, identity: bytes) -> str:
        life = self.life
        if life.asked is Asked.RELOAD and life.desired == identity:
            return "reload"
        if life.desired is None:
            return "shutdown" if self.rt.closing else "retired"
        return "restart"

    async def _start(self, ctx: DomainContext, prestarted: bool) -> bool:
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
        if self.life.ending:
            return False
        if hooks or prestarted:  # (prestarted: nothing left to register, unless the connection was lost)
            await self.attach()
        self.life.move(State.RUNNING)
        return True

    def _begin_stop(self) -> None:
        self.life.move(State.STOPPING)

    async def _stop(self, ctx: DomainContext) -> None:
        """No new events; on_stop hooks within what is left of the stop's deadline (set once, when the stop
        was asked), and at least their share of it (:meth:`Life.hooks_until`)."""
        logger.info("domain actor stopping")
        await self.detach()
        self.inbox.purge()
        hooks = self.rt.stop_hooks()
        if not hooks:
            return
        with trio.move_on_at(self.life.hooks_until()) as scope:
            for hook in hooks:
                try:
                    await call_hook(ctx, hook, "on_stop hook")
                except HandlerFailed as failure:
                    log_failure(self.log, failure, level="WARNING")
        if scope.cancelled_caught:
            logger.warning("on_stop hooks cut short by the stop deadline")
