"""Watch events as the client hands them out; sans-IO (no trio), shared by the protocol and subscriptions."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WatchEvent"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One WATCH_EVENT: the path that fired and the watch's token.

    ``received_at`` is ``trio.current_time()`` when the connection's reader decoded the frame (0 for events
    made up locally, such as a resync). ``initial`` is True for the event the daemon fires when the watch is
    registered (the first event for the token whose path is the watched path, after WATCH was sent).
    ``domid`` is the domain a special event names (``@introduceDomain/5``, ``@releaseDomain/5``: depth-1
    special watches on Xen 4.22), else None. Events are hints: re-read the state.
    """

    path: str
    token: str
    received_at: float = field(default=0.0, compare=False)
    initial: bool = field(default=False, compare=False)
    domid: int | None = None
