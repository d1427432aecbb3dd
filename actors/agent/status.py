"""What ``mtwatch status``, ``domains`` and ``top`` show: the agent's state as one JSON document (built in the
agent by :func:`describe`, sent over the control socket), its health (also ``mtwatch status``'s exit status: 0
healthy, 1 degraded, 2 not connected or not ready, 3 no agent, 4 the agent did not answer in time), and the
domain table.

The health and the summary come from the runtime's kept counts (``rt.census``): no walk over the domains. The
document's rows are limited (``limit``, :data:`DEFAULT_ROWS` unless asked for all): the domains in trouble first
(failed, throttled, backoff, stopping, starting), then the others by domid; building them, like encoding them,
gives the loop back every few milliseconds (:func:`in_slices`), so that 32,751 rows never hold it.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..runtime.domain.context import DomainSnapshot, State
from ..runtime.slices import in_slices
from . import DEFAULT_ROWS
from .exits import NOT_READY, Exit
from .quotas import add_quota, quota_trouble

_ENCODE_CHUNK = 256  # rows of a status document encoded in one turn of the loop

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = ["DEFAULT_ROWS", "describe", "encode", "format_seconds", "health", "in_slices", "rows"]

HEALTHY, DEGRADED = Exit.OK, Exit.DEGRADED
_TROUBLE = {"failed": 0, "throttled": 1, "backoff": 2, "busy": 3, "stopping": 4, "starting": 5, "running": 6}
BUSY_NOTABLE = 5.0  # seconds in one handler call before the table calls the domain busy


def _ago(since: float | None, now: float) -> float | None:
    return None if since is None else round(max(0.0, now - since), 3)


def _domain(d: DomainSnapshot, now: float) -> dict[str, Any]:
    return {
        "domid": d.domid,
        "state": d.state.value,
        "identity": d.identity.decode(errors="replace"),
        "mailbox": d.mailbox_depth,
        "handled": d.handled,
        "coalesced": d.coalesced,
        "dropped": d.dropped,
        "failures": d.failures,
        "restarts": d.restarts,
        "last_error": d.last_error,
        "name": d.name,
        "busy": _ago(d.busy_since, now),
        "busy_path": d.busy_path,
        "throttled": _ago(d.throttled_since, now),
        "stopping": _ago(d.stopping_since, now),
        "dropped_by_reason": dict(d.dropped_by_reason),
    }


def counts(rt: Runtime) -> str:
    """``3 domains (2 running, 1 starting)``, from the kept counts."""
    by_state = rt.census.counts()
    total = sum(by_state.values())
    parts = ", ".join(f"{by_state[s]} {s.value}" for s in State if by_state[s])
    return f"{total} domain{'' if total == 1 else 's'}" + (f" ({parts})" if parts else "")


def _few(domids: Iterable[int], count: int) -> str:
    return ", ".join(map(str, heapq.nsmallest(10, domids))) + (", ..." if count > 10 else "")


def health(rt: Runtime) -> tuple[Exit, str]:
    """The agent's health code and a one-line reason (from the kept counts: O(the domains in trouble))."""
    if not rt.connected.value:
        since = rt.disconnected_since
        how_long = "" if since is None else f" for {format_seconds(trio.current_time() - since)}"
        return NOT_READY, f"not connected to xenstored (retrying{how_long}); {counts(rt)}"
    if not rt.ready.is_set():
        return NOT_READY, f"connected, reading the registry; {counts(rt)}"
    stalled = rt.connection is not None and rt.connection.stalled.value
    census = rt.census
    trouble = [
        f"{len(ids)} {what} ({_few(ids, len(ids))})"
        for what, ids in (
            ("failed", census.members(State.FAILED)),
            ("throttled", census.throttled),
            ("above a quota", quota_trouble(rt)),
        )
        if ids
    ]
    if stalled:  # requests wait and nothing came back for stall_after seconds (past stall_limit: lost)
        trouble.insert(0, "xenstored stalled")
    if trouble:
        return DEGRADED, f"degraded: {', '.join(trouble)}; {counts(rt)}"
    return HEALTHY, f"healthy: {counts(rt)}"


async def _trouble_first(rt: Runtime, limit: int | None) -> list[int]:
    """The domids a document shows, at most ``limit`` (None: all): those in trouble, the worst first (failed,
    throttled, backoff, stopping, starting) and by domid within each, then the others by domid. Only what is
    shown is sorted: 32,751 domains starting at once are not sorted for a status of 50 rows."""
    census = rt.census
    chosen: list[int] = []
    seen: set[int] = set()
    for ids in (
        census.members(State.FAILED),
        census.throttled,
        census.members(State.BACKOFF),
        census.members(State.STOPPING),
        census.members(State.STARTING),
    ):
        room = None if limit is None else limit - len(chosen)
        if room == 0:
            return chosen
        fresh = [domid for domid in ids if domid not in seen]  # (a throttled domain may be stopping too)
        fresh = sorted(fresh) if room is None or room >= len(fresh) else heapq.nsmallest(room, fresh)
        chosen += fresh
        seen.update(fresh)
    room = None if limit is None else limit - len(chosen)
    if room == 0:
        return chosen
    trouble = census.trouble()
    others = [domid async for domid in in_slices(rt.domains) if domid not in trouble]
    return chosen + (sorted(others) if room is None else heapq.nsmallest(room, others))


