"""A domain actor's life as one state machine (h11's ``_state.py`` is the model).

Two tables say it all. :data:`TRANSITIONS`: the states an actor may move to from each state (``None`` is no
actor: before its birth and after its end); every move goes through :meth:`Life.move`, which tells the owner
(``owner.state_changed(domid, old, new)``), so the owner can keep counts by state as they change.
:data:`DECISIONS`: what each event from outside the actor's task (the registry's announce and retire, the
runtime's stop, reload, reset, a failure charged from outside) does in each phase of its life: what it leaves
asked of the actor's task, and what the actor does at once. :meth:`Life.apply` is the one place that applies
an event.

The actor's own task makes the other moves (starting, running, stopping, backoff, failed), each when its work
gets there, and reads what was asked between events: ``ending`` (serve no more: a stop or a reload was asked),
``desired`` (the identity the registry wants, None once retired), ``RESET`` while failed.

One stop deadline per stop: the first event that ends an incarnation sets ``stop_at`` (now plus the stop
deadline), and everything the stop runs ends by then: what was running (a handler, per-domain tasks) by
:meth:`Life.serve_until`, the last :data:`HOOKS_SHARE` of the deadline kept for the on_stop hooks
(:meth:`Life.hooks_until`: at least that share, whatever the running work took). Withdrawn in time (announced
back), the stop and its deadline are gone.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Protocol

import trio

from .context import State

if TYPE_CHECKING:
    from .calls import HandlerFailed

__all__ = [
    "ACCEPTING",
    "DECISIONS",
    "TRANSITIONS",
    "Action",
    "Asked",
    "Event",
    "Life",
    "LifeError",
    "LifeOwner",
    "Phase",
]

ACCEPTING: Final = (State.STARTING, State.RUNNING)  # the states in which an actor takes events and messages
HOOKS_SHARE: Final = (
    0.25  # of the stop deadline, kept for the on_stop hooks: a hung handler cannot take it all
)


class Event(enum.Enum):
    """What happens to a domain from outside its actor's task."""

    ANNOUNCE = "announce"  # the registry names the identity the actor runs (a stop of its asked back)
    REPLACE = "replace"  # the registry names another identity (the domid was reused)
    RETIRE = "retire"  # the registry's node is gone
    STOP = "stop"  # the runtime shuts down
    RELOAD = "reload"  # rt.reload: a new incarnation, not a failure
    RESET = "reset"  # rt.reset: out of failed, with a clean restart history
    FAILURE = "failure"  # something failed for the domain outside its task (an observer, the watchdog)


class Asked(enum.Enum):
    """What is asked of the actor's task and not done yet."""

    STOP = "stop"  # end the incarnation (retired, replaced, or the runtime's stop)
    RELOAD = "reload"  # end the incarnation and start a new one
    RESET = "reset"  # leave failed


class Action(enum.Enum):
    """What the actor does at once when an event is applied."""

    NOTHING = "nothing"
    END = "end"  # end the running incarnation: its mailbox interrupted, its scope due by the stop deadline
    WITHDRAW = "withdraw"  # a stop withdrawn in time: the incarnation's deadline lifted, it carries on
    WAKE = "wake"  # the task waiting in backoff or failed looks again
    CANCEL = "cancel"  # the running incarnation fails: its scope cancelled (no incarnation open: recorded)
    RECORD = "record"  # a failure between incarnations, or a second one: logged and counted only


class Phase(enum.Enum):
    """The rows of :data:`DECISIONS`: a state, told apart by what is asked where that matters."""

    SERVING = "serving"  # starting or running, nothing asked
    ENDING = "ending"  # starting or running, a stop asked
    RELOADING = "reloading"  # starting or running, a reload asked
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"
    RESETTING = "resetting"  # failed, a reset asked


class LifeError(RuntimeError):
    """A move the table does not allow: a bug in mtwatch."""


TRANSITIONS: Final[dict[State | None, frozenset[State | None]]] = {
    None: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.BACKOFF, State.FAILED, None}),
    State.RUNNING: frozenset({State.STOPPING, State.BACKOFF, State.FAILED, None}),
    State.STOPPING: frozenset({State.STARTING, State.BACKOFF, State.FAILED, None}),
    State.BACKOFF: frozenset({State.STARTING, None}),
    State.FAILED: frozenset({State.STARTING, None}),
}

_E, _A, _P = Event, Action, Phase
_STOP, _RELOAD, _RESET = Asked.STOP, Asked.RELOAD, Asked.RESET

