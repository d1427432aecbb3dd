"""Domains as C xenstored 4.17 tracks them: introduction, release, targets, and the per-domain quotas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["DOMID_FIRST_RESERVED", "DOMID_SELF", "Domain", "DomainTable", "Quotas"]

DOMID_FIRST_RESERVED: Final = 0x7FF0
DOMID_SELF: Final = 0x7FF0


@dataclass(frozen=True, slots=True)
class Quotas:
    """Quotas of C xenstored 4.17 (its defaults); they apply to unprivileged domains only.

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


class Domain:
    """A ``struct domain``: exists once referenced (by a permission, as a node owner, or by INTRODUCE)."""

    __slots__ = ("conn", "domid", "generation", "introduced", "refs", "shutdown", "target")

    def __init__(self, domid: int, generation: int) -> None:
        self.domid = domid
        self.generation = generation  # nodes older than this do not grant it anything (XSA-322)
        self.introduced = False
        self.shutdown = False
        self.conn: Connection | None = None
        self.target: int | None = None
        # SET_TARGET makes the targeting domain's connection hold a talloc reference to this one's; in C a
        # RELEASE then only drops that reference, and the domain stays (one RELEASE per reference).
        self.refs = 0

    @property
    def path(self) -> bytes:
        return b"/local/domain/%d" % self.domid


class DomainTable:
    """domid -> :class:`Domain`. Dom0 is there from the start, introduced (``dom0_init``)."""

    def __init__(self) -> None:
        dom0 = Domain(0, 0)
        dom0.introduced = True
        self._domains: dict[int, Domain] = {0: dom0}

    def __contains__(self, domid: object) -> bool:
        return domid in self._domains

    def __iter__(self) -> Iterator[Domain]:
        return iter(list(self._domains.values()))

    def get(self, domid: int) -> Domain | None:
        return self._domains.get(domid)

    def ensure(self, domid: int, generation: int) -> Domain:
        """``find_or_alloc_existing_domain()``: every domid below DOMID_FIRST_RESERVED exists here."""
        domain = self._domains.get(domid)
        if domain is None:
            domain = self._domains[domid] = Domain(domid, generation)
        return domain

    def remove(self, domid: int) -> None:
        self._domains.pop(domid, None)

    def introduced(self, domid: int) -> Domain | None:
        domain = self._domains.get(domid)
        return domain if domain is not None and domain.introduced else None