async def describe(
    rt: Runtime, *, started_at: float, xenstore: str, limit: int | None = DEFAULT_ROWS
) -> dict[str, Any]:
    """The status document (JSON-ready): the agent, its connection and health, the domains by state, and
    ``limit`` rows (None: every domain), trouble first. Gives the loop back while it builds the rows."""
    now = trio.current_time()
    code, reason = health(rt)
    census = rt.census
    shown = await _trouble_first(rt, limit)
    domains = rt.domains
    table = []
    async for domid in in_slices(shown):
        if domid in domains:  # (gone meanwhile: left out)
            table.append(_domain(domains[domid], now))
    doc: dict[str, Any] = {
        "ok": True,
        "version": __version__,
        "pid": os.getpid(),
        "uptime": round(now - started_at, 3),
        "ready": rt.ready.is_set(),
        "lifecycle": rt.lifecycle_name,
        "connection": {
            "connected": bool(rt.connected.value),
            "disconnected_for": _ago(rt.disconnected_since, now),
            "stalled": bool(rt.connection is not None and rt.connection.stalled.value),
            "xenstored": rt.connection.name if rt.connection is not None else xenstore,
            "reconnects": rt.reconnects,
        },
        "health": {"code": code, "reason": reason},
        "default": {"handled": rt.default_handled, "failures": rt.default_failures},
        "summary": {
            "domains": census.total,
            "states": {state.value: n for state, n in census.counts().items() if n},
            "throttled": len(census.throttled),
            "shown": len(table),
        },
        "domains": table,
        **_workers(rt, now),
    }
    add_quota(doc, rt)
    return doc


def _workers(rt: Runtime, now: float) -> dict[str, Any]:
    """The worker processes of ``isolation = "process"`` rules: the pool, and on each domain that holds a
    worker now, its pid and for how long (``worker``)."""
    pool = rt.workers
    return {
        "workers": {
            "size": pool.size,
            "alive": pool.alive,
            "busy": pool.busy,
            "waiting": pool.waiting,
            "replaced": pool.replaced,
            "held": {
                str(domid): {"pid": w.pid, "busy": _ago(w.since, now)} for domid, w in pool.domains.items()
            },
            "deaths": [
                {"domid": domid, "reason": why, "count": n} for (domid, why), n in sorted(pool.deaths.items())
            ],
        }
    }


async def encode(doc: dict[str, Any]) -> bytes:
    """``doc`` as one line of compact JSON. Its ``domains`` rows are encoded in slices and *consumed* (the list is
    emptied as it is encoded): 32,751 rows take tens of milliseconds to encode, and as long to free, neither
    of which may be done in one go."""
    rows_ = doc.get("domains")
    if not isinstance(rows_, list) or len(rows_) < _ENCODE_CHUNK:
        return json.dumps(doc, separators=(",", ":"), default=str).encode() + b"\n"
    rest = {key: value for key, value in doc.items() if key != "domains"}
    head = json.dumps(rest, separators=(",", ":"), default=str)
    parts: list[bytes] = []
    while rows_:
        chunk = rows_[:_ENCODE_CHUNK]
        del rows_[:_ENCODE_CHUNK]
        parts.append(json.dumps(chunk, separators=(",", ":"), default=str)[1:-1].encode())
        del chunk  # freed now, a chunk at a time
        await trio.lowlevel.checkpoint()
    opening = (head[:-1] + (',"domains":[' if rest else '"domains":[')).encode()
    return opening + b",".join(parts) + b"]}\n"


# -- the table --------------------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    """``0.317 ms``, ``24.8 ms``, ``8.08 s``, ``3m05s``, ``2h07m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1000:.3g} ms"


def condition(d: Mapping[str, Any]) -> str:
    """The word the table shows for a domain: its state, or ``throttled``/``busy`` when that says more."""
    if d["state"] == "running" and d.get("throttled") is not None:
        return "throttled"
    if d["state"] == "running" and (d.get("busy") or 0) >= BUSY_NOTABLE:
        return "busy"
    return str(d["state"])


def trouble_order(d: Mapping[str, Any], rate: float | None = None) -> tuple[int, float, int]:
    """Sort key: trouble first (failed, throttled, backoff, busy, ...), then the most active, then domid."""
    activity = rate if rate is not None else float(d["handled"])
    return (_TROUBLE.get(condition(d), 9), -activity, d["domid"])


def _note(d: Mapping[str, Any], labels: Mapping[int, str], workers: Mapping[str, Any] | None = None) -> str:
    parts = [labels[d["domid"]]] if d["domid"] in labels else []
    worker = (workers or {}).get("held", {}).get(str(d["domid"]))
    if worker is not None:
        parts.append(f"worker pid {worker['pid'] or '?'} for {format_seconds(worker['busy'])}")
    if d.get("busy") is not None:
        parts.append(
            f"busy {format_seconds(d['busy'])}" + (f" on {d['busy_path']}" if d.get("busy_path") else "")
        )
    if d.get("throttled") is not None:
        parts.append(f"throttled {format_seconds(d['throttled'])}")
    if d.get("stopping") is not None:
        parts.append(f"stopping {format_seconds(d['stopping'])}")
    if d.get("last_error") and d["state"] in ("failed", "backoff"):
        parts.append(str(d["last_error"]))
    return "; ".join(parts)


