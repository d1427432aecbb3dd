"""Lossless flood control: a domain whose events come faster than its handlers take them is unwatched for a
cool-down, then watched again (a cool-down's end first probes whether the guest still floods: then another
cool-down follows instead, up to a bound).

Registering a watch makes the daemon fire it once, so the end of a throttle is a resync: the handler gets the
watch's own path and re-reads, and the last value written during the flood is never lost. Only watch events
are held back; messages (``rt.send``/``rt.ask``) are never throttled.
"""

from __future__ import annotations

import math
from contextlib import suppress
from typing import TYPE_CHECKING, Protocol

import trio

from ...xs.errors import XenStoreError
from ...xs.subscription import WatchEvent
from ..options import RuntimeOptions

if TYPE_CHECKING:
    from loguru import Logger

    from .owner import ActorHost
    from .registrations import Registrations

__all__ = ["FloodGate"]


class Flooded(Protocol):
    """What flood control needs of a domain actor."""

    domid: int
    rt: ActorHost
    watches: Registrations

    @property
    def log(self) -> Logger: ...

    async def attach(self) -> None: ...

    async def detach(self) -> None: ...


_WINDOW = 1.0  # seconds over which the event rate is counted
# After a throttle, until the domain has been calm for a while (probation), the rate is counted over this
# shorter window and a mailbox at its high-water mark throttles at once: a guest still flooding when its
# watches come back is throttled again after a tenth of the events, not after a second's worth of them
# handled at the others' expense.
_PROBATION_WINDOW = 0.1
# A throttled domain is re-read at least this often (or every two longest cool-downs), even while its guest
# floods on: between those resyncs, a cool-down's end only probes (see FloodGate._still_flooding).
_RESYNC_EVERY = 5.0
_UNWATCH_DEADLINE = 2.0


