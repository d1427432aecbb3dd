"""What a lifecycle source is: the source and sink protocols between a source and the registry, and the
root of the xenwatch-multithreading tree.

A source reports to a :class:`LifecycleSink`: the whole set after a full listing, or one domain after an event
that names it. It runs on one connection and ends (with ConnectionLost) only when that connection is lost: an
error reply is the request's, never the source's (see :func:`~.requests.patiently`).
"""

from __future__ import annotations

from typing import Final, Protocol

from ...xs.client import XenStore

__all__ = ["MTWATCH_ROOT", "LifecycleSink", "LifecycleSource"]


MTWATCH_ROOT: Final = "/local/domain/0/mtwatch"


class LifecycleSink(Protocol):
    def full(self, domains: dict[int, bytes]) -> None:
        """Exactly these domains are live now, with these identities."""

    def one(self, domid: int, identity: bytes | None) -> None:
        """This domain is live with this identity (or, with None, gone)."""

    def some(self, domains: dict[int, bytes]) -> None:
        """These domains are live, with these identities: a part of a listing still under way (its
        :meth:`full` report follows), so that their actors start while the daemon answers for the rest."""


class LifecycleSource(Protocol):
    name: str

    async def follow(self, xs: XenStore, sink: LifecycleSink) -> None:
        """Report the live domains to ``sink`` until the connection ends (then raise ConnectionLost)."""
