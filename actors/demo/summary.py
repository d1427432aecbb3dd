"""The demo's numbers (see :mod:`actors.demo`): the handlers' latency records, the agent's last status,
and the summary built from them, as JSON or as text."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable
from typing import Any

from ..agent.status import format_seconds
from .play import Show

__all__ = ["percentile", "read_records", "render_summary", "summarize"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1) of ``values``; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def read_records(path: str) -> dict[int, list[tuple[float, float]]]:
    """The ping handlers' ``domid end_to_end agent`` lines, by domid."""
    out: dict[int, list[tuple[float, float]]] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    try:
                        out.setdefault(int(parts[0]), []).append((float(parts[1]), float(parts[2])))
                    except ValueError:
                        continue  # a line cut short by the agent's shutdown
    except FileNotFoundError:
        pass
    return out


def _latency(samples: list[tuple[float, float]]) -> dict[str, Any]:
    e2e = [s[0] for s in samples]
    agent = [s[1] for s in samples]

    return {
        "samples": len(samples),
        "p50_ms": _ms(percentile(e2e, 0.5)),
        "p99_ms": _ms(percentile(e2e, 0.99)),
        "max_ms": _ms(max(e2e, default=None)),
        "agent_p50_ms": _ms(percentile(agent, 0.5)),
        "agent_p99_ms": _ms(percentile(agent, 0.99)),
    }


def _dom(doc: dict[str, Any], domid: int) -> dict[str, Any]:
    for d in doc["domains"]:
        if d["domid"] == domid:
            keys = ("state", "mailbox", "handled", "coalesced", "dropped", "failures", "restarts")
            names = ("state", "mailbox_depth", "events", "coalesced", "dropped", "failures", "restarts")
            return {"domid": domid, **{name: d[key] for key, name in zip(keys, names, strict=True)}}
    return {"domid": domid, "state": "gone"}


def summarize(
    show: Show, final: dict[str, Any], records: dict[int, list[tuple[float, float]]], seconds: float
) -> dict[str, Any]:
    """The demo's numbers, from what the toolstack and guests did, the agent's last status and the handlers'
    latency records."""
    cast = show.cast
    now = time.monotonic()
    healthy_ids = [*cast.healthy, *cast.churn]
    healthy = [s for domid in healthy_ids for s in records.get(domid, [])]
    hung, crashing, flooding = _dom(final, cast.hung), _dom(final, cast.crashing), _dom(final, cast.flooding)
    hung["pings_written"] = show.pings[cast.hung]
    hung["handler_waiting_s"] = None if show.hang_at is None else round(now - show.hang_at, 3)
    crashing["crashing_for_s"] = None if show.crash_at is None else round(now - show.crash_at, 3)
    native = _dom(final, cast.native)
    native["writes"] = show.native_writes
    pool = final.get("workers") or {}
    native["worker_deaths"] = {
        death["reason"]: death["count"] for death in pool.get("deaths", []) if death["domid"] == cast.native
    }
    native["workers_replaced"] = pool.get("replaced", 0)
    flooding["writes"] = show.flood_writes
    flooding["own_pings"] = _latency(records.get(cast.flooding, []))
    domains = [_dom(final, d["domid"]) for d in sorted(final["domains"], key=lambda d: d["domid"])]
    latency = final.get("latency") or {}
    return {
        "seconds": seconds,
        "churn": {"announced": show.announced, "retired": show.retired, "live_at_end": len(show.live)},
        "healthy": {
            "domids": sorted({d for d in healthy_ids if d in records}),
            "pings_written": sum(show.pings[d] for d in healthy_ids),
            **_latency(healthy),
        },
        "hung": hung,
        "crashing": crashing,
        "flood": flooding,
        "native": native,
        "agent": {
            "totals": {
                "domains": len(domains),
                "states": dict(collections.Counter(d["state"] for d in domains)),
                **{
                    k: sum(d[k] for d in domains)
                    for k in ("mailbox_depth", "events", "coalesced", "failures")
                },
                "restarts": sum(d["restarts"] for d in domains),
                "reconnects": final["connection"]["reconnects"],
            },
            "latency_histogram_p50_ms": _ms(latency.get("p50")),
            "latency_histogram_p99_ms": _ms(latency.get("p99")),
        },
        "domains": domains,
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def _fmt_ms(v: float | None) -> str:
    return format_seconds(None if v is None else v / 1000)


def render_summary(summary: dict[str, Any]) -> list[str]:
    h, hung, crash, flood = summary["healthy"], summary["hung"], summary["crashing"], summary["flood"]
    native = summary["native"]
    deaths = ", ".join(f"{n} {why}" for why, n in sorted(native["worker_deaths"].items())) or "none yet"
    churn, agent = summary["churn"], summary["agent"]
    wait = hung.get("handler_waiting_s")
    own = flood["own_pings"]
    lines = [
        f"mtwatch demo: {summary['seconds']:g} s; the toolstack announced {churn['announced']} domains and retired"
        f" {churn['retired']} (churn)",
        "",
        f"healthy domains {', '.join(map(str, h['domids']))}: {h['samples']} pings handled;"
        f" guest write -> handler p50 {_fmt_ms(h['p50_ms'])}, p99 {_fmt_ms(h['p99_ms'])}"
        f" (max {_fmt_ms(h['max_ms'])}; in the agent p50 {_fmt_ms(h['agent_p50_ms'])},"
        f" p99 {_fmt_ms(h['agent_p99_ms'])})",
        f"hung domain {hung['domid']}: its handler has waited {wait if wait is not None else '-'} s and still"
        f" waits; state {hung.get('state')}, mailbox depth {hung.get('mailbox_depth')},"
        f" {hung.get('coalesced')} events coalesced, {hung.get('events')} handled",
        f"crashing domain {crash['domid']}: state {crash.get('state')} after {crash.get('failures')} failures"
        f" and {crash.get('restarts')} restarts",
        f"flooding domain {flood['domid']}: {flood['writes']} writes; {flood.get('events')} events handled by"
        f" its slow handler, {flood.get('coalesced')} coalesced, mailbox depth {flood.get('mailbox_depth')};"
        f" its own pings p50 {_fmt_ms(own['p50_ms'])}, p99 {_fmt_ms(own['p99_ms'])}",
        f'native-code domain {native["domid"]} (isolation = "process"): worker deaths {deaths}; state'
        f" {native.get('state')} after {native.get('failures')} failures and {native.get('restarts')} restarts;"
        f" the agent's own process never paid",
        f"all domains together (the agent's latency histogram, reader -> handler): p50"
        f" {_fmt_ms(agent['latency_histogram_p50_ms'])}, p99 {_fmt_ms(agent['latency_histogram_p99_ms'])}",
        "",
    ]
    if h["p99_ms"] is not None and wait:
        lines.append(
            f"isolation: healthy p99 {_fmt_ms(h['p99_ms'])} while one handler hangs ({wait:.1f} s), one crashes,"
            f" one floods and one segfaults and spins in its worker process: each costs only its own domain."
        )
    return lines
