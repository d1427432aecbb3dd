"""Domains as C xenstored tracks them: introduction, release, targets, quotas and (4.22) features."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from actors.xs.wire import Feature

__all__ = [
    "FEATURES",
    "Domain",
    "DomainTable",
    "Quotas",
]

# XENSTORE_SERVER_FEATURE_* (xs_wire.h); C xenstored 4.22 offers these three (XENSTORE_FEATURES: 14).
FEATURES: Final = int(Feature.ERROR | Feature.WATCHDEPTH | Feature.DOMID_ANY)


@dataclass(frozen=True, slots=True)
class Quotas:
    """Quotas with the defaults of C xenstored (4.17 and 4.22 alike); they apply to unprivileged domains only.

    Over-quota errors are those of the C daemon: a new node past ``nodes``, a node record past ``node_size``
    bytes, more than ``permissions`` entries, a transaction touching more than ``transaction_nodes`` nodes:
    ENOSPC. Like the C daemon (``count > quota``), one watch past ``watches`` and one transaction past
    ``transactions`` are still accepted: the next is E2BIG (watches) or ENOSPC (transactions).
    ``outstanding`` unanswered requests stall the domain's connection until its replies are read; queued
    watch events past ``memory`` bytes are dropped, and so are events unread after ``watch_event_timeout``
    seconds. ``path_length`` applies to every connection, dom0 included, as in the C daemon: it limits the
    path after a leading ``/local/domain/<domid>/``.
    """

    nodes: int = 1000
    watches: int = 128
    transactions: int = 10
    outstanding: int = 20
    transaction_nodes: int = 1024
    node_size: int = 2048
    permissions: int = 5
    path_length: int = 2048
    memory: int = 2 * 1024 * 1024 + 512 * 1024
    memory_soft: int = 2 * 1024 * 1024
    watch_event_timeout: float = 20.0


C = TypeVar("C")  # the daemon's connection type


class Domain(Generic[C]):
    """A ``struct domain``: exists once referenced (by a permission, as a node owner, or by INTRODUCE).

    ``features`` (4.22) are what it may use, all of them unless SET_FEATURE changed them before INTRODUCE;
    ``quotas`` (4.22) are its own, copied from the global ones when it came to be.
    """

    __slots__ = (
        "conn",
        "domid",
        "features",
        "generation",
        "introduced",
        "quota_max",
        "quotas",
        "refs",
        "shutdown",
        "target",
    )

    def __init__(self, domid: int, generation: int, quotas: Quotas) -> None:
        self.domid = domid
        self.features = FEATURES
        self.quotas = quotas
        self.quota_max: dict[str, int] = {}  # 4.22's CONTROL quota <domid>: the highest use shown
        self.generation = generation  # nodes older than this do not grant it anything (XSA-322)
        self.introduced = False
        self.shutdown = False
        self.conn: C | None = None
        self.target: int | None = None
        # SET_TARGET makes the targeting domain's connection hold a talloc reference to this one's; in C a
        # RELEASE then only drops that reference, and the domain stays (one RELEASE per reference).
        self.refs = 0

    @property
    def path(self) -> bytes:
        return b"/local/domain/%d" % self.domid


class DomainTable(Generic[C]):
    """domid -> :class:`Domain`. Dom0 is there from the start, introduced (``dom0_init``).

    ``quotas()`` gives the global quotas a new domain starts with."""

    def __init__(self, quotas: Callable[[], Quotas]) -> None:
        self._quotas = quotas
        dom0: Domain[C] = Domain(0, 0, quotas())
        dom0.introduced = True
        self._domains: dict[int, Domain[C]] = {0: dom0}

    def __contains__(self, domid: object) -> bool:
        return domid in self._domains

    def __iter__(self) -> Iterator[Domain[C]]:
        return iter(list(self._domains.values()))

    def get(self, domid: int) -> Domain[C] | None:
        return self._domains.get(domid)

    def ensure(self, domid: int, generation: int) -> Domain[C]:
        """``find_or_alloc_existing_domain()``: every domid below DOMID_FIRST_RESERVED exists here."""
        domain = self._domains.get(domid)
        if domain is None:
            domain = self._domains[domid] = Domain(domid, generation, self._quotas())
        return domain

    def remove(self, domid: int) -> None:
        self._domains.pop(domid, None)

    def introduced(self, domid: int) -> Domain[C] | None:
        domain = self._domains.get(domid)
        return domain if domain is not None and domain.introduced else None
