"""The event loop's watchdog: a thread that notices when the trio loop has not run for longer than
``block_threshold`` seconds (blocking code in an ``async def`` handler: ``time.sleep``, a CPU-bound loop, a
blocking syscall), names the domain whose handler, hook or task was running, with its stack, and has the block
charged to that domain once the loop runs again. Other domains' timeouts that fell inside the block are not
theirs (:meth:`Watchdog.blocked_during`).

Cost: the thread wakes every ``block_threshold / 2`` seconds and posts one callback into the loop; nothing is
done per event. It runs only while a runtime is open.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

import trio

from .._log import logger
from .default_actor import DefaultActor
from .domain.actor import DomainActor
from .domain.context import DomainContext

__all__ = ["LoopBlocked", "Watchdog"]

_HISTORY = 64  # blocks remembered for blocked_during()


class LoopBlocked(Exception):
    """A domain's code kept the event loop from running (charged to that domain as its failure)."""


def _domid_in(frame: FrameType | None) -> int | None:
    """The domid of the innermost domain scope on the loop thread's stack: a handler's or hook's ``ctx``,
    a per-domain task's (``run_task``), or the root of an actor's own task (``DomainActor.run``; the
    default actor's is domid 0). None when no domain's code is running (the runtime's own, or the
    application's)."""
    while frame is not None:
        code = frame.f_code
        if "ctx" in code.co_varnames:
            ctx = frame.f_locals.get("ctx")
            if isinstance(ctx, DomainContext):
                return ctx.domid
        if code is _ACTOR_RUN:
            owner = frame.f_locals.get("self")
            return owner.domid if isinstance(owner, DomainActor) else None
        if code is _DEFAULT_RUN:
            return 0
        frame = frame.f_back
    return None


_ACTOR_RUN = DomainActor.run.__code__
_DEFAULT_RUN = DefaultActor.run.__code__


class Watchdog:
    """See the module docstring. ``report(domid, seconds)`` is called in the trio thread after a block."""

    def __init__(self, threshold: float, report: Callable[[int | None, float], None]) -> None:
        self.threshold = threshold
        self.report = report
        self.blocks = 0
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._last_beat = time.monotonic()
        self._block: list[float] | None = None  # [start, end(inf while ongoing)] of the block being noticed
        self._culprit: int | None = None
        self._history: collections.deque[tuple[float, float, int | None]] = collections.deque(maxlen=_HISTORY)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mtwatch-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (at once: it waits on the stop event between looks)."""
        self._stop.set()
        self._thread.join(timeout=1)

    def blocked_during(self, start: float, domid: int) -> bool:
        """Did another domain block the loop at some moment since ``start`` (trio clock)? Then a timeout that
        ``domid`` overran meanwhile is not its fault."""
        now_mono = time.monotonic()
        since = now_mono - (trio.current_time() - start)
        block = self._block
        if block is not None and self._culprit != domid and block[1] >= since:
            return True
        return any(end >= since and culprit != domid for _, end, culprit in self._history)

    # -- in the trio thread ------------------------------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        self._last_beat = now
        block = self._block
        if block is not None:
            block[1] = now
            self._history.append((block[0], now, self._culprit))
            self._block = None
            try:  # a run_sync_soon callback that raises would end the trio run
                self.report(self._culprit, now - block[0])
            except Exception:
                logger.opt(exception=True).error("reporting a blocked event loop failed")

    # -- in the watchdog thread --------------------------------------------------------------------------

    def _watch(self) -> None:
        interval = self.threshold / 2
        while not self._stop.wait(interval):
            silent = time.monotonic() - self._last_beat
            if silent > self.threshold and self._block is None:
                self._noticed(self._last_beat)
            try:
                self._token.run_sync_soon(self._beat)
            except trio.RunFinishedError:
                return

    def _noticed(self, since: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        self._culprit = _domid_in(frame)
        self._block = [since, float("inf")]
        self.blocks += 1
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
        logger.bind(domid=self._culprit).warning(
            "the event loop has not run for {:.3g} s: domain {} is blocking it; its stack:\n{}",
            time.monotonic() - since,
            self._culprit,
            stack,
        )
