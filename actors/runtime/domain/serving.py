"""An actor's inbox: events and messages posted in (with flood control on the way), the serving loop that takes
them out one at a time, in the order they came, in the actor's own task, and the count of what is dropped when
it cannot take them. A domain actor owns one (:class:`~.actor.DomainActor`), the default actor another (no flood
control, no messages: a handler's failure is counted and it carries on)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import trio

from ..._log import logger
from ...xs.coalesce import Interrupted
from ...xs.subscription import WatchEvent
from ..watch_rules import Watch
from .calls import HandlerFailed, call_handler, not_its_doing
from .context import DomainContext, State
from .floodgate import Flooded, FloodGate
from .life import ACCEPTING
from .mailbox import Envelope, Item, Mailbox
from .messages import Message
from .owner import ActorHost

if TYPE_CHECKING:
    from ..options import RuntimeOptions

__all__ = ["DROP_REASONS", "Inbox", "InboxOwner", "Lifeline"]

_REFUSAL: dict[State | None, str] = {
    State.FAILED: "failed",
    State.BACKOFF: "backoff",
}  # any other state refuses as "stopping"
# Why an event or message is dropped: refused (failed, backoff, stopping), purged for a resync (throttled), or
# its watch removed before it was handled (unwatched).
DROP_REASONS = ("failed", "backoff", "stopping", "throttled", "unwatched")
_DROPPED_KIND = {reason: f"dropped:{reason}" for reason in DROP_REASONS}


class Lifeline(Protocol):
    """What an inbox reads of its actor's life (:class:`~.life.Life` for a domain actor)."""

    @property
    def state(self) -> State | None: ...

    @property
    def generation(self) -> int: ...

    @property
    def ending(self) -> bool: ...  # a stop or a reload is asked: serve no more


class InboxOwner(Flooded, Protocol):
    """What a domain actor's inbox needs of its actor: flood control's way out, a failure's way in."""

    @property
    def nursery(self) -> trio.Nursery | None: ...

    def charge(self, failure: HandlerFailed) -> None: ...


