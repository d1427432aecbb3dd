"""Exception groups as the runtime meets them: the first leaf of a group, and a connection lost under several
tasks at once told as one bare ConnectionLost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from ..xs.errors import ConnectionLost

__all__ = ["first_leaf", "one_connection_lost"]


E = TypeVar("E", bound=BaseException)


@contextmanager
def one_connection_lost() -> Iterator[None]:
    """Around a nursery: a group holding ConnectionLost (and perhaps the Cancelled of siblings) comes out as
    one bare ConnectionLost, which ``except ConnectionLost`` and ``suppress`` catch on Python 3.11 too; a group
    with anything else in it comes out as it is.

    Not ``except*``: an exception raised in an ``except*`` clause is wrapped in a new group together with the
    unhandled rest."""
    try:
        yield
    except BaseExceptionGroup as group:
        lost, rest = group.split(ConnectionLost)
        if lost is None or (rest is not None and rest.split(trio.Cancelled)[1] is not None):
            raise
        raise first_leaf(lost) from None


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in a (nested) group that is not a group."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
