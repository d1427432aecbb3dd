"""Each domain's XenStore quota use and limits, as the daemons tell them, read for many domains at once.

What each daemon answers (dom0 only; Xen's ``tools/xenstored/control.c`` and ``domain.c``, oxenstored's
``process.ml`` and ``quota.ml``):

- C xenstored 4.17: CONTROL ``quota`` lists the global limits (``nodes     :     1000 Nodes per domain``, one
  line each); CONTROL ``quota <domid>`` a domain's use of nodes, watches, transactions, outstanding requests
  and memory (``nodes           :       12``). A domain the daemon does not know is ENOENT.
- C xenstored 4.22 (and the embedded xenstored): the same commands; a domain's line also carries the highest
  value seen (``nodes            :       12 (max       14)``), and a domain's own limits (SET_QUOTA may change
  them per domain) come from GET_QUOTA ``<domid> <name>``.
- oxenstored: CONTROL ``quota <domid>`` answers ``dom5 quota: 12/1000`` (nodes used and the node limit) or
  ``dom5 quota: not set`` (no node yet): nodes only. Its limits of watches and transactions live in its
  configuration file and its use of them is not on the wire; bare ``quota`` is just ``OK``.

The parsers are plain functions over the reply's text (no I/O); :func:`read_quotas` sends the requests of many
domains in pipelines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from . import builder
from .client import XenStore
from .errors import ErrorReply, NotFound, ProtocolError
from .pipeline import Answer, Pipeline
from .wire import check_domid

__all__ = [
    "RESOURCES",
    "DomainQuota",
    "QuotaSource",
    "parse_domain_use",
    "parse_limits",
    "parse_oxenstored",
    "quota_source",
    "read_quotas",
]

# What a domain uses of its own (its limit is per domain, and counted domain-wide): the resources reported.
# (The daemons' other quotas, node-size, path-max, permissions per node and nodes per transaction, bound
# one request or one node, not a domain's total.)
RESOURCES: Final = ("nodes", "watches", "transactions", "outstanding", "memory")

_LINE: Final = re.compile(r"^\s*([a-z-]+)\s*:\s*(\d+)(?:\s|$)")
_OXENSTORED: Final = re.compile(r"^dom(\d+) quota: (?:(\d+)/(\d+)|not set)$")


@dataclass(frozen=True, slots=True)
class DomainQuota:
    """One domain's use and limit of each resource the daemon reports (the keys of ``used``; ``limit`` may
    lack one the daemon gives no limit for)."""

    domid: int
    used: Mapping[str, int]
    limit: Mapping[str, int] = field(default_factory=dict)

    def share(self, resource: str) -> float | None:
        """Use over limit (0.0-1.0, more when over), or None without a limit."""
        limit = self.limit.get(resource)
        if not limit or resource not in self.used:
            return None
        return self.used[resource] / limit

    @property
    def highest(self) -> tuple[str, float] | None:
        """The resource with the highest share of its limit, and that share (None: no limit known)."""
        shares = [(share, name) for name in self.used if (share := self.share(name)) is not None]
        if not shares:
            return None
        share, name = max(shares)
        return name, share


def _text(reply: bytes) -> str:
    return reply.rstrip(b"\0").decode("ascii", "replace")


def parse_limits(reply: bytes) -> dict[str, int]:
    """CONTROL ``quota`` of C xenstored: ``{name: limit}`` of the resources in :data:`RESOURCES`."""
    text = _text(reply)
    if not text.startswith("Quota settings:"):
        raise ProtocolError(f"CONTROL quota: not a list of quota settings: {text[:80]!r}")
    return {
        m[1]: int(m[2]) for line in text.splitlines()[1:] if (m := _LINE.match(line)) and m[1] in RESOURCES
    }


def parse_domain_use(reply: bytes, domid: int) -> dict[str, int]:
    """CONTROL ``quota <domid>`` of C xenstored (4.17 or 4.22 form): ``{name: used}``."""
    text = _text(reply)
    lines = text.splitlines()
    if not lines or lines[0] != f"Domain {domid}:":
        raise ProtocolError(f"CONTROL quota {domid}: not that domain's quota: {text[:80]!r}")
    return {m[1]: int(m[2]) for line in lines[1:] if (m := _LINE.match(line)) and m[1] in RESOURCES}


def parse_oxenstored(reply: bytes, domid: int) -> tuple[int, int | None]:
    """oxenstored's CONTROL ``quota <domid>``: (nodes used, node limit; None for ``not set``, no node yet)."""
    text = _text(reply)
    match = _OXENSTORED.match(text)
    if match is None or int(match[1]) != domid:
        raise ProtocolError(f"CONTROL quota {domid}: not oxenstored's quota line: {text[:80]!r}")
    if match[2] is None:
        return 0, None
    return int(match[2]), int(match[3])


