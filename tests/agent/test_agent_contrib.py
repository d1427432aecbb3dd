"""The dashboard and the alert rules that ship (``mtwatch contrib grafana|alerts``): the rules pass ``promtool
check rules``, and ``promtool test rules`` with synthetic series fires every alert (and not before its ``for``);
every query of the dashboard names only metrics and labels that a live agent's ``/metrics`` exports (an agent
whose domains flood, block the loop and use their quotas, so that every family has samples)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from test_agent_daemon import REPO, clean_env, metrics_port, poll, run_agent, scrape

import actors
from harness.servers import Embedded

CLI = [sys.executable, "-m", "actors.cli"]
PROMTOOL_CACHE = REPO / ".cache/prometheus/usr/bin/promtool"
# Labels Prometheus itself adds to every scraped series (the agent cannot export them).
SCRAPE_LABELS = {"instance", "job"}


def promtool() -> str:
    found = shutil.which("promtool") or (str(PROMTOOL_CACHE) if PROMTOOL_CACHE.exists() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (./scripts/test runs scripts/install-promtool)")
        pytest.skip("promtool is missing here (scripts/install-promtool unpacks Debian's)")
    return found


def contrib(what: str) -> str:
    result = subprocess.run(
        [*CLI, "contrib", what], capture_output=True, check=True, env=clean_env(), cwd=REPO
    )
    return result.stdout.decode()


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], capture_output=True, check=False, timeout=120)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, out
    return out


def alert_names(rules: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", rules, re.MULTILINE)


# Synthetic series for each alert: (input series, when to evaluate, the alert's labels expected then).
# Series values: "a+bxN" is a, a+b, ... N+1 samples at the interval (1m).
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "MtwatchAgentDown": [
        {"series": 'up{job="mtwatch", instance="dom0:9477"}', "values": "1 1 0 0 0 0"},
    ],
    "MtwatchNotConnected": [
        {"series": 'mtwatch_up{job="mtwatch", instance="dom0:9477"}', "values": "1 0 0 0 0 0"},
    ],
    "MtwatchDomainFailed": [
        {
            "series": 'mtwatch_domain_state{job="mtwatch", instance="dom0:9477", domid="7", state="failed"}',
            "values": "1 1 1 1 1 1",
        },
        {
            "series": 'mtwatch_domain_state{job="mtwatch", instance="dom0:9477", domid="8", state="running"}',
            "values": "1 1 1 1 1 1",
        },
    ],
    "MtwatchDomainThrottled": [
        # domain 7 is throttled anew every minute for 20 minutes; domain 8 once
        {
            "series": 'mtwatch_throttles_total{job="mtwatch", instance="dom0:9477", domid="7"}',
            "values": "0+1x20",
        },
        {
            "series": 'mtwatch_throttles_total{job="mtwatch", instance="dom0:9477", domid="8"}',
            "values": "0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        },
    ],
    "MtwatchQuotaAboveThreshold": [
        {
            "series": 'mtwatch_xenstore_quota_used{job="mtwatch", instance="dom0:9477", domid="5", resource="watches"}',
            "values": "120x10",
        },
        {
            "series": 'mtwatch_xenstore_quota_limit{job="mtwatch", instance="dom0:9477", domid="5", resource="watches"}',
            "values": "128x10",
        },
        {
            "series": 'mtwatch_xenstore_quota_used{job="mtwatch", instance="dom0:9477", domid="6", resource="watches"}',
            "values": "10x10",
        },
        {
            "series": 'mtwatch_xenstore_quota_limit{job="mtwatch", instance="dom0:9477", domid="6", resource="watches"}',
            "values": "128x10",
        },
        {
            "series": 'mtwatch_xenstore_quota_threshold{job="mtwatch", instance="dom0:9477"}',
            "values": "0.9x10",
        },
    ],
    "MtwatchLoopBlocked": [
        {
            "series": 'mtwatch_loop_blocked_seconds_total{job="mtwatch", instance="dom0:9477", domid="4"}',
            "values": "0 0 2 2 2 2",
        },
    ],
    "MtwatchXenstoredStalls": [
        {
            "series": 'mtwatch_xenstore_stalls_total{job="mtwatch", instance="dom0:9477"}',
            "values": "0 0 1 1 1 1",
        },
    ],
}
BASE = {"job": "mtwatch", "instance": "dom0:9477"}
EXPECTED: dict[
    str, list[tuple[str, list[dict[str, str]]]]
] = {  # alert -> [(eval_time, labels of each firing)]
    "MtwatchAgentDown": [("2m", []), ("5m", [{"severity": "critical", **BASE}])],
    "MtwatchNotConnected": [("2m", []), ("4m", [{"severity": "critical", **BASE}])],
    "MtwatchDomainFailed": [
        ("0m", []),
        ("2m", [{"severity": "warning", "domid": "7", "state": "failed", **BASE}]),
    ],
    "MtwatchDomainThrottled": [("8m", []), ("18m", [{"severity": "warning", "domid": "7", **BASE}])],
    "MtwatchQuotaAboveThreshold": [
        ("3m", []),
        ("7m", [{"severity": "warning", "domid": "5", "resource": "watches", **BASE}]),
    ],
    "MtwatchLoopBlocked": [("1m", []), ("3m", [{"severity": "warning", "domid": "4", **BASE}])],
    "MtwatchXenstoredStalls": [("1m", []), ("3m", [{"severity": "warning", **BASE}])],
}
# What each firing says (the templates rendered with the series above).
ANNOTATIONS: dict[str, dict[str, str]] = {
    "MtwatchAgentDown": {
        "summary": "mtwatch agent dom0:9477 is down",
        "description": "Prometheus cannot scrape the mtwatch agent on dom0:9477: no guest's watch events are"
        " handled there.",
    },
    "MtwatchNotConnected": {
        "summary": "mtwatch agent dom0:9477 is not connected to xenstored",
        "description": "The agent retries with backoff; `mtwatch status` says for how long. Is xenstored running?",
    },
    "MtwatchDomainFailed": {
        "summary": "domain 7 failed on dom0:9477",
        "description": "Its handlers failed past the restart policy; its events are dropped. Fix the rule, then"
        " `mtwatch reset 7`.",
    },
    "MtwatchDomainThrottled": {
        "summary": "domain 7 keeps being throttled on dom0:9477",
        "description": "Its guest has flooded its watches for 10 minutes or more (flood control unwatches it"
        " again and again).",
    },
    "MtwatchQuotaAboveThreshold": {
        "summary": "domain 5 uses 93.75% of its XenStore watches quota",
        "description": "Past the quota the guest's XenStore requests fail (E2BIG, ENOSPC, EQUOTA), often reported"
        " as something else. Raise its quota or find what holds its watches.",
    },
    "MtwatchLoopBlocked": {
        "summary": "domain 4's code blocked the agent's event loop on dom0:9477",
        "description": "2 s blocked in 5 minutes: every domain waited meanwhile. The agent's log has the stack;"
        " move blocking code to a plain def handler.",
    },
    "MtwatchXenstoredStalls": {
        "summary": "xenstored stalled on dom0:9477",
        "description": "xenstored left requests unanswered for longer than stall_after; stalls in the last 10"
        " minutes: 1. No guest is charged for them.",
    },
}


def test_the_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "mtwatch-alerts.yml"
    rules.write_text(contrib("alerts"))
    assert f"SUCCESS: {len(alert_names(rules.read_text()))} rules found" in run_promtool(
        "check", "rules", str(rules)
    )


def test_every_alert_fires_on_synthetic_series(tmp_path: Path) -> None:
    rules = tmp_path / "mtwatch-alerts.yml"
    rules.write_text(contrib("alerts"))
    names = alert_names(rules.read_text())
    assert sorted(names) == sorted(SCENARIOS) == sorted(EXPECTED)  # every alert has its test
    tests = []
    for name in names:
        cases = [
            {
                "eval_time": at,
                "alertname": name,
                "exp_alerts": [
                    {"exp_labels": labels, "exp_annotations": ANNOTATIONS[name]} for labels in firing
                ],
            }
            for at, firing in EXPECTED[name]
        ]
        tests.append({"interval": "1m", "input_series": SCENARIOS[name], "alert_rule_test": cases})
    spec = tmp_path / "mtwatch-alerts-test.yml"
    spec.write_text(json.dumps({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}))
    assert "SUCCESS" in run_promtool("test", "rules", str(spec))


# -- the dashboard against a live agent ---------------------------------------------------------------------

HANDLERS = """
import time


