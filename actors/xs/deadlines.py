"""Request deadlines (``XenStore.request_timeout``) kept by one task per connection, not by a cancel scope per
request: entering and leaving a trio cancel scope with a deadline costs about as much as the rest of a request,
and a runtime starting 32,000 domain actors makes four requests for each."""

from __future__ import annotations

import math

import trio

from .protocol import ClientProtocol, Request

__all__ = ["RequestDeadlines"]


class RequestDeadlines:
    """Releases the wait of every request whose deadline passed before its reply came: it is abandoned (a late
    reply is discarded) and its waiter set with ``reply`` still None (the caller raises RequestTimeout).
    :meth:`run` is the connection's task; :meth:`arm` gives a request its deadline as it is queued."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol
        self._next = math.inf  # when run() wakes next (inf: when a request is armed)
        self._wake = trio.Event()

    def arm(self, request: Request, timeout: float, now: float | None = None) -> None:
        """``now``: the trio clock, when the caller has it (a pipeline arms many requests at one moment)."""
        request.timeout = timeout
        request.deadline = deadline = (trio.current_time() if now is None else now) + timeout
        if deadline < self._next:
            self._wake.set()

    async def run(self) -> None:
        """Forever (the connection's nursery cancels it): release the overdue requests, then sleep until the
        earliest deadline still ahead, or until a request is armed with an earlier one."""
        while True:
            now = trio.current_time()
            earliest = math.inf
            overdue: list[Request] = []
            for request in self._protocol.waiting():
                deadline = request.deadline
                if deadline is None:
                    continue
                if deadline <= now:
                    overdue.append(request)
                elif deadline < earliest:
                    earliest = deadline
            for request in overdue:
                # Abandoned now (its late answer is discarded), then its waiter released once: a pipeline's
                # countdown, which stands for many requests, is never counted down twice for one.
                request.deadline = None
                self._protocol.abandon(request)
                assert request.waiter is not None
                request.waiter.set()
            self._next = earliest
            self._wake = trio.Event()
            with trio.move_on_at(earliest):
                await self._wake.wait()