@dataclass(frozen=True, slots=True)
class QuotaSource:
    """How this daemon is asked: ``kind`` is "cxenstored" (CONTROL quota), "oxenstored" (nodes only) or
    "unsupported" (``why`` says what the daemon answered). ``per_domain_limits``: GET_QUOTA gives each
    domain's own limits (Xen 4.21+). ``limits``: the global ones when the source was probed (each
    :func:`read_quotas` reads them again: CONTROL ``quota set`` changes them)."""

    kind: str
    limits: Mapping[str, int] = field(default_factory=dict)
    per_domain_limits: bool = False
    why: str = ""


async def quota_source(xs: XenStore) -> QuotaSource:
    """Find out how ``xs``'s daemon tells quotas (one or two requests, each answered by every daemon)."""
    caps = await xs.capabilities()
    if caps.daemon == "oxenstored":
        return QuotaSource("oxenstored")
    try:
        reply = await xs.control("quota")
    except ErrorReply as exc:
        return QuotaSource("unsupported", why=f"CONTROL quota answered {exc.errno_name}")
    try:
        limits = parse_limits(reply)
    except ProtocolError as exc:
        return QuotaSource("unsupported", why=str(exc))
    return QuotaSource("cxenstored", limits, per_domain_limits=caps.feature_ops)


def _control(pipe: Pipeline, *args: str) -> Answer[bytes]:
    return pipe.call(builder.control(*args))


def _number(answer: Answer[int]) -> int | None:
    if answer.failed:
        return None
    try:
        return answer.result()
    except ProtocolError:  # not a number
        return None


async def read_quotas(xs: XenStore, source: QuotaSource, domids: Iterable[int]) -> dict[int, DomainQuota]:
    """The quotas of ``domids``, pipelined: the global limits and one CONTROL ``quota <domid>`` each, then on
    Xen 4.21+ one GET_QUOTA a resource for the domain's own limits. Domains the daemon does not know (ENOENT)
    are left out (oxenstored cannot tell them from a domain with no node: ``not set``, nodes 0); any other
    error reply raises it. Raises ConnectionLost, RequestTimeout as a request would."""
    if source.kind == "unsupported":
        return {}
    pipe = xs.pipeline()
    global_limits = _control(pipe, "quota") if source.kind == "cxenstored" else None
    asked = [(domid, _control(pipe, "quota", str(check_domid(domid)))) for domid in domids]
    await pipe.send()
    limits_now = parse_limits(global_limits.result()) if global_limits is not None else {}
    found: dict[int, DomainQuota] = {}
    node_limit: int | None = None
    for domid, use in asked:
        error = use.error
        if isinstance(error, NotFound):
            continue
        if error is not None:
            raise error
        reply = use.result()
        if source.kind == "oxenstored":
            nodes, node_limit_here = parse_oxenstored(reply, domid)
            node_limit = node_limit_here if node_limit_here is not None else node_limit
            limit = {} if node_limit_here is None else {"nodes": node_limit_here}
            found[domid] = DomainQuota(domid, {"nodes": nodes}, limit)
            continue
        found[domid] = DomainQuota(domid, parse_domain_use(reply, domid), limits_now)
    if source.per_domain_limits and found:
        # Asked only of the domains the daemon knows: GET_QUOTA would make a domain of any domid.
        pipe = xs.pipeline()
        own = {
            domid: [(name, pipe.call(builder.get_quota(name, domid))) for name in limits_now]
            for domid in found
        }
        await pipe.send()
        for domid, answers in own.items():
            mine = {name: value for name, answer in answers if (value := _number(answer)) is not None}
            found[domid] = DomainQuota(domid, found[domid].used, {**limits_now, **mine})
    if source.kind == "oxenstored" and node_limit is not None:  # its limit is global: the domains with no
        for domid, quota in found.items():  # node yet ("not set") have it too
            if "nodes" not in quota.limit:
                found[domid] = DomainQuota(domid, quota.used, {"nodes": node_limit})
    return found
