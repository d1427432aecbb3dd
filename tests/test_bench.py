"""scripts/bench.py runs and prints its JSON (a smoke test: it asserts no timing, only shapes and bounds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


async def test_bench_quick_runs_and_prints_json() -> None:
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, str(BENCH), "--quick", "--only", "events", "flood", "actor_memory"],
            capture_stdout=True,
            capture_stderr=True,
        )
    report = json.loads(result.stdout)
    assert report["events"]["handled"] == report["events"]["events_written"]
    assert report["flood"]["events"] == 100_000
    # Bounded memory whatever the number of events: the mailbox never holds more than its capacity plus the
    # distinct paths of the flood (100 here).
    assert report["flood"]["peak_mailbox_depth"] <= report["flood"]["mailbox_capacity"] + 100
    assert report["actor_memory"]["bytes_per_actor"] > 0
