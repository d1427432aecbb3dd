"""``rt.domains``: a read-only Mapping of domid to :class:`~.domain.context.DomainSnapshot` whose items are built
per key, when read. Reading one domain costs one snapshot, not a snapshot of every domain; iterating walks the
domids there were when it began, skipping any gone since (a caller that awaits between items sees each domain
as it is when it gets to it). ``dict(rt.domains)`` is a full snapshot, at the cost of one per domain.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import Protocol

from .domain.context import DomainSnapshot

__all__ = ["DomainsView"]


class _Snapshots(Protocol):
    def snapshot(self) -> DomainSnapshot: ...


class DomainsView(Mapping[int, DomainSnapshot]):
    """See the module docstring."""

    __slots__ = ("_actors",)

    def __init__(self, actors: Mapping[int, _Snapshots]) -> None:
        self._actors = actors

    def __getitem__(self, domid: int) -> DomainSnapshot:
        return self._actors[domid].snapshot()

    def __contains__(self, domid: object) -> bool:
        return domid in self._actors

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._actors))  # the domids at this moment: actors may come and go meanwhile

    def items(self) -> ItemsView[int, DomainSnapshot]:
        return _Items(self)

    def values(self) -> ValuesView[DomainSnapshot]:
        return _Values(self)

    def _pairs(self) -> Iterator[tuple[int, DomainSnapshot]]:
        actors = self._actors
        for domid in list(actors):
            actor = actors.get(domid)
            if actor is not None:  # gone since the walk began: skipped
                yield domid, actor.snapshot()

    def __repr__(self) -> str:
        return f"<rt.domains: {len(self._actors)} domains>"


class _Items(ItemsView[int, DomainSnapshot]):
    _mapping: DomainsView

    def __iter__(self) -> Iterator[tuple[int, DomainSnapshot]]:
        return self._mapping._pairs()


class _Values(ValuesView[DomainSnapshot]):
    _mapping: DomainsView

    def __iter__(self) -> Iterator[DomainSnapshot]:
        return (snapshot for _, snapshot in self._mapping._pairs())
