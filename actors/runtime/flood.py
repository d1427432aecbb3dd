"""Lossless flood control: a domain whose events come faster than its handlers take them is unwatched for a
cool-down, then watched again.

Registering a watch makes the daemon fire it once, so the end of a throttle is a resync: the handler gets the
watch's own path and re-reads, and the last value written during the flood is never lost. Only watch events
are held back; messages (``rt.send``/``rt.ask``) are never throttled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import trio

from .options import RuntimeOptions

if TYPE_CHECKING:
    from loguru import Logger

    from .host import ActorHost

__all__ = ["FloodGate"]


class Flooded(Protocol):
    """What flood control needs of a domain actor."""

    domid: int
    rt: ActorHost

    @property
    def log(self) -> Logger: ...

    async def attach(self) -> None: ...

    async def detach(self) -> None: ...


_WINDOW = 1.0  # seconds over which the event rate is counted


class FloodGate:
    """One domain's flood detector and cool-down bookkeeping; the actor owns the throttle itself.

    :meth:`check` runs on the connection reader's path for every event: a counter and two comparisons, no
    clock read (the event's own ``received_at`` is the time) and no task.
    """

    __slots__ = (
        "_calm",
        "_high_water",
        "_limit",
        "_over_since",
        "_window_count",
        "_window_start",
        "cooldown",
        "ended_at",
        "options",
        "throttled_since",
        "throttles",
    )

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        rate = options.flood_rate
        self._limit = None if rate is None else rate * _WINDOW
        high_water = options.flood_high_water
        self._high_water = math.inf if high_water is None else high_water
        self._calm = 2 * options.flood_cooldown_max  # unthrottled this long: the cool-down starts over
        self._window_start = 0.0
        self._window_count = 0
        self._over_since: float | None = None
        self.throttled_since: float | None = None
        self.cooldown = options.flood_cooldown
        self.ended_at: float | None = None
        self.throttles = 0

    def throttle(self, actor: Flooded, nursery: trio.Nursery, reason: str, now: float) -> None:
        """Unwatch ``actor`` for a cool-down (a task in its incarnation's nursery), then watch it again: the
        daemon's initial events are the resync."""
        cooldown = self.begin(now)
        actor.log.warning(
            "domain {} throttled ({}): its watches are off for {:.3g} s, then re-read",
            actor.domid,
            "over the event rate" if reason == "rate" else "mailbox over its high-water mark",
            cooldown,
        )
        actor.rt._emit("throttled", actor.domid, 1)
        nursery.start_soon(self._cool_down, actor, cooldown, name=f"flood cool-down of domain {actor.domid}")

    async def _cool_down(self, actor: Flooded, cooldown: float) -> None:
        try:
            await actor.detach()
            await trio.sleep(cooldown)
        finally:
            self.unthrottle(actor)  # also when the incarnation ends meanwhile
        await actor.attach()

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
        actor.rt._emit("throttled", actor.domid, 0)

    def check(self, now: float, depth: int) -> str | None:
        """One event arrived at ``now`` with ``depth`` items waiting: the reason to throttle (``"rate"``,
        ``"mailbox"``), or None."""
        if now - self._window_start >= _WINDOW:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._limit is not None and self._window_count > self._limit:
            return "rate"
        if depth < self._high_water:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now
        elif now - self._over_since >= self.options.flood_high_water_for:
            return "mailbox"
        return None

    def begin(self, now: float) -> float:
        """The throttle starts at ``now``: returns its cool-down (doubled from the last one if the domain
        was throttled again before a calm period, up to ``flood_cooldown_max``)."""
        if self.ended_at is not None and now - self.ended_at < self._calm:
            self.cooldown = min(self.cooldown * 2, self.options.flood_cooldown_max)
        else:
            self.cooldown = self.options.flood_cooldown
        self.throttled_since = now
        self.throttles += 1
        return self.cooldown

    def end(self, now: float) -> None:
        """The throttle ended (watched again, or the incarnation ended): counting starts afresh."""
        self.throttled_since = None
        self.ended_at = now
        self._window_start, self._window_count = now, 0
        self._over_since = None
