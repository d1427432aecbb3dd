"""The root of the actor tree: one connection (reconnected when lost), the registry that follows the lifecycle
source (this module's :class:`Runtime` is the registry's sink), the router, the default actor and one actor per
live guest domain, all in one root nursery."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
from trio_util import AsyncBool, RepeatedEvent

from .._log import logger
from ..xs.client import XenStore
from ..xs.errors import ConnectionLost
from .census import Census
from .collector import Collector
from .connection import ConnectionFactory, follow_lifecycle, keep_connected
from .default_actor import DefaultActor
from .domain.actor import DomainActor
from .domain.calls import HandlerFailed, log_failure
from .domain.context import DomainContext, DomainSnapshot, State
from .domain.messages import DomainNotRunning
from .domain.owner import MessageHandler
from .domain.stacks import DomainStacks, domain_stacks
from .domain.starting import Starting, StartRequests
from .domain.supervisor import ReconnectPolicy
from .domains_view import DomainsView
from .exception_groups import first_leaf
from .lifecycle.auto import AutoSource
from .lifecycle.domains import DomainsSource
from .lifecycle.mtwatch import MtwatchSource
from .lifecycle.protocol import LifecycleSource
from .lifecycle.requests import gather_bounded
from .messaging import Messaging
from .observers import Observer, Observers
from .options import RuntimeOptions
from .quota import QuotaReport, QuotaTelemetry
from .router import Router
from .settling import settle
from .slices import in_slices
from .stopwatch import StopWatch
from .watch_rules import Handler, Hook, Route, Watch
from .watchdog import LoopBlocked, Watchdog
from .workers.context import check_process_handler
from .workers.pool import WorkerPool, WorkerPoolSnapshot

__all__ = ["Runtime", "open_runtime"]

_ATTACH_CONCURRENCY = 256
_UNWATCH_BATCH = 512  # actors whose watches go in one pipeline when leaving on the caller's connection
_WAKE_BATCH = 64  # actors told to stop in one turn of the loop when the runtime ends
_UNWATCH_DEADLINE = 2.0  # seconds the pipelined unwatching at the end may take before the actors are told


class Runtime:
    """Made by :func:`open_runtime`; see there. It owns its collaborators: the actors by domid, the default
    actor, the router, the start requests, the observers, the messaging, the stop watch and the watchdog."""

    def __init__(self, nursery: trio.Nursery, source: LifecycleSource, options: RuntimeOptions) -> None:
        self._nursery = nursery
        self.source = source
        self.options = options
        self.connection: XenStore | None = None
        self.reconnects = 0
        self.owns_connection = False  # set by keep_connected for every connection it serves
        self.disconnected_since: float | None = None
        self.ready = trio.Event()
        self.connected = AsyncBool(False)
        self.changed = RepeatedEvent()  # see _changed()
        self._change = trio.Event()  # a change not yet announced on ``changed``
        self._actors: dict[int, DomainActor] = {}
        self.census = Census()  # counts by state and the domains in trouble, kept as they change
        self._domains = DomainsView(self._actors)
        self._watches: list[Watch] = []
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        self.observers = Observers(self._observer_failed)
        self._messaging = Messaging(self._actors.get, options.message_limit)
        self._default = DefaultActor(self)
        self._router = Router(self, self._default)
        self._stopwatch = StopWatch(options.stop_deadline, options.stop_warn_every)
        self._workers = trio.CapacityLimiter(options.worker_threads)
        self._pool = WorkerPool(options, self._name_of, self._xenstore_address)
        self.starts = StartRequests(self.domain_watches, self._spawn_prestarted)
        self._watchdog: Watchdog | None = None
        self._closing = False
        self._progress: trio.Event | None = None  # see progress_event()
        self._quota = QuotaTelemetry(options.quota_interval, options.quota_threshold, self._actors.keys)
        self.collector = Collector(options.gc_freeze_at)

    # -- public face ---------------------------------------------------------------------------------------

    @property
    def xs(self) -> XenStore:
        """The current connection (after a loss and before the reconnect, the dead one: calls fail at once)."""
        if self.connection is None:
            raise ConnectionLost("the runtime has not connected to xenstored yet")
        return self.connection

    @property
    def lifecycle_name(self) -> str:
        """The lifecycle source in use: ``"mtwatch"`` or ``"domains"`` (``"auto"`` names the one it follows
        now), or a custom source's name."""
        current = getattr(self.source, "current", None)
        return current if isinstance(current, str) else self.source.name

    @property
    def domains(self) -> Mapping[int, DomainSnapshot]:
        """Every domain actor's snapshot, by domid: a read-only view whose items are built when read
        (``rt.domains[7]`` costs one snapshot; ``dict(rt.domains)`` snapshots them all). For counts by state
        and the domains in trouble, ``rt.census`` keeps them without walking every domain."""
        return self._domains

    @property
    def quotas(self) -> QuotaReport:
        """Each live domain's XenStore quota use and limits as the last round read them (every
        ``quota_interval`` seconds), and the domains above ``quota_threshold``; see QuotaReport."""
        return self._quota.report()

    def stacks(self, domid: int) -> DomainStacks:
        """Where each task of domain ``domid`` waits now: its actor's own (handlers and hooks run there) and
        its per-domain tasks, each with what it runs, since when, and its await stack. Nothing is stopped or
        slowed. DomainNotRunning if the domain has no actor (not announced, or gone)."""
        actor = self._actors.get(domid)
        if actor is None:
            raise DomainNotRunning(f"domain {domid} has no actor (not announced, or gone)")
        stacks = domain_stacks(actor)
        held = self._pool.snapshot().domains.get(domid)
        if held is None:
            return stacks
        return dataclasses.replace(stacks, worker_pid=held.pid, worker_since=held.since)

    async def read_quotas(self) -> QuotaReport:
        """A quota round now, on the current connection (raises ConnectionLost, RequestTimeout, ...)."""
        return await self._quota.round(self.xs)

    @property
    def default_handled(self) -> int:
        """Events the default actor's handlers completed."""
        return self._default.handled

    @property
    def default_failures(self) -> int:
        """Handler failures in the default actor (it is not restarted: it carries on with the next event)."""
        return self._default.failures

    def watch(
        self,
        template: str,
        handler: Handler,
        *,
        timeout: float | None = None,
        route: Route | None = None,
        name: str = "",
        isolation: str | None = None,
        initial: bool = True,
    ) -> Watch:
        """Add a watch rule; it takes effect at once on every live domain (or, global, on the connection).

        ``template`` with ``{domid}`` is one watch per live domain, its events handled by that domain's actor;
        without, one watch whose events go to the default actor, or to ``route(path)``'s domain when it is live.
        ``handler(ctx, event)`` must return within ``timeout`` seconds, if given, or it counts as a failure
        (unless the daemon stalled or another domain blocked the loop meanwhile: then it runs again). A plain
        ``def`` function or method runs in a worker thread of a bounded pool (``worker_threads``); past its
        timeout the domain fails and the thread is left to finish (``abandoned_threads``).

        ``isolation="process"``: ``handler`` is a module-level plain ``def`` (found by its import path) run in
        a worker process of a pool shared by every domain (``worker_processes``), given a picklable
        :class:`~actors.runtime.workers.context.ProcessContext` and the event. Past ``timeout`` (plus
        ``worker_grace``) its worker is killed; a worker that dies (a signal, an exit) or allocates past
        ``worker_memory_limit`` costs its domain a failure (WorkerDied, WorkerMemoryExceeded), never the
        runtime's process. ``isolation="thread"`` and ``"inline"`` say what a plain and an async handler get.
        ``initial=False``: the event of the watch's registration (``event.initial``) is not handed to the
        handler (for a process handler: no worker is taken for it).
        """
        watch = Watch(
            template,
            handler,
            timeout=timeout,
            route=route,
            name=name,
            limiter=self._workers,
            isolation=isolation,
            initial=initial,
        )
        if watch.isolation == "process":
            watch.pool = self._pool
        self._watches.append(watch)
        if watch.per_domain:
            self._for_each_actor(lambda actor: actor.attach())
        else:
            self._nursery.start_soon(self._router.register, watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Remove a watch rule from every domain (or the connection); its queued events are dropped."""
        if watch not in self._watches:
            return
        self._watches.remove(watch)
        watch.active = False
        if watch.per_domain:
            self._for_each_actor(lambda actor: actor.detach(watch))
        else:
            self._nursery.start_soon(self._router.unregister, watch)

    def on_start(self, hook: Hook) -> Hook:
        """``async def hook(ctx)`` run when a domain actor starts or restarts, before its watches; usable as a
        decorator. A hook that raises is a failure of that domain."""
        self._start_hooks.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """``async def hook(ctx)`` run when a domain actor stops (its node removed, or shutdown), within the
        stop deadline. Not run between a failure and its restart."""
        self._stop_hooks.append(hook)
        return hook

    def reload(self, domid: int | None = None) -> None:
        """Restart domain ``domid``'s actor (every running one with None) without counting a failure: its
        tasks are cancelled with reason ``reload``, on_stop hooks run, then on_start hooks and watches again."""
        for actor in self._actors.values() if domid is None else [self._actors[domid]]:
            actor.reload()

    def reset(self, domid: int) -> None:
        """Take a failed domain out of ``failed``: it starts again with a clean restart history."""
        actor = self._actors.get(domid)
        if actor is None:
            raise KeyError(f"no domain actor for domid {domid}")
        actor.reset()

    def reset_failed(self) -> list[int]:
        """Take every failed domain out of ``failed`` (see :meth:`reset`); returns their domids."""
        failed = [domid for domid, actor in self._actors.items() if actor.state is State.FAILED]
        for domid in failed:
            self._actors[domid].reset()
        return failed

    async def wait_domain(self, domid: int, *states: State | None) -> None:
        """Wait until the domain is in one of ``states`` (None: no actor for it)."""
        while True:
            actor = self._actors.get(domid)
            current = None if actor is None else actor.state
            if current in states:
                return
            await self.changed.wait()

    async def settle(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (the issue asks for timeout=; the error names who is busy)
        """Wait until the runtime is quiet: every mailbox empty, no handler running, no domain starting or
        stopping, no watch being registered, counting the events of everything that happened before the call
        (the daemon is asked a question first: whatever it sent before its answer is in a mailbox by then) and
        what their handlers' own writes cause. On timeout, :class:`~.settling.NotSettled` (a TimeoutError)
        names each busy domain and what it is doing. Handy in tests after a write; a task started with
        ``ctx.start_soon`` runs on and does not count."""
        await settle(self, timeout)

    def observe(self, fn: Observer) -> None:
        """``fn(kind, domid, value)`` for metrics: kinds ``event``, ``failure``, ``restart``, ``latency``
        (seconds from the reader receiving an event to its handler starting), ``reconnect`` (domid 0),
        ``stall`` (domid 0: the daemon stalled), ``blocked`` (seconds the loop was blocked, charged
        to the domain whose code ran), ``gone``, ``throttled`` (1 when flood control throttles the domain, 0
        when it is watched again), ``dropped:<reason>`` (an event or message refused or purged: reasons
        ``failed``, ``backoff``, ``stopping``, ``throttled``, ``unwatched``). An observer that raises for a
        domain is that domain's failure (for domid 0: logged and counted as a default actor failure)."""
        self.observers.add(fn)

    def on_message(self, handler: Any, *, isolation: str | None = None, timeout: float | None = None) -> Any:
        """``async def handler(ctx, message)`` handles what :meth:`send` and :meth:`ask` deliver, in the
        domain's actor, in order with its watch events; usable as a decorator. One per runtime (a second
        replaces the first). What it raises is a failure of that domain (and the asker's exception).

        ``rt.on_message(handler, isolation="process", timeout=5)``: a module-level plain ``def
        handler(ctx, message)`` run in a worker process (see :meth:`watch`), given a ProcessContext; what it
        returns (picklable) is the answer to ``ask``. Past ``timeout`` its worker is killed (HandlerTimeout)."""
        if isolation not in (None, "inline", "process"):
            raise ValueError(f"a message handler's isolation is 'inline' or 'process', not {isolation!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        if isolation != "process":
            self._messaging.handler = handler
            return handler
        check_process_handler(handler)
        pool = self._pool

        async def in_process(ctx: DomainContext, body: Any) -> Any:
            return await pool.call(ctx, handler, body, template=None, timeout=timeout, what="message handler")

        self._messaging.handler = in_process
        return handler

    def send(self, domid: int, message: object) -> None:
        """Deliver ``message`` to domain ``domid``'s message handler; never blocks. Raises DomainNotRunning
        (no actor, or not running), MailboxFull (``message_limit`` waiting), MessageError (no handler)."""
        self._messaging.send(domid, message)

    async def ask(self, domid: int, message: object, *, timeout: float | None = 30.0) -> Any:  # noqa: ASYNC109 (the issue asks for timeout=)
        """Deliver ``message`` like :meth:`send` and return what the handler returns (or raise what it
        raised). DomainNotRunning if the domain stops before it handles it; AskTimeout past ``timeout``
        seconds (None: no limit; the message stays queued and is still handled)."""
        return await self._messaging.ask(domid, message, timeout)

    # -- what the actors call ---------------------------------------------------------------------------

    @property
    def message_handler(self) -> MessageHandler | None:
        return self._messaging.handler

    def live_actor(self, domid: int) -> DomainActor | None:
        """Domain ``domid``'s actor, if it has one (whatever its state)."""
        return self._actors.get(domid)

    def settle_parts(self) -> tuple[list[DomainActor], DefaultActor, int, list[Watch]]:
        return list(self._actors.values()), self._default, self._router.registering, self.domain_watches()

    def progress_event(self) -> trio.Event:
        if self._progress is None:
            self._progress = trio.Event()
        return self._progress

    def went_idle(self) -> None:
        """An actor parked on its empty mailbox, or a global watch was registered: wakes :meth:`settle`."""
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def domain_watches(self) -> list[Watch]:
        return [w for w in self._watches if w.per_domain]

    def start_hooks(self) -> tuple[Hook, ...]:
        return tuple(self._start_hooks)

    def stop_hooks(self) -> tuple[Hook, ...]:
        return tuple(self._stop_hooks)

    @property
    def reconnect_policy(self) -> ReconnectPolicy:
        return self.options.reconnect

    @property
    def closing(self) -> bool:
        """True once the owner has left ``open_runtime``: every actor is being stopped."""
        return self._closing

    @property
    def abandoned_threads(self) -> int:
        """Threads of plain ``def`` handlers left running past their timeout (each holds a pool slot until it
        ends)."""
        return sum(watch.abandoned for watch in self._watches)

    @property
    def workers(self) -> WorkerPoolSnapshot:
        """The worker processes of ``isolation="process"`` handlers: size, alive, busy, replaced, which
        domain holds which worker (pid, since when) and the deaths by domain and reason."""
        return self._pool.snapshot()

    async def run_in_worker(
        self,
        ctx: DomainContext,
        fn: Callable[..., Any],
        payload: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (killed past it, as a process handler's)
        template: str | None = None,
    ) -> Any:
        """``fn(process_context, payload)`` in a worker process of the pool, for ``ctx``'s domain, as a
        process handler runs (in turn with the other domains' calls; killed past ``timeout`` plus
        ``worker_grace``: HandlerTimeout; WorkerDied, WorkerMemoryExceeded); returns what it returns.
        ``fn`` is a module-level plain ``def``."""
        return await self._pool.call(ctx, fn, payload, template=template, timeout=timeout, what="worker call")

    def renew_workers(self) -> None:
        """Process handlers run in fresh worker processes from now on (they import the handlers' modules
        anew, e.g. after the modules changed); the current workers finish their calls, then end."""
        self._pool.renew()

    def _name_of(self, domid: int) -> str | None:
        actor = self._actors.get(domid)
        return None if actor is None else actor.name

    def _xenstore_address(self) -> tuple[str | None, bool]:
        """Where a worker connects to reach the runtime's xenstored: (socket path or device, is xenbus)."""
        name = None if self.connection is None else self.connection.name
        if name is None or name == "stream":
            return None, False
        if name.startswith("xenbus (") and name.endswith(")"):
            return name[len("xenbus (") : -1], True
        return name, False

    @property
    def loop_blocks(self) -> int:
        """How many times the watchdog found the event loop blocked."""
        return 0 if self._watchdog is None else self._watchdog.blocks

    def excused(self, domid: int, start: float) -> bool:
        """Was the connection stalled, or the loop blocked by another domain, at some moment since ``start``
        (trio clock)? A timeout or error of ``domid``'s meanwhile is then not its failure."""
        xs = self.connection
        if xs is not None and xs.stalled_during(start, trio.current_time()):
            return True
        return self._watchdog is not None and self._watchdog.blocked_during(start, domid)

    async def silenced(self) -> bool:
        """Is the daemon silent now (requests pending, nothing received) and does the silence last
        ``silent_after`` seconds (a lost connection counts too)? Waits that long at most. A failure meanwhile
        is then an interruption, whatever the handler's timeout (a stall is declared only at ``stall_after``)."""
        xs = self.connection
        if xs is None:
            return True
        return await xs.silent_for(self.options.silent_after)

    def _changed(self) -> None:
        """An actor came, went or changed state: ``changed`` fires once for all the changes made before the
        announcer task runs (32,000 actors starting at once are not 32,000 rounds of its waiters' checks)."""
        self._change.set()

    async def _announce_changes(self) -> None:
        while True:
            await self._change.wait()
            self._change = trio.Event()
            self.changed.set()

    def state_changed(self, domid: int, old: State | None, new: State | None) -> None:
        """Every move of a domain actor's life passes here (its :meth:`.domain.life.Life.move`): ``old`` None is
        its birth, ``new`` None its end (then it is forgotten). The kept counts (``rt.census``) move here."""
        self.census.move(domid, old, new)
        if new is State.STOPPING:
            actor = self._actors.get(domid)
            if actor is not None:
                self._stopwatch.add(actor, actor.life.deadline())
        elif new is None:
            del self._actors[domid]  # one actor per domid: made when there is none, forgotten at its end
            self.observers.emit("gone", domid)
        self._changed()

    def _observer_failed(self, domid: int, kind: str, failure: HandlerFailed) -> None:
        """An observer raised for ``domid``: that domain's failure (only logged where there is no running
        actor to charge, or when the observer failed on the failure itself)."""
        actor = self._actors.get(domid) if domid else None
        if actor is not None and kind != "failure":
            actor.charge(failure)
            return
        if domid == 0:
            self._default.failures += 1
        log_failure(logger.bind(domid=domid), failure)

    def _loop_blocked(self, domid: int | None, seconds: float) -> None:
        """The watchdog's report, in the trio thread: the block is ``domid``'s failure."""
        self.observers.emit("blocked", domid or 0, seconds)
        failure = HandlerFailed(LoopBlocked(f"blocked the event loop for {seconds:.3g} s"), "domain code")
        actor = self._actors.get(domid) if domid else None
        if actor is not None:
            actor.charge(failure)
        elif domid == 0:
            self._default.failures += 1
            log_failure(logger.bind(domid=0), failure)

    def _for_each_actor(self, fn: Callable[[DomainActor], Awaitable[object]]) -> None:
        """In the background, ``fn`` for every actor there is now (attach or detach watches)."""
        actors = list(self._actors.values())

        async def guarded(actor: DomainActor) -> None:  # in the root nursery: a bug is the actor's, not ours
            try:
                await fn(actor)
            except Exception as exc:
                actor.charge(HandlerFailed(exc, "domain actor, registering its watches"))

        if actors:
            self._nursery.start_soon(gather_bounded, actors, guarded, _ATTACH_CONCURRENCY)

    # -- the registry: a LifecycleSink --------------------------------------------------------------------

    def full(self, domains: dict[int, bytes]) -> None:
        # Every domain of a large host, in one call: only those whose word changed cost more than a lookup
        # (most were reported a part at a time by ``some`` already).
        actors = self._actors
        for domid in [domid for domid in actors if domid not in domains]:
            self._one(domid, None)
        for domid, identity in domains.items():
            actor = actors.get(domid)
            if actor is None or actor.life.desired != identity:
                self._one(domid, identity)
        if not self.ready.is_set():
            self.ready.set()
        self._changed()

    def one(self, domid: int, identity: bytes | None) -> None:
        if self._one(domid, identity):
            self._changed()

    def some(self, domains: dict[int, bytes]) -> None:
        for domid, identity in domains.items():
            self._one(domid, identity)
        self._changed()

    def _one(self, domid: int, identity: bytes | None) -> bool:
        """The registry's word on one domain; True if an actor was made (the caller says ``changed``)."""
        if self._closing:
            return False
        actor = self._actors.get(domid)
        if actor is not None:
            actor.set_desired(identity)
        elif identity is not None:
            actor = DomainActor(self, domid, identity)
            self._actors[domid] = actor
            if self._start_hooks:
                self._spawn(actor, False)
            else:  # its name and watches first, then its task (see StartRequests.prestart)
                actor.prestart()
                self.starts.prestart(actor)
            return True
        return False

    def _spawn_prestarted(self, actor: Starting) -> None:
        self._spawn(actor, True)

    def _spawn(self, actor: Starting, prestarted: bool) -> None:
        # The task copies this context as it is spawned: every log line of the actor's task carries the domid,
        # with nothing per actor kept alive for it but the context's value (no context manager held open for
        # the actor's whole life).
        with logger.contextualize(domid=actor.domid):
            self._nursery.start_soon(actor.run, prestarted, name=f"mtwatch-{actor.domid}")
        self.collector.started(len(self._actors))

    # -- the connection ---------------------------------------------------------------------------------

    async def _serve_connection(self, xs: XenStore) -> None:
        """Everything that lives on one connection: global watches, every live domain's watches (their initial
        events are the resync), and the registry. Returns when the connection is lost."""
        xs.request_timeout = self.options.request_timeout
        xs.stall_after = self.options.stall_after
        xs.stall_limit = self.options.stall_limit
        self.connection = xs
        self.connected.value = True
        self.disconnected_since = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_stalls, xs)
                for watch in self._watches:
                    if not watch.per_domain:
                        await self._router.register(watch)
                self._for_each_actor(lambda actor: actor.attach())
                nursery.start_soon(follow_lifecycle, self.source, xs, self, self.options.reconnect)
                await xs.wait_lost()
                nursery.cancel_scope.cancel()
        finally:
            self.connected.value = False
            self.disconnected_since = trio.current_time()

    async def _report_stalls(self, xs: XenStore) -> None:
        """Observer kind ``stall`` (domid 0) and a log line whenever the daemon stalls, one when it answers."""
        while True:
            await xs.stalled.wait_value(True)
            self.observers.emit("stall", 0)
            logger.warning("xenstored stalled: no reply for {:g} s with requests pending", xs.stall_after)
            await xs.stalled.wait_value(False)
            logger.info("xenstored answers again")

    def _start(self) -> None:
        """The runtime's own tasks, in its root nursery, and the watchdog's thread."""
        nursery = self._nursery
        nursery.start_soon(self._default.run, name="mtwatch-default")
        nursery.start_soon(self._stopwatch.run, name="mtwatch-stopwatch")
        nursery.start_soon(self.starts.run, lambda: self.connection, name="mtwatch-starts")
        nursery.start_soon(self._announce_changes, name="mtwatch-changes")
        nursery.start_soon(self._quota.run, lambda: self.connection, name="mtwatch-quota")
        nursery.start_soon(self._pool.run, name="mtwatch-workers")
        if self.options.block_threshold is not None:
            self._watchdog = Watchdog(self.options.block_threshold, self._loop_blocked)
            self._watchdog.start()

    async def _shutdown(self) -> None:
        """Stop every actor, the default one included, all at once, each within the one stop deadline.

        On a connection the caller keeps, every domain's watches are removed first, in pipelines
        (:meth:`_unwatch_all`, at most ``_UNWATCH_DEADLINE`` seconds: 32,751 UNWATCH round trips one per actor
        would take seconds), so that each actor's own detach then finds nothing left to do. The stop requests
        go out ``_WAKE_BATCH`` actors a turn of the loop: each woken actor's next steps run in the loop's next
        batch, and 32,751 of them there would hold it for a second."""
        self._closing = True
        xs = self.connection
        if not self.owns_connection and xs is not None and not xs.is_lost:
            await self._unwatch_all(xs)
        stop_at = trio.current_time() + self.options.stop_deadline
        actors = list(self._actors.values())
        for start in range(0, len(actors), _WAKE_BATCH):
            for actor in actors[start : start + _WAKE_BATCH]:
                actor.set_desired(None, stopping=True)
            await trio.lowlevel.checkpoint()
        self._default.stop(stop_at)
        with trio.move_on_at(stop_at + 1):  # (a task that ignores its cancellation is named, not waited for)
            while self._actors:
                await self.changed.wait()
            await self._default.finished.wait()
        await self._pool.close()  # every worker process ended (their calls were cancelled with their domains)
        if self._watchdog is not None:
            self._watchdog.stop()

    async def _unwatch_all(self, xs: XenStore) -> None:
        """Leaving on the caller's connection: every domain's watches removed in pipelines of
        ``_UNWATCH_BATCH`` actors, two on the wire at a time, each actor's under its registrations' turn
        (taken first for all, so that no actor unwatches alone meanwhile). Bounded by ``_UNWATCH_DEADLINE``
        (or half the stop deadline): the stop requests wait for it, and what it did not get to, each actor
        unwatches itself as before."""
        taken: list[DomainActor] = []
        try:
            async for actor in in_slices(list(self._actors.values())):
                if actor.watches.take_turn():
                    taken.append(actor)
            with trio.move_on_after(min(_UNWATCH_DEADLINE, self.options.stop_deadline / 2)):
                limiter = trio.CapacityLimiter(2)

                async def one(batch: list[DomainActor]) -> None:
                    async with limiter:
                        pipe = xs.pipeline()
                        for actor in batch:
                            for path, token in actor.watches.drop_on(xs):
                                pipe.unwatch(path, token)
                        with suppress(ConnectionLost):
                            await pipe.send()

                async with trio.open_nursery() as nursery:
                    for start in range(0, len(taken), _UNWATCH_BATCH):
                        nursery.start_soon(one, taken[start : start + _UNWATCH_BATCH])
        finally:
            for actor in taken:
                actor.watches.give_turn()


_LIFECYCLES: dict[str, Callable[[str], LifecycleSource]] = {
    "mtwatch": MtwatchSource,
    "domains": lambda root: DomainsSource(),
    "auto": AutoSource,
}


@asynccontextmanager
async def open_runtime(
    xs: XenStore | None = None,
    *,
    connect: ConnectionFactory | None = None,
    options: RuntimeOptions | None = None,
    **overrides: Any,
) -> AsyncIterator[Runtime]:
    """``async with actors.open_runtime(xs) as rt:``: run the dom0 watch runtime until the block ends.

    Give it a connection (``xs``), a way to make one (``connect=lambda: actors.connect(path)``), or both; with
    ``connect`` it reconnects by itself after a loss (with backoff), re-registers every watch, re-reads the
    lifecycle tree and so gives every live domain a resync event. Without ``connect``, losing ``xs`` ends the
    runtime with ConnectionLost.

    ``options`` (a :class:`RuntimeOptions`) and keyword arguments naming its fields (``stop_deadline=5``,
    ``restart=RestartPolicy(...)``, ``lifecycle="domains"``, ...) set how it behaves; see there. The default lifecycle,
    ``"auto"``, follows the mtwatch tree whenever its root exists and the host's domains otherwise. Leaving the
    block stops every actor within ``stop_deadline`` seconds and unwatches.
    """
    if xs is None and connect is None:
        raise TypeError("open_runtime needs a connection (xs) or a connection factory (connect=)")
    opts = (options or RuntimeOptions()).replace(**overrides)
    source = _LIFECYCLES[opts.lifecycle](opts.root) if isinstance(opts.lifecycle, str) else opts.lifecycle
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            rt = Runtime(nursery, source, opts)
            rt._start()
            await nursery.start(keep_connected, rt, rt._serve_connection, xs, connect)
            try:
                yield rt
            except BaseException as exc:
                body_error = exc  # raised again outside the nursery, unwrapped
            finally:
                with trio.CancelScope(shield=True):
                    await rt._shutdown()
                    rt.collector.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The runtime's own tasks raise nothing but ConnectionLost (no connect= to reconnect with); anything
        # else is a bug and comes out as it is.
        rest = group.split(ConnectionLost)[1]
        if rest is None:
            raise first_leaf(group) from None
        raise
    if body_error is not None:
        raise body_error
