"""Quota telemetry: every ``quota_interval`` seconds, each live domain's XenStore quota use and limits, read in
pipelines (:mod:`actors.xs.quota`), kept for ``rt.quotas``, the agent's metrics, ``status`` and ``top``. A
domain whose use of any resource reaches ``quota_threshold`` of its limit is logged (once), and again when it
falls back under. A daemon that reports no quotas is said so once (the state ``unsupported``), not at every
round; a round that fails (a timeout, a stall) is logged once until one succeeds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import trio

from .._log import logger
from ..xs.client import XenStore
from ..xs.quota import DomainQuota, QuotaSource, quota_source, read_quotas

__all__ = ["QuotaReport", "QuotaTelemetry"]

SLICE = 64  # domains per pipeline: a slice (with 4.22, 6 requests a domain) holds the loop a few ms


@dataclass(frozen=True, slots=True)
class QuotaReport:
    """What the last rounds found (``rt.quotas``).

    ``state``: "off" (``quota_interval`` None and no round asked for), "unknown" (no round yet), "cxenstored" (C xenstored and the
    embedded one: every resource), "oxenstored" (nodes only) or "unsupported" (``why`` says what the daemon
    answered). ``domains``: each live domain's :class:`~actors.xs.quota.DomainQuota` (domains the daemon does
    not know are absent). ``above``: the domains at or over ``threshold`` of some limit: (resource, share) of
    the highest. ``rounds``, ``last_round_at`` (trio clock) and ``last_round_seconds`` say how it went.
    """

    state: str
    threshold: float
    domains: Mapping[int, DomainQuota] = field(default_factory=dict)
    above: Mapping[int, tuple[str, float]] = field(default_factory=dict)
    why: str = ""
    rounds: int = 0
    last_round_at: float | None = None
    last_round_seconds: float | None = None


class QuotaTelemetry:
    """One per runtime; :meth:`run` lives in the root nursery. ``live()`` gives the domids to read."""

    def __init__(self, interval: float | None, threshold: float, live: Callable[[], Iterable[int]]) -> None:
        self.interval = interval
        self.threshold = threshold
        self._live = live
        self._source: QuotaSource | None = None
        self._source_of: XenStore | None = None
        self._domains: dict[int, DomainQuota] = {}
        self._above: dict[int, tuple[str, float]] = {}
        self._failing = False
        self.rounds = 0
        self.last_round_at: float | None = None
        self.last_round_seconds: float | None = None

    def report(self) -> QuotaReport:
        idle = "off" if self.interval is None else "unknown"
        state = idle if self._source is None else self._source.kind
        return QuotaReport(
            state,
            self.threshold,
            MappingProxyType(self._domains),  # each round makes new ones: a report is a snapshot, for free
            MappingProxyType(self._above),
            self._source.why if self._source is not None else "",
            self.rounds,
            self.last_round_at,
            self.last_round_seconds,
        )

    async def run(self, connection: Callable[[], XenStore | None]) -> None:
        """A round every ``interval`` seconds on the current connection (the first one ``interval`` after the
        start); waits out a lost connection. Raises nothing but Cancelled."""
        if self.interval is None:
            return
        while True:
            await trio.sleep(self.interval)
            xs = connection()
            if xs is None or xs.is_lost:
                continue
            try:
                await self.round(xs)
            except Exception as exc:  # whatever the daemon answers, the runtime goes on
                if not self._failing:
                    logger.warning("quota telemetry: a round failed ({!r}); trying again each interval", exc)
                self._failing = True

    async def round(self, xs: XenStore) -> QuotaReport:
        """Read every live domain's quotas now, a slice at a time (the loop runs between slices)."""
        start = trio.current_time()
        if self._source is None or self._source_of is not xs:
            self._source = await quota_source(xs)
            self._source_of = xs
            if self._source.kind == "unsupported":
                logger.info("quota telemetry: xenstored reports no quotas ({}); off", self._source.why)
            elif self._source.kind == "oxenstored":
                logger.info(
                    "quota telemetry: oxenstored reports nodes only (not watches, transactions, memory)"
                )
        source = self._source
        live = sorted(self._live())
        found: dict[int, DomainQuota] = {}
        for begin in range(0, len(live), SLICE):
            found.update(await read_quotas(xs, source, live[begin : begin + SLICE]))
            await trio.lowlevel.checkpoint()
        self._domains = found
        self._judge(found)
        if self._failing:
            logger.info("quota telemetry: rounds succeed again")
        self._failing = False
        self.rounds += 1
        self.last_round_at = trio.current_time()
        self.last_round_seconds = self.last_round_at - start
        return self.report()

    def _judge(self, found: Mapping[int, DomainQuota]) -> None:
        """Log the domains that crossed the threshold since the last round, and those that fell back."""
        above: dict[int, tuple[str, float]] = {}
        for domid, quota in found.items():
            highest = quota.highest
            if highest is not None and highest[1] >= self.threshold:
                above[domid] = highest
                if domid not in self._above:
                    name, share = highest
                    logger.bind(domid=domid).warning(
                        "domain {} uses {:.0%} of its XenStore {} quota ({}/{}; threshold {:.0%})",
                        domid,
                        share,
                        name,
                        quota.used[name],
                        quota.limit[name],
                        self.threshold,
                    )
        for domid in self._above.keys() - above.keys():
            if domid in found:  # (a domain that went away is not news)
                logger.bind(domid=domid).info(
                    "domain {} is back under {:.0%} of every XenStore quota", domid, self.threshold
                )
        self._above = above
