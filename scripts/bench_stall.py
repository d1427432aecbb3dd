"""The ``stall`` scenario of scripts/bench.py (issue 19's first case): does a stopped daemon cost the guests?

A runtime whose handlers read one node with ``timeout=1.0`` (shorter than ``stall_after``, 2 s), 20 domains
written every 10 ms, the daemon (the embedded xenstored in a process of its own, and Debian's C xenstored)
stopped with SIGSTOP for 5 s, then twelve times for 2 s (1 s apart). Counted: the domains charged (a failure
counted against them) after the 5 s stop, the domains ``failed`` after the twelve stops, how many handlers
the stops cut short (interrupted), the stalls the connection declared, and whether every domain handled its
last value afterwards. Target: no domain charged, none failed, every last value handled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio
from bench_flood import Sizes, calm_writers
from bench_stream import daemon_process

import actors
from actors.xs.errors import NotFound

FIRST = 5


@dataclass
class Stops:
    domains: int
    long_stop: float
    short_stop: float
    short_stops: int
    gap: float
    handler_timeout: float = 1.0


class Reader:
    def __init__(self) -> None:
        self.last: dict[int, bytes] = {}
        self.cut_short = 0

    async def __call__(self, ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        try:
            with contextlib.suppress(NotFound):
                self.last[ctx.domid] = await ctx.xs.read(f"/local/domain/{ctx.domid}/data/v")
        except trio.Cancelled:
            self.cut_short += 1
            raise


def charged(rt: actors.Runtime) -> dict[str, int]:
    domains = rt.domains.values()
    return {
        "domains_charged": sum(1 for d in domains if d.failures),
        "failures": sum(d.failures for d in domains),
        "domains_failed": sum(1 for d in domains if d.state is actors.State.FAILED),
    }


async def run_on(path: str, pid: int, stops: Stops) -> dict[str, object]:
    reader = Reader()
    stop_writers = trio.Event()
    domids = range(FIRST, FIRST + stops.domains)
    result: dict[str, object] = {"handler_timeout": stops.handler_timeout}
    async with actors.connect(path) as xs, actors.open_runtime(xs) as rt:
        rt.watch("/local/domain/{domid}/data", reader, timeout=stops.handler_timeout)
        result["stall_after"] = xs.stall_after
        for domid in domids:
            await xs.write(f"/local/domain/{domid}/data", "")
            await actors.announce_domain(xs, domid, identity=f"bench-{domid}")
        for domid in domids:
            with trio.fail_after(30):
                await rt.wait_domain(domid, actors.State.RUNNING)

        async def stopped(seconds: float) -> None:
            os.kill(pid, signal.SIGSTOP)
            try:
                await trio.sleep(seconds)
            finally:
                os.kill(pid, signal.SIGCONT)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(calm_writers, path, Sizes(0, 0, 0, stops.domains, 0.0), stop_writers)
            await trio.sleep(1.0)
            await stopped(stops.long_stop)
            await trio.sleep(stops.gap)
            result["after_one_stop"] = {
                "seconds": stops.long_stop,
                **charged(rt),
                "cut_short": reader.cut_short,
            }
            for _ in range(stops.short_stops):
                await stopped(stops.short_stop)
                await trio.sleep(stops.gap)
            stop_writers.set()
        for domid in domids:
            await xs.write(f"/local/domain/{domid}/data/v", "final")
        with trio.move_on_after(5):
            while any(reader.last.get(d) != b"final" for d in domids):  # noqa: ASYNC110 (the handlers' record)
                await trio.sleep(0.01)
        result["after_all_stops"] = {
            "stops": 1 + stops.short_stops,
            "short_stop_seconds": stops.short_stop,
            **charged(rt),
            "cut_short": reader.cut_short,
            "stalls_declared": xs.stalls,
            "last_value_handled": sum(1 for d in domids if reader.last.get(d) == b"final"),
            "domains": stops.domains,
        }
    return result


@contextlib.asynccontextmanager
async def embedded() -> AsyncIterator[tuple[str, int]]:
    path = os.path.join(tempfile.mkdtemp(prefix="mtws", dir="/tmp"), "socket")
    async with daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]) as proc:
        yield path, proc.pid


async def bench(quick: bool) -> dict[str, object]:
    if quick:
        stops = Stops(domains=5, long_stop=1.5, short_stop=1.2, short_stops=2, gap=0.5)
    else:
        stops = Stops(domains=20, long_stop=5.0, short_stop=2.0, short_stops=12, gap=1.0)
    result: dict[str, object] = {}
    async with embedded() as (path, pid):
        result["embedded"] = await run_on(path, pid, stops)
    try:
        from harness.cxenstored import CXenStoredUnavailable, open_cxenstored

        try:
            async with open_cxenstored(tempfile.mkdtemp(prefix="mtwc", dir="/tmp")) as real:
                result["cxenstored"] = await run_on(real.socket_path, real.pid, stops)
        except CXenStoredUnavailable as exc:
            result["cxenstored"] = {"unavailable": str(exc)}
    except ImportError as exc:
        result["cxenstored"] = {"unavailable": str(exc)}
    return result
