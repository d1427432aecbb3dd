"""The agent's face of quota telemetry (``rt.quotas``): the status document's part, the
lines ``mtwatch status`` prints and the word ``mtwatch top`` adds to each domain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..runtime.quota import QuotaReport

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = ["add_quota", "quota_labels", "quota_lines", "quota_trouble"]


def _above(report: QuotaReport) -> list[dict[str, Any]]:
    out = []
    for domid, (resource, share) in sorted(report.above.items()):
        quota = report.domains[domid]
        out.append(
            {
                "domid": domid,
                "resource": resource,
                "used": quota.used[resource],
                "limit": quota.limit[resource],
                "share": round(share, 4),
            }
        )
    return out


def add_quota(doc: dict[str, Any], rt: Runtime) -> None:
    """The status document's ``quota`` (state, threshold, the domains above it with use and limit) and each
    domain's ``quota``: its highest share, ``[resource, share]`` (null when unknown)."""
    report = rt.quotas
    doc["quota"] = {
        "state": report.state,
        "why": report.why,
        "threshold": report.threshold,
        "rounds": report.rounds,
        "last_round_seconds": report.last_round_seconds,
        "above": _above(report),
    }
    for d in doc["domains"]:
        quota = report.domains.get(d["domid"])
        highest = quota.highest if quota is not None else None
        d["quota"] = None if highest is None else [highest[0], round(highest[1], 4)]


def quota_trouble(rt: Runtime) -> list[int]:
    """The domains at or above the quota threshold (for the health: degraded)."""
    return sorted(rt.quotas.above)


def quota_lines(doc: Mapping[str, Any]) -> list[str]:
    """What ``mtwatch status`` prints below the table: one line per domain above the threshold, or the state
    when quotas cannot be read."""
    quota = doc.get("quota")
    if not quota:
        return []
    if quota["state"] == "unsupported":
        return [f"quota: xenstored reports none ({quota['why']})"]
    names = {d["domid"]: d.get("name") for d in doc["domains"]}
    lines = []
    for a in quota["above"]:
        name = names.get(a["domid"])
        lines.append(
            f"quota: domain {a['domid']}{f' ({name})' if name else ''} uses {a['share']:.0%} of its"
            f" {a['resource']} quota ({a['used']}/{a['limit']}; threshold {quota['threshold']:.0%})"
        )
    return lines


def quota_labels(doc: Mapping[str, Any]) -> dict[int, str]:
    """``mtwatch top``'s word for each domain: its highest share of a quota (``quota 95% watches``)."""
    return {
        d["domid"]: f"quota {d['quota'][1]:.0%} {d['quota'][0]}" for d in doc["domains"] if d.get("quota")
    }