# (phase, event) -> (what is asked afterwards, what the actor does now)
DECISIONS: Final[dict[tuple[Phase, Event], tuple[Asked | None, Action]]] = {
    (_P.SERVING, _E.ANNOUNCE): (None, _A.NOTHING),
    (_P.SERVING, _E.REPLACE): (_STOP, _A.END),
    (_P.SERVING, _E.RETIRE): (_STOP, _A.END),
    (_P.SERVING, _E.STOP): (_STOP, _A.END),
    (_P.SERVING, _E.RELOAD): (_RELOAD, _A.END),
    (_P.SERVING, _E.RESET): (None, _A.NOTHING),
    (_P.SERVING, _E.FAILURE): (None, _A.CANCEL),
    (_P.ENDING, _E.ANNOUNCE): (None, _A.WITHDRAW),
    (_P.ENDING, _E.REPLACE): (_STOP, _A.NOTHING),
    (_P.ENDING, _E.RETIRE): (_STOP, _A.NOTHING),
    (_P.ENDING, _E.STOP): (_STOP, _A.NOTHING),
    (_P.ENDING, _E.RELOAD): (_RELOAD, _A.NOTHING),
    (_P.ENDING, _E.RESET): (_STOP, _A.NOTHING),
    (_P.ENDING, _E.FAILURE): (_STOP, _A.CANCEL),
    (_P.RELOADING, _E.ANNOUNCE): (_RELOAD, _A.NOTHING),
    (_P.RELOADING, _E.REPLACE): (_RELOAD, _A.NOTHING),  # ends as a restart: the identity tells at the end
    (_P.RELOADING, _E.RETIRE): (_RELOAD, _A.NOTHING),
    (_P.RELOADING, _E.STOP): (_RELOAD, _A.NOTHING),
    (_P.RELOADING, _E.RELOAD): (_RELOAD, _A.NOTHING),
    (_P.RELOADING, _E.RESET): (_RELOAD, _A.NOTHING),
    (_P.RELOADING, _E.FAILURE): (_RELOAD, _A.CANCEL),
    (_P.STOPPING, _E.ANNOUNCE): (None, _A.NOTHING),  # the task looks at ``desired`` once stopped
    (_P.STOPPING, _E.REPLACE): (None, _A.NOTHING),
    (_P.STOPPING, _E.RETIRE): (None, _A.NOTHING),
    (_P.STOPPING, _E.STOP): (None, _A.NOTHING),
    (_P.STOPPING, _E.RELOAD): (None, _A.NOTHING),
    (_P.STOPPING, _E.RESET): (None, _A.NOTHING),
    (_P.STOPPING, _E.FAILURE): (None, _A.RECORD),
    (_P.BACKOFF, _E.ANNOUNCE): (None, _A.WAKE),
    (_P.BACKOFF, _E.REPLACE): (None, _A.WAKE),
    (_P.BACKOFF, _E.RETIRE): (None, _A.WAKE),
    (_P.BACKOFF, _E.STOP): (None, _A.WAKE),
    (_P.BACKOFF, _E.RELOAD): (None, _A.NOTHING),
    (_P.BACKOFF, _E.RESET): (None, _A.NOTHING),
    (_P.BACKOFF, _E.FAILURE): (None, _A.RECORD),
    (_P.FAILED, _E.ANNOUNCE): (None, _A.WAKE),
    (_P.FAILED, _E.REPLACE): (None, _A.WAKE),
    (_P.FAILED, _E.RETIRE): (None, _A.WAKE),
    (_P.FAILED, _E.STOP): (None, _A.WAKE),
    (_P.FAILED, _E.RELOAD): (None, _A.NOTHING),
    (_P.FAILED, _E.RESET): (_RESET, _A.WAKE),
    (_P.FAILED, _E.FAILURE): (None, _A.RECORD),
    (_P.RESETTING, _E.ANNOUNCE): (_RESET, _A.WAKE),
    (_P.RESETTING, _E.REPLACE): (_RESET, _A.WAKE),
    (_P.RESETTING, _E.RETIRE): (_RESET, _A.WAKE),
    (_P.RESETTING, _E.STOP): (_RESET, _A.WAKE),
    (_P.RESETTING, _E.RELOAD): (_RESET, _A.NOTHING),
    (_P.RESETTING, _E.RESET): (_RESET, _A.NOTHING),
    (_P.RESETTING, _E.FAILURE): (_RESET, _A.RECORD),
}

_ACCEPTING_PHASE: Final = {None: Phase.SERVING, _STOP: Phase.ENDING, _RELOAD: Phase.RELOADING}
_RESTING_PHASE: Final = {
    State.STOPPING: Phase.STOPPING,
    State.BACKOFF: Phase.BACKOFF,
    State.FAILED: Phase.FAILED,
}


class LifeOwner(Protocol):
    """Who is told of every move: the runtime, which keeps its actors (and their counts by state)."""

    def state_changed(self, domid: int, old: State | None, new: State | None) -> None: ...