class FloodGate:
    """One domain's flood detector and cool-down bookkeeping; the actor owns the throttle itself.

    :meth:`check` runs on the connection reader's path for every event: a counter and two comparisons, no
    clock read (the event's own ``received_at`` is the time) and no task.

    Why a flood's last value comes soon after its end: a flood that ends while the domain is throttled is
    re-read at the re-watch, at most ``flood_cooldown_max`` plus a quiet probe later; one that ends while it
    is watched leaves what its mailbox holds, which on probation (after a throttle, until calm) is below the
    high-water mark, because a guest still flooding when its watches come back is throttled again within a
    tenth of a second's worth of events. Why a long flood costs the others little: while it lasts, a
    cool-down's end costs a probe (two requests and at most a tenth of a second's worth of events, counted
    on the reader's path) rather than a resync (the handler re-reading everything), and a resync comes only
    every ``_RESYNC_EVERY`` seconds.
    """

    __slots__ = (
        "_calm",
        "_high_water",
        "_limit",
        "_over_since",
        "_probation_until",
        "_window",
        "_window_count",
        "_window_start",
        "cooldown",
        "ended_at",
        "options",
        "throttled_since",
    )

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        rate = options.flood_rate
        self._limit = None if rate is None else rate * _WINDOW
        self._window = _WINDOW
        self._probation_until = -math.inf
        high_water = options.flood_high_water
        self._high_water = math.inf if high_water is None else high_water
        self._calm = 2 * options.flood_cooldown_max  # unthrottled this long: the cool-down starts over
        self._window_start = 0.0
        self._window_count = 0
        self._over_since: float | None = None
        self.throttled_since: float | None = None
        self.cooldown = options.flood_cooldown
        self.ended_at: float | None = None

    def throttle(self, actor: Flooded, nursery: trio.Nursery, reason: str, now: float) -> None:
        """Unwatch ``actor`` for a cool-down (a task in its incarnation's nursery), then watch it again: the
        daemon's initial events are the resync. Its watches are muted at once, here on the reader's path:
        the events of a burst already on their way (the rest of the chunk being read, and what the daemon
        sends until it takes the UNWATCH) then cost the reader a lookup each, not an event's whole way."""
        actor.watches.mute()
        cooldown = self.begin(now)
        actor.log.warning(
            "domain {} throttled ({}): its watches are off for {:.3g} s, then re-read",
            actor.domid,
            "over the event rate" if reason == "rate" else "mailbox over its high-water mark",
            cooldown,
        )
        actor.rt.census.throttle(actor.domid, True)
        actor.rt.observers.emit("throttled", actor.domid, 1)
        nursery.start_soon(self._cool_down, actor, cooldown, name=f"flood cool-down of domain {actor.domid}")

    async def _cool_down(self, actor: Flooded, cooldown: float) -> None:
        options = self.options
        resync_by = trio.current_time() + max(_RESYNC_EVERY, 2 * options.flood_cooldown_max)
        try:
            await actor.detach()
            await trio.sleep(cooldown)
            # A guest still flooding would only be throttled again after its resync: the resync's reads cost
            # the others more than the flood itself, so it waits for the flood's end (or for resync_by).
            while trio.current_time() < resync_by and await self._still_flooding(actor):
                self.cooldown = min(self.cooldown * 2, options.flood_cooldown_max)
                actor.log.debug(  # the throttle's start and end are logged: not every probe of a long flood
                    "domain {} still floods: watches off for {:.3g} s more", actor.domid, self.cooldown
                )
                await trio.sleep(self.cooldown)
        finally:
            self.unthrottle(actor)  # also when the incarnation ends meanwhile
        await actor.attach()

    async def _still_flooding(self, actor: Flooded) -> bool:
        """Watch the domain's paths for a moment, under tokens of their own whose events only count: are
        they still coming over the rate? (False when there is no rate limit or nothing to probe with.)"""
        xs = actor.rt.connection
        limit = None if self.options.flood_rate is None else self.options.flood_rate * _PROBATION_WINDOW
        if xs is None or xs.is_lost or limit is None:
            return False
        count = 0
        over = trio.Event()
        probes: list[tuple[str, str]] = []

        def sink(event: WatchEvent) -> None:  # on the reader's path: a counter
            nonlocal count
            if not event.initial:
                count += 1
                if count > limit and not over.is_set():
                    over.set()
                    for _, token in probes:  # the verdict is in: the rest of the burst costs a lookup each
                        xs.mute_watch(token)

        try:
            for watch in actor.rt.domain_watches():
                path, token = watch.path(actor.domid), f"mtw/{actor.domid}/probe/{watch.id}"
                await xs.add_watch(path, token, sink)
                probes.append((path, token))
            with trio.move_on_after(_PROBATION_WINDOW):
                await over.wait()
        except XenStoreError:
            return False  # cannot tell: watch again (a lost connection's reconnect does that anyway)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_UNWATCH_DEADLINE):
                for path, token in probes:
                    if not xs.is_lost:
                        with suppress(XenStoreError):
                            await xs.remove_watch(path, token)
        return over.is_set()

    def unthrottle(self, actor: Flooded) -> None:
        """End the throttle, if there is one (the caller watches again, or the incarnation is over)."""
        since = self.throttled_since
        if since is None:
            return
        now = trio.current_time()
        self.end(now)
        actor.log.info(
            "domain {} no longer throttled after {:.3g} s (cool-down {:.3g} s)",
            actor.domid,
            now - since,
            self.cooldown,
        )
        actor.rt.census.throttle(actor.domid, False)
        actor.rt.observers.emit("throttled", actor.domid, 0)

    def check(self, now: float, depth: int) -> str | None:
        """One event arrived at ``now`` with ``depth`` items waiting: the reason to throttle (``"rate"``,
        ``"mailbox"``), or None."""
        if now - self._window_start >= self._window:
            self._window_start, self._window_count = now, 0
            if self._window != _WINDOW and now >= self._probation_until:
                self._probation(None)  # calm again: a full window, the full patience
        self._window_count += 1
        if self._limit is not None and self._window_count > self._limit:
            return "rate"
        if depth < self._high_water:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now
            if self._window != _WINDOW:
                return "mailbox"  # on probation: a mailbox filling up again is the same flood
        elif now - self._over_since >= self.options.flood_high_water_for:
            return "mailbox"
        return None

    def _probation(self, until: float | None) -> None:
        """Count over the short window until ``until`` (None: over the full window again)."""
        self._window = _WINDOW if until is None else _PROBATION_WINDOW
        self._probation_until = -math.inf if until is None else until
        rate = self.options.flood_rate
        self._limit = None if rate is None else max(rate * self._window, 1.0)

    def begin(self, now: float) -> float:
        """The throttle starts at ``now``: returns its cool-down (doubled from the last one if the domain
        was throttled again before a calm period, up to ``flood_cooldown_max``)."""
        if self.ended_at is not None and now - self.ended_at < self._calm:
            self.cooldown = min(self.cooldown * 2, self.options.flood_cooldown_max)
        else:
            self.cooldown = self.options.flood_cooldown
        self.throttled_since = now
        return self.cooldown

    def end(self, now: float) -> None:
        """The throttle ended (watched again, or the incarnation ended): counting starts afresh."""
        self.throttled_since = None
        self.ended_at = now
        self._window_start, self._window_count = now, 0
        self._over_since = None
        self._probation(now + self._calm)
