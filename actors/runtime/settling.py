"""``rt.settle()``: wait until the runtime has nothing left to do for what happened so far - every mailbox empty,
no handler running, no actor starting or stopping, no watch being registered, no request of the runtime's
waiting for its answer (the registry examining a domain) - or say who is still busy.

Each round asks the daemon a question first: it answers in order, so every watch event it sent before that
answer has been handed on by then (also the events a handler's own writes caused). Then it lets every other
task run until all wait (trio's ``wait_all_tasks_blocked``: whoever was woken by those events has acted on them,
sending its requests), and looks. Busy: it waits on the runtime's own notifications (an actor changing state, an
actor parking on its empty mailbox, a global watch registered), never in a polling loop. Requests still out
(nobody busy): another round, whose question is answered after them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio
from trio_util import AsyncBool, RepeatedEvent, wait_any

from ..xs.errors import ConnectionLost, RequestTimeout
from .domain.context import State

if TYPE_CHECKING:
    from ..xs.client import XenStore
    from .default_actor import DefaultActor
    from .domain.actor import DomainActor
    from .watch_rules import Watch

__all__ = ["NotSettled", "busy_report", "settle"]


class NotSettled(TimeoutError):
    """:meth:`Runtime.settle` timed out; ``busy`` maps each busy domid (0: the default actor) to what it is
    doing (``"handler on /local/domain/5/data/x for 10 s"``, ``"starting"``, ``"3 events waiting"``)."""

    def __init__(self, timeout: float, busy: dict[int, str], xs: XenStore | None = None) -> None:
        self.timeout = timeout
        self.busy = busy
        named = "; ".join(f"{'default actor' if d == 0 else f'domain {d}'}: {why}" for d, why in busy.items())
        if not named:  # nobody busy: what kept it from settling is the connection or the program's own tasks
            if xs is None or xs.is_lost:
                named = "not connected to xenstored"
            elif xs.pending:
                named = f"{xs.pending} requests of the runtime's connection unanswered"
            else:
                named = "the program's tasks never all waited at once"
        super().__init__(f"the runtime did not settle within {timeout:g} s: {named}")


class Settleable(Protocol):
    """What settling needs of the runtime."""

    connection: XenStore | None
    connected: AsyncBool
    changed: RepeatedEvent

    def settle_parts(self) -> tuple[list[DomainActor], DefaultActor, int, list[Watch]]:
        """The actors, the default actor, the global watches being registered, the per-domain watches."""

    def progress_event(self) -> trio.Event:
        """An event set the next time an actor parks on its empty mailbox or a global watch is registered."""


def _actor_busy(actor: DomainActor, xs: XenStore | None, watches: list[Watch], now: float) -> str | None:
    state = actor.state
    if state in (State.STARTING, State.STOPPING):
        return str(state)
    if state is not State.RUNNING:
        return None  # backoff, failed: nothing runs and the mailbox is purged
    inbox = actor.inbox
    if not inbox.mailbox.receiving:
        if inbox.busy_since is not None:
            return f"handler on {inbox.busy_path} for {now - inbox.busy_since:.3g} s"
        return f"{len(inbox.mailbox)} events waiting"
    if actor.watches.busy or (xs is not None and actor.may_attach and actor.watches.missing(xs, watches)):
        return "registering its watches"
    return None


def busy_report(rt: Settleable) -> dict[int, str]:
    """Every busy actor's domid (0: the default actor) and what it is busy with; empty when settled."""
    actors, default, registering, watches = rt.settle_parts()
    now = trio.current_time()
    busy: dict[int, str] = {}
    if not default.inbox.mailbox.receiving and not default.finished.is_set():
        busy[0] = f"{len(default.inbox.mailbox)} events waiting, or a handler running"
    elif registering:
        busy[0] = f"registering {registering} global watches"
    xs = rt.connection
    for actor in actors:
        why = _actor_busy(actor, xs, watches, now)
        if why is not None:
            busy[actor.domid] = why
    return busy


async def settle(rt: Settleable, timeout: float) -> None:  # noqa: ASYNC109 (see Runtime.settle)
    """See :meth:`Runtime.settle`."""
    if not timeout > 0:
        raise ValueError(f"settle timeout must be positive, not {timeout!r}")
    # A scheduler facility that trio keeps beside its test tools; imported here, as trio.testing loads pytest's
    # modules where pytest is installed.
    from trio.testing import wait_all_tasks_blocked

    with trio.move_on_after(timeout):
        while True:
            await rt.connected.wait_value(True)
            xs = rt.connection
            if xs is None:
                continue
            try:
                await xs.get_domain_path(0)  # answered after every event sent before it
            except (ConnectionLost, RequestTimeout):
                continue  # the reconnect's resync events are what to wait for now
            await wait_all_tasks_blocked()  # those events acted on by whoever they woke
            progress = rt.progress_event()
            if busy_report(rt):
                await wait_any(progress.wait, rt.changed.wait)
            elif not xs.pending and xs is rt.connection:
                return
    raise NotSettled(timeout, busy_report(rt), rt.connection)
