"""A domain actor's mailbox side (mixed into :class:`~.actor.DomainActor`): events and messages posted in (with
flood control on the way), and the serving
loop that takes the events and messages out one at a time, in the order they came, in the actor's own task;
and the count of what is dropped when it cannot take them."""

from __future__ import annotations

from typing import cast

import trio

from ...xs.coalesce import Interrupted
from ...xs.subscription import WatchEvent
from ..watch_rules import Watch
from .calls import HandlerFailed, call_handler, excused_since, is_connection_loss
from .context import DomainContext, State
from .floodgate import Flooded, FloodGate
from .mailbox import Envelope, Item, Mailbox
from .messages import Message
from .owner import ActorHost

__all__ = ["ACCEPTING", "Serving"]

ACCEPTING = (State.STARTING, State.RUNNING)  # the states in which an actor takes events and messages

_REFUSAL = {State.FAILED: "failed", State.BACKOFF: "backoff"}  # any other state refuses as "stopping"
_DROPPED_KIND = {reason: f"dropped:{reason}" for reason in ("failed", "backoff", "stopping", "throttled")}


class Serving:
    """The part of a domain actor that handles what its mailbox holds; see the module docstring."""

    # What serving changes is kept here (set by the actor's __init__); what it only reads is the actor's.
    __slots__ = ("_dropped_by", "busy_path", "busy_since", "dropped", "handled", "messages")

    rt: ActorHost
    domid: int
    state: State
    desired: bytes | None
    mailbox: Mailbox
    _reload_requested: bool
    generation: int
    flood: FloodGate
    nursery: trio.Nursery | None

    def __init__(self) -> None:
        self.messages = 0  # messages waiting in the mailbox
        self.handled = 0
        self.dropped = 0
        self.busy_since: float | None = None
        self.busy_path: str | None = None
        self._dropped_by: dict[str, int] | None = None

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped += count
        if self._dropped_by is None:
            self._dropped_by = {}
        self._dropped_by[reason] = self._dropped_by.get(reason, 0) + count
        self.rt._emit(_DROPPED_KIND[reason], self.domid, count)

    def post(self, watch: Watch, generation: int, watch_path: str, event: WatchEvent) -> None:
        """The router's way in: called from the connection's reader task, never blocks, never raises (a bug
        here is this domain's failure, not the end of the watch or the connection)."""
        try:
            if generation != self.generation or self.state not in ACCEPTING:
                self._drop(_REFUSAL.get(self.state, "stopping"))
                return
            flood = self.flood
            throttled = flood.throttled_since is not None
            if throttled and watch.per_domain:
                self._drop("throttled")  # in flight before the unwatch: the resync at the end stands for it
                return
            depth = self.mailbox.post(Envelope(watch, event, watch_path)) - self.messages
            if throttled:
                return  # a routed global watch's event: kept (no re-watch brings it back), not counted
            reason = flood.check(event.received_at, depth)
            if reason is not None and self.nursery is not None:
                flood.throttle(cast("Flooded", self), self.nursery, reason, event.received_at)
                # The re-watch at the cool-down's end is the resync that stands for every waiting event of
                # the domain's own watches: handling them first would only delay it (messages and events of
                # routed global watches, which no re-watch would bring back, stay).
                self._drop("throttled", self.mailbox.purge_events())
        except Exception as exc:
            self.charge(HandlerFailed(exc, "domain actor, posting an event"))

    def charge(self, failure: HandlerFailed) -> None:
        raise NotImplementedError  # the actor's: a failure outside its own task

    def post_message(self, message: Message) -> bool:
        """Queue a message if the actor runs and has room (False otherwise); never blocks."""
        if self.state not in ACCEPTING or self.messages >= self.rt.options.message_limit:
            return False
        self.messages += 1
        self.mailbox.post(message)
        return True

    def _purge(self) -> None:
        dropped = self.mailbox.purge(self.domid)
        self.messages = 0
        if dropped:
            self._drop("stopping", dropped)

    async def _serve(self, ctx: DomainContext, identity: bytes) -> None:
        """Handle events and messages one at a time, in order, until ``desired`` changes or a reload is
        asked for. Raises HandlerFailed."""
        mailbox = self.mailbox
        while self.desired == identity and not self._reload_requested:
            try:
                batch = await mailbox.receive_batch(64)
            except Interrupted:
                continue  # look at desired again
            await self._handle_batch(ctx, identity, batch)
            del batch  # an idle actor keeps no handled event alive
            if not len(mailbox):
                self.rt._went_idle()  # about to park: wakes a settle()

    async def _handle_batch(self, ctx: DomainContext, identity: bytes, batch: list[Item]) -> None:
        done = 0
        clock = trio.lowlevel.current_clock()
        rt = self.rt
        try:
            for item in batch:
                if self.desired != identity or self._reload_requested:
                    return
                done += 1
                if type(item) is Message:
                    await self._handle_message(ctx, item)
                    continue
                assert isinstance(item, Envelope)
                # An event, inline rather than in a coroutine of its own: this runs for every event.
                watch, event = item.watch, item.event
                if not watch.active:
                    self.dropped += 1
                    continue
                now = clock.current_time()
                self.busy_path = event.path
                rt._observe_latency(self.domid, now - event.received_at)
                self.busy_since = now
                completed = await call_handler(ctx, watch, event, now)
                self.busy_since = None
                if completed:
                    self.handled += 1
                    rt._count_event(self.domid)
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
        self._drop("stopping", len(batch) - index)

    async def _handle_again(self, ctx: DomainContext, item: Envelope) -> None:
        """An event whose handler the daemon interrupted (its connection lost, or stalled while it ran: not
        the domain's fault): once the daemon answers again, the same event again; after a loss, the
        reconnect's resync event stands for it."""
        while True:
            xs = self.rt.connection
            if xs is None or xs.is_lost:
                return
            await xs.stalled.wait_value(False)
            if xs.is_lost:  # a loss ends a stall too: then the reconnect's resync stands for the event
                return
            now = trio.current_time()
            self.busy_since = now
            completed = await call_handler(ctx, item.watch, item.event, now)
            self.busy_since = None
            if completed:
                self.handled += 1
                self.rt._count_event(self.domid)
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
            if is_connection_loss(exc) or excused_since(ctx, self.busy_since or 0.0):
                return
            raise HandlerFailed(exc, "message handler") from exc
        else:
            if message.reply is not None:
                message.reply.succeed(result)
            self.handled += 1
        finally:
            self.busy_since = None
            message.abandon(self.domid)  # cancelled: the asker learns the domain stopped (no-op if answered)
