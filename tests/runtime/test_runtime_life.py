"""A domain actor's life as a table: every phase x event applied to a real :class:`Life` (no runtime: it is a
state machine on the trio clock), checked against the grid below, written out apart from the module's table;
and every move between states, allowed or refused, told to the owner through the one transition point."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from actors import State
from actors.runtime.domain.life import DECISIONS, Action, Asked, Event, Life, LifeError, Phase

# What each event leaves asked of the actor's task / what the actor does now ("-": nothing asked).
GRID = """
            announce       replace        retire         stop           reload         reset          failure
serving     -/nothing      stop/end       stop/end       stop/end       reload/end     -/nothing      -/cancel
ending      -/withdraw     stop/nothing   stop/nothing   stop/nothing   reload/nothing stop/nothing   stop/cancel
reloading   reload/nothing reload/nothing reload/nothing reload/nothing reload/nothing reload/nothing reload/cancel
stopping    -/nothing      -/nothing      -/nothing      -/nothing      -/nothing      -/nothing      -/record
backoff     -/wake         -/wake         -/wake         -/wake         -/nothing      -/nothing      -/record
failed      -/wake         -/wake         -/wake         -/wake         -/nothing      reset/wake     -/record
resetting   reset/wake     reset/wake     reset/wake     reset/wake     reset/nothing  reset/nothing  reset/record
"""


def grid() -> dict[tuple[Phase, Event], tuple[Asked | None, Action]]:
    lines = [line.split() for line in GRID.strip().splitlines()]
    events = [Event(name) for name in lines[0]]
    cells: dict[tuple[Phase, Event], tuple[Asked | None, Action]] = {}
    for row in lines[1:]:
        phase = Phase(row[0])
        for event, cell in zip(events, row[1:], strict=True):
            asked, action = cell.split("/")
            cells[phase, event] = (None if asked == "-" else Asked(asked), Action(action))
    return cells


class Owner:
    """Records what the life tells its owner."""

    def __init__(self) -> None:
        self.moves: list[tuple[int, State | None, State | None]] = []

    def state_changed(self, domid: int, old: State | None, new: State | None) -> None:
        self.moves.append((domid, old, new))


def life_in(phase: Phase, owner: Owner | None = None) -> Life:
    """A life brought to ``phase`` by the moves and events that lead there."""
    life = Life(owner or Owner(), 7, b"uuid-a", stop_deadline=4.0)
    life.move(State.RUNNING)
    if phase is Phase.ENDING:
        life.announce(None)
    elif phase is Phase.RELOADING:
        life.apply(Event.RELOAD)
    elif phase is Phase.STOPPING:
        life.move(State.STOPPING)
    elif phase is Phase.BACKOFF:
        life.move(State.BACKOFF)
    elif phase in (Phase.FAILED, Phase.RESETTING):
        life.move(State.FAILED)
        if phase is Phase.RESETTING:
            life.apply(Event.RESET)
    assert life.phase is phase
    return life


def test_the_grid_covers_every_phase_and_event() -> None:
    assert set(grid()) == {(phase, event) for phase in Phase for event in Event}
    assert set(DECISIONS) == set(grid())


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", list(Event))
async def test_every_event_in_every_phase(
    phase: Phase, event: Event, autojump_clock: trio.testing.MockClock
) -> None:
    asked, action = grid()[phase, event]
    owner = Owner()
    life = life_in(phase, owner)
    state, moves, stop_at = life.state, len(owner.moves), life.stop_at
    woken = False

    async def waiter() -> None:
        nonlocal woken
        await life.wait()
        woken = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)
        assert life.apply(event) is action
        await trio.testing.wait_all_tasks_blocked()
        assert woken is (action is Action.WAKE)
        nursery.cancel_scope.cancel()
    assert life.asked is asked
    assert life.state is state and len(owner.moves) == moves  # an event never moves the state itself
    assert life.ending is (asked in (Asked.STOP, Asked.RELOAD))
    if action is Action.END:
        assert stop_at is None and life.stop_at == pytest.approx(trio.current_time() + 4.0)
    elif action is Action.WITHDRAW:
        assert life.stop_at is None
    else:
        assert life.stop_at == stop_at  # the stop's deadline is set once


async def test_one_deadline_per_stop_set_by_the_first_event_that_asks_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    life = life_in(Phase.SERVING)
    asked_at = trio.current_time()
    assert life.announce(b"uuid-b") is Action.END  # the domid reused
    await trio.sleep(3)
    assert life.announce(None) is Action.NOTHING  # then retired: the same stop, the same deadline
    assert life.deadline() == pytest.approx(asked_at + 4.0)
    assert life.announce(b"uuid-a") is Action.WITHDRAW  # asked back in time: no stop, no deadline
    assert life.stop_at is None and not life.ending
    await trio.sleep(1)
    assert life.announce(None) is Action.END  # a new stop: a new deadline
    assert life.deadline() == pytest.approx(trio.current_time() + 4.0)
    life.move(State.STOPPING)
    life.incarnate(b"uuid-a", prestarted=False)  # announced back while it stopped: a fresh incarnation
    assert (life.state, life.asked, life.stop_at, life.generation) == (State.STARTING, None, None, 1)
    assert math.isclose(life.deadline(), trio.current_time() + 4.0)  # a stop nobody asked for


STATES: list[State | None] = [None, *State]
ALLOWED = {
    None: {State.STARTING},
    State.STARTING: {State.RUNNING, State.STOPPING, State.BACKOFF, State.FAILED, None},
    State.RUNNING: {State.STOPPING, State.BACKOFF, State.FAILED, None},
    State.STOPPING: {State.STARTING, State.BACKOFF, State.FAILED, None},
    State.BACKOFF: {State.STARTING, None},
    State.FAILED: {State.STARTING, None},
}


@pytest.mark.parametrize("old", STATES)
@pytest.mark.parametrize("new", STATES)
async def test_every_move_goes_through_the_one_transition_point(
    old: State | None, new: State | None, autojump_clock: trio.testing.MockClock
) -> None:
    owner = Owner()
    life = Life(owner, 9, b"uuid", stop_deadline=1.0)
    assert owner.moves == [(9, None, State.STARTING)]  # its birth is a move too
    life.state = old  # (set up directly: the path there is not the point)
    owner.moves.clear()
    if new is old:
        life.move(new)
        assert owner.moves == []
    elif new in ALLOWED[old]:
        life.move(new)
        assert life.state is new and owner.moves == [(9, old, new)]
    else:
        with pytest.raises(LifeError, match=f"no move from {old} to {new}"):
            life.move(new)
        assert life.state is old and owner.moves == []


async def test_a_reload_asked_stays_asked_through_a_retire_and_announce(
    autojump_clock: trio.testing.MockClock,
) -> None:
    life = life_in(Phase.SERVING)
    assert life.apply(Event.RELOAD) is Action.END
    stop_at = life.stop_at
    await trio.sleep(1)
    assert life.announce(None) is Action.NOTHING
    assert life.announce(b"uuid-a") is Action.NOTHING  # not a withdrawal: the reload still ends it
    assert life.ending and life.asked is Asked.RELOAD and life.stop_at == stop_at
