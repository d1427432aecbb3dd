"""Watch events as the client hands them out; sans-IO (no trio), shared by the protocol and subscriptions."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["WatchEvent"]


class WatchEvent(NamedTuple):
    """One WATCH_EVENT: the path that fired and the watch's token. Immutable.

    ``received_at`` is ``trio.current_time()`` when the connection's reader decoded the frame (0 for events
    made up locally, such as a resync). ``initial`` is True for the event the daemon fires when the watch is
    registered (the first event for the token whose path is the watched path, after WATCH was sent).
    ``domid`` is the domain a special event names (``@introduceDomain/5``, ``@releaseDomain/5``: depth-1
    special watches on Xen 4.22), else None. Events are hints: re-read the state.

    Two events are equal when path, token and domid are (``received_at`` and ``initial`` say when and why it
    came, not what). A NamedTuple rather than a frozen dataclass: the reader makes one per event, and this is
    the cheapest immutable object to make (about a third of the dataclass's cost).
    """

    path: str
    token: str
    received_at: float = 0.0
    initial: bool = False
    domid: int | None = None

    def __eq__(self, other: object) -> bool:
        # Never equal to a plain tuple, though it is one.
        return (
            isinstance(other, WatchEvent)
            and self[0] == other[0]
            and self[1] == other[1]
            and self[4] == other[4]
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((self[0], self[1], self[4]))