class Life:
    """One domain actor's state and what is asked of it; see the module docstring."""

    __slots__ = (
        "_wake",
        "asked",
        "desired",
        "domid",
        "ending",
        "failure",
        "generation",
        "identity",
        "owner",
        "state",
        "stop_at",
        "stop_deadline",
        "stopping_since",
    )

    def __init__(self, owner: LifeOwner, domid: int, identity: bytes, stop_deadline: float) -> None:
        self.owner = owner
        self.domid = domid
        self.stop_deadline = stop_deadline
        self.identity = identity  # the identity the actor runs (or last ran)
        self.desired: bytes | None = identity  # what the registry wants: an identity, or None (gone)
        self.asked: Asked | None = None
        self.ending = False  # a stop or a reload is asked: the running incarnation serves no more
        self.stop_at: float | None = None  # the running stop's deadline, set once per stop
        self.failure: HandlerFailed | None = None  # the running incarnation's failure, once it has one
        self.generation = 0  # incarnations so far: a late event of an earlier one is told apart by it
        self.stopping_since: float | None = None  # when it began to stop, while it stops
        self.state: State | None = None
        self._wake: trio.Event | None = None  # exists while the task waits in backoff or failed
        self.move(State.STARTING)

    @property
    def phase(self) -> Phase:
        state = self.state
        if state is State.STARTING or state is State.RUNNING:
            return _ACCEPTING_PHASE.get(self.asked, Phase.SERVING)
        if state is State.FAILED and self.asked is _RESET:
            return Phase.RESETTING
        assert state is not None
        return _RESTING_PHASE[state]

    def move(self, new: State | None) -> None:
        """The one transition point: every change of state passes here and is told to the owner."""
        old = self.state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise LifeError(f"domain {self.domid}: no move from {old} to {new}")
        self.state = new
        self.stopping_since = trio.current_time() if new is State.STOPPING else None
        self.owner.state_changed(self.domid, old, new)

    def apply(self, event: Event) -> Action:
        """The one place an event from outside the task is applied: what is asked of the task changes as
        :data:`DECISIONS` says, a stop gets its deadline (once), a waiting task is woken; returns what the
        actor does now. (The registry's events change ``desired`` first: see :meth:`announce`.)"""
        if self.state is None:
            return Action.NOTHING  # ended: nothing to decide
        asked, action = DECISIONS[self.phase, event]
        self.asked = asked
        self.ending = asked is _STOP or asked is _RELOAD  # (an attribute: the serving loop reads it per item)
        if action is Action.END and self.stop_at is None:
            self.stop_at = trio.current_time() + self.stop_deadline
        elif action is Action.WITHDRAW:
            self.stop_at = None
        elif action is Action.WAKE and self._wake is not None:
            self._wake.set()
        return action

    def announce(self, identity: bytes | None, *, stopping: bool = False) -> Action:
        """The registry's word: run with ``identity`` (a change means the domid was reused), or stop (None;
        ``stopping``: the runtime's own stop)."""
        if identity == self.desired:
            return Action.NOTHING
        self.desired = identity
        if identity is None:
            return self.apply(Event.STOP if stopping else Event.RETIRE)
        return self.apply(Event.ANNOUNCE if identity == self.identity else Event.REPLACE)

    def incarnate(self, identity: bytes, prestarted: bool) -> None:
        """A new incarnation begins (its generation already counted when ``prestarted``): nothing asked of
        it, no failure, no stop."""
        self.identity = identity
        self.asked = None
        self.ending = False
        self.failure = None
        self.stop_at = None
        if not prestarted:
            self.generation += 1
        self.move(State.STARTING)

    def deadline(self) -> float:
        """The running stop's deadline (set by the event that asked for it; now plus the stop deadline for a
        stop nobody asked for)."""
        if self.stop_at is None:
            self.stop_at = trio.current_time() + self.stop_deadline
        return self.stop_at

    def serve_until(self) -> float:
        """When what runs in the ending incarnation (a handler, per-domain tasks) is cut short: the stop's
        deadline less the share kept for the on_stop hooks."""
        return self.deadline() - self.stop_deadline * HOOKS_SHARE

    def hooks_until(self) -> float:
        """When the on_stop hooks are cut short: the stop's deadline, but never less than their share from now
        (the running work may have overrun its part: a task that ignored its cancellation)."""
        return max(self.deadline(), trio.current_time() + self.stop_deadline * HOOKS_SHARE)

    async def wait(self) -> None:
        """Until the next event that wakes a waiting task (see :data:`DECISIONS`)."""
        self._wake = trio.Event()
        try:
            await self._wake.wait()
        finally:
            self._wake = None
