"""What the ``domains`` lifecycle (:mod:`.domains`) was told and still has to look at: the events of its
watches since it last looked (:class:`Pending`), and, without watch depth, the release round
(:class:`ReleaseRound`): the dying domains to check first, the live ones still to check, and the ones whose
``vm`` is still to be watched."""

from __future__ import annotations

from collections import OrderedDict, deque
from contextlib import suppress
from typing import NamedTuple

import trio

from ...xs.errors import InvalidDomid
from ...xs.subscription import WatchEvent
from ...xs.wire import INTRODUCE_DOMAIN as INTRODUCE
from ...xs.wire import RELEASE_DOMAIN as RELEASE
from ...xs.wire import check_domid

__all__ = ["BATCH", "FAN_OUT", "INTRODUCE", "RELEASE", "Pending", "ReleaseRound", "Said"]

FAN_OUT = 4096  # requests in flight at once in a listing (dom0's socket has no outstanding-request quota)
# Requests in flight at once in a release round: an event that comes meanwhile waits for these replies first.
# Few, because C xenstored answers a connection's requests one pass over all its connections at a time, and a
# pass over 3,000 domains takes milliseconds.
BATCH = 8


class Said(NamedTuple):
    """What the watches said since the registry last looked."""

    introduced: bool  # a domid-less @introduceDomain (no watch depth)
    released: bool  # a domid-less @releaseDomain
    named_in: set[int]  # domains a depth-1 @introduceDomain/<domid> named
    named_out: set[int]  # domains a depth-1 @releaseDomain/<domid> named
    touched: set[int]  # domains whose vm node (or the directory above it) changed


class Pending:
    """What the watches said since the registry last looked: a domid-less event (no watch depth) is a flag, a
    depth-1 event names its domain, and a ``vm`` watch's event names the domain in its path."""

    def __init__(self, base: str) -> None:
        self.prefix = base.rstrip("/") + "/"
        self.depth: int | None = None
        self.wake = trio.Event()
        self._said = Said(False, False, set(), set(), set())

    def mark(self, event: WatchEvent) -> None:
        """The sink of the special watches."""
        into = event.path.startswith(INTRODUCE)
        if event.domid is not None:
            (self._said.named_in if into else self._said.named_out).add(event.domid)
        elif self.depth is not None:
            return  # with depth, only the registration event names no domain
        elif into:
            self._said = self._said._replace(introduced=True)
        else:
            self._said = self._said._replace(released=True)
        self.wake.set()

    def mark_vm(self, event: WatchEvent) -> None:
        """The sink of the ``vm`` watches (``<base>/<domid>/vm``): dom0's nodes, which no guest can change."""
        if event.initial or not event.path.startswith(self.prefix):
            return
        with suppress(InvalidDomid):
            self._said.touched.add(
                check_domid(event.path[len(self.prefix) :].split("/", 1)[0], guest_only=True)
            )
            self.wake.set()

    def take(self) -> Said:
        """What was said, forgotten here."""
        said, self._said = self._said, Said(False, False, set(), set(), set())
        self.wake = trio.Event()
        return said


class ReleaseRound:
    """Without watch depth, where a domid-less ``@releaseDomain`` is looked for: among the ``dying`` domains
    first (their ``vm`` node is gone), then in one round of IS_DOMAIN_INTRODUCED over every live domain, taken
    ``BATCH`` at a time while no event waits. Releases that come during a round extend it: a domain not yet
    checked is checked once, and every live domain is checked after the last release."""

    def __init__(self, live: dict[int, bytes]) -> None:
        self._live = live  # the source's live domains (shared, not copied)
        self.dying: set[int] = set()
        self._unchecked: OrderedDict[int, None] = OrderedDict()
        self.to_watch: deque[int] = deque()  # live domains of the first listing whose vm is yet to be watched
        self.rounds = 0  # rounds started over every live domain

    @property
    def unchecked(self) -> bool:
        return bool(self._unchecked)

    def restart(self) -> None:
        """A new connection: its first listing replaces any round."""
        self.dying.clear()
        self._unchecked.clear()
        self.to_watch.clear()

    def start(self) -> list[int]:
        """A release: every live domain is to be checked; returns the dying ones, to check first."""
        self.rounds += 1
        for domid in self._live:
            self._unchecked[domid] = None  # one not yet checked keeps its place
        return sorted(self.dying & self._live.keys())

    def next_batch(self) -> list[int]:
        """The next live domains of the round to check."""
        batch: list[int] = []
        while self._unchecked and len(batch) < BATCH:
            domid, _ = self._unchecked.popitem(last=False)
            if domid in self._live:
                batch.append(domid)
        return batch

    def next_to_watch(self) -> list[int]:
        """The next live domains whose ``vm`` to watch (a few at a time, as the round)."""
        batch: list[int] = []
        while self.to_watch and len(batch) < BATCH:
            domid = self.to_watch.popleft()
            if domid in self._live:
                batch.append(domid)
        return batch