def header(doc: Mapping[str, Any]) -> list[str]:
    """Two lines: the agent and its connection, then the health."""
    conn = doc["connection"]
    link = "connected" if conn["connected"] else "NOT CONNECTED"
    if conn.get("stalled"):
        link += ", STALLED"
    if conn.get("disconnected_for") is not None:
        link += f", reconnecting for {format_seconds(conn['disconnected_for'])}"
    lifecycle = f"lifecycle {doc['lifecycle']}; " if doc.get("lifecycle") else ""
    return [
        f"mtwatch agent {doc['version']} (pid {doc['pid']}), up {format_seconds(doc['uptime'])};"
        f" xenstored {conn['xenstored']}: {link}, {conn['reconnects']} reconnects; {lifecycle}"
        f"{'ready' if doc['ready'] else 'NOT READY'}",
        f"health: {doc['health']['reason']}",
    ]


COLUMNS = f"{'DOMID':>6} {'NAME':<14} {'STATE':<9} {'MBOX':>5} {'EVENTS':>9} {'DROP':>6} {'FAIL':>5} {'RST':>4}  NOTE"


SORTS: dict[str, Callable[[Mapping[str, Any], float | None], tuple[Any, ...]]] = {
    "trouble": lambda d, rate: trouble_order(d, rate),
    "domid": lambda d, rate: (d["domid"],),
    "events": lambda d, rate: (-(rate if rate is not None else d["handled"]), d["domid"]),
    "name": lambda d, rate: (d.get("name") or "~", d["domid"]),
}


def rows(
    doc: Mapping[str, Any],
    rates: Mapping[int, float | None] | None = None,
    labels: Mapping[int, str] | None = None,
    sort: str = "trouble",
) -> list[tuple[int, str]]:
    """``(domid, line)`` for every domain, in ``sort`` order (trouble first by default); ``rates`` (events per
    second) replace the totals in the EVENTS column; ``labels`` add a word to a domain's note."""
    out = []
    key = SORTS[sort]
    for d in sorted(doc["domains"], key=lambda d: key(d, (rates or {}).get(d["domid"]))):
        if rates is not None:
            rate = rates.get(d["domid"])
            events = "-" if rate is None else f"{rate:.1f}/s"
        else:
            events = str(d["handled"])
        name = (d.get("name") or "-")[:14]
        line = (
            f"{d['domid']:>6} {name:<14} {condition(d):<9} {d['mailbox']:>5} {events:>9} {d['dropped']:>6}"
            f" {d['failures']:>5} {d['restarts']:>4}  {_note(d, labels or {}, doc.get('workers'))}"
        )
        out.append((d["domid"], line.rstrip()))
    return out


def totals(doc: Mapping[str, Any]) -> str:
    """One line: the domains by state (all of them, from the summary), how many rows are shown, and the
    default actor."""
    summary = doc.get("summary")
    rows_ = doc["domains"]
    if summary is None:  # a document without a summary: count its rows
        states = Counter(condition(d) for d in rows_)
        total = len(rows_)
    else:
        states = Counter(summary["states"])
        if summary.get("throttled"):
            states["throttled"] = summary["throttled"]
            states["running"] -= summary["throttled"]  # a throttled domain runs
            states += Counter()  # (drops a zero)
        total = summary["domains"]
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(states.items(), key=lambda i: _TROUBLE.get(i[0], 9)))
    shown = "" if len(rows_) >= total else f"; {len(rows_)} shown (trouble first)"
    default = doc["default"]
    line = (
        f"{total} domains ({by_state or 'none'}){shown}; default actor: {default['handled']} events,"
        f" {default['failures']} failures"
    )
    return line + _pool_words(doc.get("workers"))


def _pool_words(pool: Mapping[str, Any] | None) -> str:
    """``; workers: 2 alive of 2, 1 busy, 0 waiting, 3 replaced`` once a process handler ran (else nothing)."""
    if not pool or not (pool["alive"] or pool["replaced"] or pool["busy"]):
        return ""
    return (
        f"; workers: {pool['alive']} alive of {pool['size']}, {pool['busy']} busy, {pool['waiting']} waiting,"
        f" {pool['replaced']} replaced"
    )


def rates_between(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], elapsed: float
) -> dict[int, float | None]:
    """Events handled per second for each domain of ``after`` (None: unknown, a new or restarted count)."""
    old = {d["domid"]: d["handled"] for d in before["domains"]} if before is not None else {}
    out: dict[int, float | None] = {}
    for d in after["domains"]:
        prev = old.get(d["domid"])
        ok = prev is not None and elapsed > 0 and d["handled"] >= prev
        out[d["domid"]] = (d["handled"] - prev) / elapsed if ok and prev is not None else None
    return out
