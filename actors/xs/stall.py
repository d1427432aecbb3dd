"""Stall detection: a daemon that stops answering (SIGSTOP, a hung disk, a livelock) is told apart from a
guest that is slow, so that waiting on it is not blamed on the guest."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import trio
import trio_util

from .errors import ConnectionStalled
from .protocol import ClientProtocol

__all__ = ["StallDetector"]

_HISTORY = 256  # stalls remembered for stalled_during()


class StallDetector:
    """Watches one connection: it is *stalled* while requests are pending and no frame arrived for
    ``stall_after`` seconds. ``stalled`` (an AsyncBool) turns True then and False at the next frame (or when
    nothing is pending any more); ``count`` counts stalls. With ``stall_limit``, a silence that long ends the
    connection with :class:`ConnectionStalled` (every pending caller gets it). A stall's interval, for
    :meth:`during`, runs from the start of the silence to its end.

    It watches ``protocol``'s pending requests; ``stop`` ends the connection (at ``stall_limit``).
    """

    def __init__(
        self,
        protocol: ClientProtocol,
        stop: Callable[[ConnectionStalled], None],
        stall_after: float,
        stall_limit: float | None,
    ) -> None:
        self._protocol = protocol
        self._stop = stop
        self._lost = False
        self._wakeup = trio.Event()
        self.configure(stall_after, stall_limit)
        self.stalled = trio_util.AsyncBool(False)
        self.count = 0
        self._last_frame = -math.inf
        self._waiting_since = -math.inf
        self.frames = 0  # chunks received, each a sign of life
        self._heard: trio.Event | None = None  # set by the next frame, for silent_for() and next_frame()
        self._intervals: deque[list[float]] = deque(maxlen=_HISTORY)  # [start, end]; end inf while ongoing

    def configure(self, stall_after: float, stall_limit: float | None) -> None:
        """Set the thresholds (seconds); ValueError unless ``0 < stall_after`` and ``0 < stall_limit``."""
        if not stall_after > 0 or (stall_limit is not None and not stall_limit > 0):
            raise ValueError(
                f"need stall_after > 0 and stall_limit > 0 or None, not {stall_after}, {stall_limit}"
            )
        self.stall_after = stall_after
        self.stall_limit = stall_limit
        self._wakeup.set()  # re-check with the new thresholds

    # -- called by the connection (cheap: the reader calls frame_received for every chunk) -----------------

    def frame_received(self, now: float) -> None:
        self._last_frame = now
        self.frames += 1
        if self._heard is not None:
            self._heard.set()
            self._heard = None
        if self.stalled.value:
            self._end(now)
            self._wakeup.set()  # the watchdog waits for the stall's end to watch for the next one

    def requests_began(self) -> None:
        """Requests are pending where none were: the silence counts from now. The watchdog is not woken (that
        would cost a task switch per request): it looks at least every ``stall_after`` seconds anyway."""
        self._waiting_since = trio.current_time()

    def connection_lost(self) -> None:
        self._lost = True
        if self.stalled.value:
            self._end(trio.current_time())
        if self._heard is not None:
            self._heard.set()
            self._heard = None
        self._wakeup.set()

    def during(self, start: float, end: float) -> bool:
        return any(s <= end and e >= start for s, e in self._intervals)

    # -- silences shorter than a stall -----------------------------------------------------------------------

    def silent_since(self) -> float | None:
        """When the current silence began (the last frame, or when requests began to wait, whichever is
        later), while requests are pending and nothing arrived since; None otherwise (or once lost)."""
        if self._lost or not self._protocol.pending:
            return None
        return max(self._last_frame, self._waiting_since)

    async def next_frame(self) -> None:
        """Wait until the next frame arrives, or the connection is lost."""
        frames = self.frames
        while self.frames == frames and not self._lost:
            if self._heard is None:
                self._heard = trio.Event()
            await self._heard.wait()

    async def silent_for(self, seconds: float) -> bool:
        """Is the connection silent (requests pending, nothing received) and does the silence last until it
        is ``seconds`` long (counted from its start, which may be past)? False as soon as a frame arrives (the
        daemon answers; frames already received but not yet read count: the reader reads them first) or when
        nothing is pending; True for a silence that long, or a connection lost meanwhile."""
        since = self.silent_since()
        if since is None:
            return self._lost
        frames = self.frames  # counted, not timed: on a test's frozen clock a frame comes at the same instant
        # Two checkpoints: bytes the daemon sent before now are read first, whatever order the loop runs its
        # tasks in, so that this process's own lateness is never taken for the daemon's silence.
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        with trio.move_on_at(since + seconds):
            while self.frames == frames and not self._lost:
                await self.next_frame()
            return self._lost
        return True

    # -- the watchdog task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """The watchdog: wakes every ``stall_after`` seconds while nothing is pending, else at the next
        threshold."""
        while not self._lost:
            self._wakeup = trio.Event()
            deadline = self._check(trio.current_time())
            if deadline is None:
                return
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    def _check(self, now: float) -> float | None:
        """Update the state for ``now``; the next time to look again (None: the connection was ended)."""
        if not self._protocol.pending:
            if self.stalled.value:
                self._end(now)
            # Requests that begin before this deadline stall at the earliest stall_after after it: on time.
            return now + self.stall_after
        silent_since = max(self._last_frame, self._waiting_since)
        if not self.stalled.value:
            if now < silent_since + self.stall_after:
                return silent_since + self.stall_after
            self._begin(silent_since)
        if self.stall_limit is None:
            return math.inf  # a frame ends the stall and wakes the watchdog (frame_received)
        if now < silent_since + self.stall_limit:
            return silent_since + self.stall_limit
        silence = now - silent_since
        self._stop(
            ConnectionStalled(
                f"xenstored sent nothing for {silence:.1f} s with requests pending (stall_limit)"
            )
        )
        return None

    def _begin(self, since: float) -> None:
        self.count += 1
        self._intervals.append([since, math.inf])
        self.stalled.value = True

    def _end(self, now: float) -> None:
        if self._intervals and self._intervals[-1][1] == math.inf:
            self._intervals[-1][1] = now
        self.stalled.value = False
