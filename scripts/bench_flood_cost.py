"""The ``flood-cost`` scenario of scripts/bench.py: what an event for a busy or a throttled domain costs the
connection's reader, in CPU-seconds of this process per event, beside a no-op handler in the same run.

Public API only. The streaming daemon (scripts/stream_xenstored.py) sends ``count`` watch events for one
domain, each to a distinct path, as fast as the socket takes them; the runtime consumes them three ways:

- ``noop``: a no-op handler, mailbox large enough to keep every event, flood control off (the baseline: the
  whole event path, handler included, until the last event is handled);
- ``busy``: the handler blocked from the stream's first event to its end, the runtime's default options: the
  first events wait in the mailbox, then flood control throttles the domain and the rest are dropped;
- ``busy_unthrottled``: the same with flood control off: every event is posted to the mailbox, which keeps the
  latest per path and folds them into re-read hints past its bound (the mailbox's own cost per event);
- ``throttled``: flood control throttles the domain within its first events and its cool-down outlasts the
  stream: the rest are dropped (by the runtime, or by the client once the sink is unregistered).

The stream's end is a request sent after it: the daemon answers it only after writing every event, so its
reply means the reader has taken them all. The target (at most 2 us per event) is for ``busy`` and
``throttled``, the runtime as it ships.
"""

from __future__ import annotations

import time

import trio
from bench_stream import GO, PREPARE, stream_daemon

import actors

ROOT = "/local/domain/0/mtwatch"
DOMID = 1
TARGET_US = 2.0
_OFF: dict[str, object] = {"flood_rate": None, "flood_high_water": None}
_MODES: dict[str, dict[str, object]] = {
    "noop": _OFF,
    "busy": {},
    "busy_unthrottled": _OFF,
    "throttled": {"flood_rate": 100.0, "flood_cooldown": 60.0, "flood_cooldown_max": 60.0},
}


async def consume(path: str, count: int, mode: str) -> dict[str, object]:
    release = trio.Event()
    started = trio.Event()
    done = trio.Event()
    handled = 0

    async def handler(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        nonlocal handled
        if event.initial:
            started.set()
            return
        handled += 1
        if handled == count:
            done.set()
        if mode.startswith("busy"):
            await release.wait()  # busy until the stream has passed

    mailbox = count + 2 if mode == "noop" else 64
    options = actors.RuntimeOptions(lifecycle="mtwatch", mailbox_size=mailbox).replace(**_MODES[mode])
    async with actors.connect(path) as xs, actors.open_runtime(xs, options=options) as rt:
        rt.watch("/local/domain/{domid}/data", handler)
        with trio.fail_after(30):
            await started.wait()
        await xs.write(PREPARE, str(count))
        unknown0 = xs.unknown_events
        start, cpu0 = time.perf_counter(), time.process_time()
        await xs.write(GO, "")
        with trio.fail_after(300):
            await xs.read(ROOT)  # answered after the whole stream
            if mode == "noop":
                await done.wait()
        cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - start
        snapshot = rt.domains[DOMID]
        release.set()
    return {
        "events": count,
        "seconds": round(elapsed, 4),
        "cpu_s": round(cpu, 4),
        "us_per_event": round(1e6 * cpu / count, 3),
        "handled": handled,
        "coalesced": snapshot.coalesced,
        "dropped_by_runtime": snapshot.dropped,
        "dropped_by_client": xs.unknown_events - unknown0,
        "throttled": snapshot.throttled_since is not None,
    }


async def flood_cost(count: int) -> dict[str, object]:
    """Each mode on its own connection to one streaming daemon (one domain), one after the other."""
    result: dict[str, object] = {"events": count, "target_us_per_event": TARGET_US}
    async with stream_daemon(1) as (path, _):
        for mode in _MODES:
            result[mode] = await consume(path, count, mode)
    for mode in ("busy", "busy_unthrottled", "throttled"):
        figures = result[mode]
        assert isinstance(figures, dict)
        figures["within_target"] = figures["us_per_event"] <= TARGET_US
    return result