async def noop(ctx, event):
    pass


async def block(ctx, event):
    time.sleep(0.8)  # blocks the event loop: the watchdog charges domain 6
"""


def agent_config(workdir: str, socket_path: str) -> str:
    Path(workdir, "contribhandlers.py").write_text(HANDLERS)
    return f"""
[xenstore]
socket = "{socket_path}"

[runtime]
stop_deadline = 3.0
quota_interval = 0.2

[log]
format = "json"

[handlers]
path = ["{workdir}"]

[[watch]]
name = "flood"
path = "/local/domain/{{domid}}/data/flood"
call = "contribhandlers:noop"

[[watch]]
name = "block"
path = "/local/domain/{{domid}}/data/block"
call = "contribhandlers:block"
initial = false
"""


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every target, and the template variables' queries."""
    out = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    out += [(f"${v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if "definition" in v]
    return out


_METRIC = re.compile(r"\b((?:mtwatch|process)_[a-z_]+)\b")
_SELECTOR = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)")


def used_labels(expr: str, legend: str = "") -> set[str]:
    labels = {m for block in _SELECTOR.findall(expr) for m in _MATCHER.findall(block)}
    labels |= {name.strip() for group in _GROUPING.findall(expr) for name in group.split(",") if name.strip()}
    labels |= set(_LABEL_VALUES.findall(expr))
    labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    return labels


@pytest.mark.slow
async def test_every_dashboard_query_names_what_a_live_agent_exports(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    dashboard = json.loads(contrib("grafana"))
    config = Path(workdir) / "agent.toml"
    config.write_text(agent_config(workdir, xenstored.socket_path))
    for domid in (4, 5, 6):
        await xs.mkdir(f"/local/domain/{domid}")
        await xs.set_perms(f"/local/domain/{domid}", [f"n{domid}"])
        await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
    async with run_agent(workdir, "--config", str(config), "--metrics", "127.0.0.1:0") as agent:
        with trio.fail_after(60):
            await agent.wait_log("ready")
            port = metrics_port(agent)
            await poll(
                lambda: agent.find("domain actor starting") and len(agent.find("domain actor starting")) >= 3
            )
            await xs.write("/local/domain/6/data/block", "1")  # the loop blocked, charged to domain 6
            while not agent.find("no longer throttled"):  # domain 4 floods until it is throttled
                pipe = xs.pipeline()
                for i in range(3000):
                    pipe.write(f"/local/domain/4/data/flood/{i % 500}", str(i))  # distinct paths: not merged
                await pipe.send()
            wanted = (
                "mtwatch_throttles_total",
                "mtwatch_loop_blocked_seconds_total",
                "mtwatch_xenstore_quota_used",
            )
            while True:
                samples = await scrape(port)
                if all(samples.get(name) for name in wanted):
                    break
                await trio.sleep(0.2)
    labels_of: dict[str, set[str]] = {}
    for name, series in samples.items():
        for labels in series:
            labels_of.setdefault(name, set()).update(key for key, _ in labels)
    legends = {t["expr"]: t.get("legendFormat", "") for p in dashboard["panels"] for t in p["targets"]}
    problems = []
    for title, expr in queries(dashboard):
        names = set(_METRIC.findall(expr))
        assert names, f"{title}: {expr} names no metric of the agent"
        exported = set()
        for name in names:
            if name not in samples:
                problems.append(f"{title}: {name} is not in the agent's /metrics")
            exported |= labels_of.get(name, set())
        unknown = used_labels(expr, legends.get(expr, "")) - exported - SCRAPE_LABELS
        if unknown:
            problems.append(f"{title}: labels {sorted(unknown)} are on none of {sorted(names)}")
    assert problems == []
