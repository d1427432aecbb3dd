"""A domain's per-domain watches as registered with the daemon, and the sink that hands each of their events
to the domain actor."""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Protocol

import trio

from ...xs.errors import XenStoreError
from ...xs.subscription import WatchEvent

if TYPE_CHECKING:
    from ...xs.client import XenStore

from ..watch_rules import Watch

__all__ = ["Poster", "Registrations", "Sink"]


_UNWATCH_DEADLINE = 2.0


class Poster(Protocol):
    """Where a per-domain watch's events go: the domain actor's inbox (never blocks)."""

    def post(self, watch: Watch, generation: int, watch_path: str, event: WatchEvent, /) -> None: ...


class Sink:
    """What the client calls with each event of one registration: ``poster.post(watch, generation, path,
    event)``. (One slotted object per registration; a partial of a bound method would keep three.)"""

    __slots__ = ("generation", "path", "poster", "watch")

    def __init__(self, poster: Poster, watch: Watch, generation: int, path: str) -> None:
        self.poster = poster
        self.watch = watch
        self.generation = generation
        self.path = path

    def __call__(self, event: WatchEvent) -> None:
        self.poster.post(self.watch, self.generation, self.path, event)


class Registrations:
    """One domain's per-domain watches as registered with the daemon: (connection, path, token) by watch id."""

    __slots__ = ("_busy", "_free", "_registered", "domid")

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self._registered: dict[int, tuple[XenStore, str, str]] = {}
        self._busy = False  # an attach or detach is under way
        self._free: trio.Event | None = None  # made only when a second one has to wait (rare)

    async def wait_turn(self) -> None:
        """Wait until no attach or detach holds the domain's turn (without taking it). Attach and detach run one
        at a time. (Not a trio.Lock: one made and dropped at every start of 32,000 actors, for a contention that
        hardly ever happens.)"""
        while self._busy:
            if self._free is None:
                self._free = trio.Event()
            await self._free.wait()

    async def _acquire(self) -> None:
        await self.wait_turn()
        self._busy = True

    @property
    def busy(self) -> bool:
        """Is an attach or detach under way (holding the lock)?"""
        return self._busy

    # -- attaching: the requests go in the runtime's pipelines (see .starting), under the domain's turn --

    def missing(self, xs: XenStore, watches: list[Watch]) -> list[Watch]:
        """The watches of ``watches`` not registered on ``xs``."""
        registered = self._registered
        return [w for w in watches if (held := registered.get(w.id)) is None or held[0] is not xs]

    @property
    def empty(self) -> bool:
        """Nothing registered, nor being registered."""
        return not self._registered and not self._busy

    def take_turn(self) -> bool:
        """Take the turn without waiting (False: another attach or detach has it)."""
        if self._busy:
            return False
        self._busy = True
        return True

    def record(self, watch: Watch, xs: XenStore, path: str, token: str) -> None:
        """A watch registered (by whoever holds the turn)."""
        self._registered[watch.id] = (xs, path, token)

    def give_turn(self) -> None:
        self._busy = False
        if (
            self._free is not None
        ):  # every waiter wakes; the first to run takes its turn, the others wait again
            self._free.set()
            self._free = None

    def mute(self) -> None:
        """Deliver no more events of any watch at once (no round trip: callable from the connection's reader
        task); :meth:`detach` unregisters them next."""
        for xs, _, token in self._registered.values():
            xs.mute_watch(token)

    def drop_on(self, xs: XenStore) -> list[tuple[str, str]]:
        """Under the turn: forget every watch registered on ``xs``; their (path, token), for the caller to
        unwatch (the runtime's pipelined leave)."""
        dropped = [(path, token) for held, path, token in self._registered.values() if held is xs]
        self._registered = {key: held for key, held in self._registered.items() if held[0] is not xs}
        return dropped

    def forget(self) -> None:
        """Drop the records of every watch without unregistering (their connection is closing)."""
        self._registered.clear()

    async def detach(self, only: Watch | None = None) -> None:
        """Unregister every watch (or one); bounded in time, safe under cancellation."""
        if not self._registered and not self.busy:
            return  # nothing registered, nor being registered (the second detach of a stop)
        with trio.CancelScope(shield=True), trio.move_on_after(_UNWATCH_DEADLINE):
            await self._acquire()
            try:
                for watch_id in list(self._registered):
                    if only is not None and watch_id != only.id:
                        continue
                    xs, path, token = self._registered.pop(watch_id)
                    if not xs.is_lost:
                        with suppress(XenStoreError):
                            await xs.remove_watch(path, token)
            finally:
                self.give_turn()