class Inbox:
    """See the module docstring."""

    __slots__ = (
        "_dropped_by",
        "busy_path",
        "busy_since",
        "domid",
        "dropped",
        "flood",
        "handled",
        "life",
        "mailbox",
        "messages",
        "owner",
        "rt",
        "survive",
    )

    def __init__(
        self,
        domid: int,
        runtime: ActorHost,
        life: Lifeline,
        owner: InboxOwner | None,
        *,
        survive: Callable[[HandlerFailed], None] | None = None,
    ) -> None:
        options: RuntimeOptions = runtime.options
        self.domid = domid
        self.rt = runtime
        self.life = life
        self.owner = owner  # None: the default actor's (no flood control, never posted to but by the router)
        self.survive = survive  # a handler's failure goes here and serving carries on (None: it is raised)
        self.mailbox = Mailbox(options.mailbox_size, options.overflow_limit, options.message_limit)
        self.flood = FloodGate(options)
        self.messages = 0  # messages waiting in the mailbox
        self.handled = 0
        self.dropped = 0
        self.busy_since: float | None = None
        self.busy_path: str | None = None
        self._dropped_by: dict[str, int] | None = None

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        return dict(self._dropped_by or {})

    def drop(self, reason: str, count: int = 1) -> None:
        """The one place a drop is counted: ``dropped``, ``dropped_by_reason`` and the observers'
        ``dropped:<reason>``."""
        self.dropped += count
        if self._dropped_by is None:
            self._dropped_by = {}
        self._dropped_by[reason] = self._dropped_by.get(reason, 0) + count
        self.rt.observers.emit(_DROPPED_KIND[reason], self.domid, count)

    # -- in: never blocks ---------------------------------------------------------------------------------

    def post(self, watch: Watch, generation: int, watch_path: str, event: WatchEvent) -> None:
        """The way in of a domain's events: called from the connection's reader task, never blocks, never
        raises (a bug here is this domain's failure, not the end of the watch or the connection)."""
        try:
            life = self.life
            state = life.state
            if generation != life.generation or state not in ACCEPTING:
                self.drop(_REFUSAL.get(state, "stopping"))
                return
            flood = self.flood
            throttled = flood.throttled_since is not None
            if throttled and watch.per_domain:
                self.drop("throttled")  # in flight before the unwatch: the resync at the end stands for it
                return
            depth = self.mailbox.post(Envelope(watch, event, watch_path)) - self.messages
            if throttled:
                return  # a routed global watch's event: kept (no re-watch brings it back), not counted
            reason = flood.check(event.received_at, depth)
            owner = self.owner
            if reason is not None and owner is not None and (nursery := owner.nursery) is not None:
                flood.throttle(owner, nursery, reason, event.received_at)
                # The re-watch at the cool-down's end is the resync that stands for every waiting event of
                # the domain's own watches: handling them first would only delay it (messages and events of
                # routed global watches, which no re-watch would bring back, stay).
                self.drop("throttled", self.mailbox.purge_events())
        except Exception as exc:
            failure = HandlerFailed(exc, "domain actor, posting an event")
            if self.owner is not None:
                self.owner.charge(failure)
            else:
                logger.opt(exception=exc).critical("posting an event failed: a bug in mtwatch")

    def post_routed(self, watch: Watch, watch_path: str, event: WatchEvent) -> None:
        """A routed global watch's event (the router's way in): for whatever incarnation runs now."""
        self.post(watch, self.life.generation, watch_path, event)

    def post_message(self, message: Message) -> bool:
        """Queue a message if the actor runs and has room (False otherwise); never blocks."""
        if self.life.state not in ACCEPTING or self.messages >= self.rt.options.message_limit:
            return False
        self.messages += 1
        self.mailbox.post(message)
        return True

    def purge(self) -> None:
        """Drop everything waiting (a message's asker is told the domain did not handle it)."""
        dropped = self.mailbox.purge(self.domid)
        self.messages = 0
        if dropped:
            self.drop("stopping", dropped)

    # -- out: the serving loop, in the actor's own task ----------------------------------------------------

    async def serve(self, ctx: DomainContext) -> None:
        """Handle events and messages one at a time, in order, until the life is ending. Raises HandlerFailed
        (unless ``survive`` takes it)."""
        mailbox = self.mailbox
        life = self.life
        while not life.ending:
            if not len(mailbox):
                self.rt.went_idle()  # about to park: wakes a settle()
            try:
                batch = await mailbox.receive_batch(64)
            except Interrupted:
                continue  # look at the life again
            await self._handle_batch(ctx, batch)
            del batch  # an idle actor keeps no handled event alive

    async def _handle_batch(self, ctx: DomainContext, batch: list[Item]) -> None:
        done = 0
        clock = trio.lowlevel.current_clock()
        observers = self.rt.observers
        life = self.life
        domid = self.domid
        try:
            for item in batch:
                if life.ending:
                    return
                done += 1
                if type(item) is Message:
                    await self._handle_message(ctx, item)
                    continue
                assert isinstance(item, Envelope)
                # An event, inline rather than in a coroutine of its own: this runs for every event.
                watch, event = item.watch, item.event
                if not watch.active:
                    self.drop("unwatched")
                    continue
                now = clock.current_time()
                self.busy_path = event.path
                observers.observe_latency(domid, now - event.received_at)
                self.busy_since = now
                try:
                    completed = await call_handler(ctx, watch, event, now)
                except HandlerFailed as failure:
                    self.busy_since = None
                    if self.survive is None:
                        raise
                    self.survive(failure)
                    continue
                self.busy_since = None
                if completed:
                    self.handled += 1
                    observers.count_event(domid)
                else:
                    await self._handle_again(ctx, item)
        finally:
            if done < len(batch):  # stopped, failed or cancelled within the batch
                self._put_back(batch, done)

    def _put_back(self, batch: list[Item], index: int) -> None:
        """What a stop or a failure left of a batch goes the way of everything waiting then (purged: messages
        abandoned, events counted as dropped)."""
        for item in batch[index:]:
            if type(item) is Message:
                item.abandon(self.domid)
                self.messages -= 1
        self.drop("stopping", len(batch) - index)

    async def _handle_again(self, ctx: DomainContext, item: Envelope) -> None:
        """An event whose handler the daemon interrupted (its connection lost, stalled or silent: not the
        domain's fault): once the daemon answers again (a frame after the silence began), the same event
        again; after a loss, the reconnect's resync event stands for it."""
        while True:
            xs = self.rt.connection
            if xs is None or xs.is_lost:
                return
            if xs.silent_since() is not None:
                await xs.next_frame()
            if xs.is_lost:  # a loss ends a silence too: then the reconnect's resync stands for the event
                return
            now = trio.current_time()
            self.busy_since = now
            try:
                completed = await call_handler(ctx, item.watch, item.event, now)
            except HandlerFailed as failure:
                if self.survive is None:
                    raise
                self.survive(failure)
                return
            finally:
                self.busy_since = None
            if completed:
                self.handled += 1
                self.rt.observers.count_event(self.domid)
                return

    async def _handle_message(self, ctx: DomainContext, message: Message) -> None:
        self.messages -= 1
        handler = self.rt.message_handler
        if handler is None:
            message.abandon(self.domid)
            return
        self.busy_since, self.busy_path = trio.current_time(), "message"
        try:
            result = await handler(ctx, message.body)
        except Exception as exc:
            if message.reply is not None:
                message.reply.fail(exc)
            if await not_its_doing(ctx, exc, self.busy_since or 0.0):
                return
            raise HandlerFailed(exc, "message handler") from exc
        else:
            if message.reply is not None:
                message.reply.succeed(result)
            self.handled += 1
        finally:
            self.busy_since = None
            message.abandon(self.domid)  # cancelled: the asker learns the domain stopped (no-op if answered)
