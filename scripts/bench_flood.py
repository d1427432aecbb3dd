"""The ``flood`` scenario of scripts/bench.py: one guest floods its domain while 20 others write every 10 ms.

Public API only: the runtime's ``latency`` observation (reader receiving the frame to the handler starting) for
the calm domains, their guest-write-to-handler time (the value written is the writer's trio clock), the flooded
domain's handler re-reading until it has the last value of every path, ``throttled`` observations, RSS.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import trio
from bench_stream import daemon_process

import actors
from actors.xs.errors import NotFound

FLOODED = 4


@dataclass
class Sizes:
    one_path: int
    many_writes: int
    many_paths: int
    others: int
    calm_seconds: float
    lanes: int = 16


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 3)


def reset_peak_rss() -> None:
    """Reset the process's peak RSS (VmHWM) to its RSS now, where Linux allows it: an earlier scenario of a full
    bench run, in this same process, must not count as the flood's growth."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def rss_mb(field_name: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Probe:
    """What the handlers and the observer saw, by phase."""

    phase: str = "setup"
    latency: dict[str, list[float]] = field(default_factory=dict)
    write_to_handler: dict[str, list[float]] = field(default_factory=dict)
    seen: dict[str, bytes] = field(default_factory=dict)  # the flooded domain's view, by path
    seen_at: dict[str, float] = field(default_factory=dict)  # when the handler first read that value
    throttles: int = 0
    rewatched_at: float | None = None  # the flooded domain's last throttle end
    throttled_since: float | None = None

    def observe(self, kind: str, domid: int, value: float) -> None:
        if kind == "latency" and domid != FLOODED:
            self.latency.setdefault(self.phase, []).append(value)
        elif kind == "throttled" and value == 1:
            self.throttles += 1
            self.throttled_since = trio.current_time()
        elif kind == "throttled":
            self.rewatched_at, self.throttled_since = trio.current_time(), None

    def saw(self, path: str, value: bytes) -> None:
        if self.seen.get(path) != value:
            self.seen[path], self.seen_at[path] = value, trio.current_time()

    async def handler(self, ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        start = trio.current_time()
        base = f"/local/domain/{ctx.domid}/data"
        if ctx.domid != FLOODED:
            with contextlib.suppress(NotFound, ValueError):
                stamp = float(await ctx.xs.read(event.path))
                self.write_to_handler.setdefault(self.phase, []).append(start - stamp)
            return
        if event.path != base:
            with contextlib.suppress(NotFound):
                self.saw(event.path, await ctx.xs.read(event.path))
            return
        # The resync (the watch's own path): re-read every child, 32 reads in flight.
        paths = [f"{base}/{c}" for c in await ctx.xs.ls(base)]

        async def reader(lane: int) -> None:
            for path in paths[lane::32]:
                with contextlib.suppress(NotFound):
                    self.saw(path, await ctx.xs.read(path))

        async with trio.open_nursery() as nursery:
            for lane in range(32):
                nursery.start_soon(reader, lane)


async def calm_writers(path: str, sizes: Sizes, stop: trio.Event) -> None:
    async with actors.connect(path) as xs, trio.open_nursery() as nursery:
        for domid in range(FLOODED + 1, FLOODED + 1 + sizes.others):

            async def write(domid: int = domid) -> None:
                while not stop.is_set():
                    await xs.write(f"/local/domain/{domid}/data/v", repr(trio.current_time()))
                    await trio.sleep(0.01)

            nursery.start_soon(write)


async def flood(
    xs: actors.XenStore, writes: int, paths: int, lanes: int, base: str
) -> tuple[float, dict[str, bytes]]:
    """Writes as fast as the daemon takes them; returns the last value of every path (the end of the flood is
    when the last write was answered: reading them back is not counted)."""
    last: dict[str, bytes] = {}

    async def lane(first: int) -> None:
        for i in range(first, writes, lanes):
            await xs.write(f"{base}/k{i % paths}", str(i))

    async with trio.open_nursery() as nursery:
        for first in range(lanes):
            nursery.start_soon(lane, first)
    end = trio.current_time()
    for i in range(min(writes, paths)):  # the lanes race: the daemon says what was written last
        path = f"{base}/k{i}"
        last[path] = await xs.read(path)
    return end, last


async def phase(
    probe: Probe, xs: actors.XenStore, name: str, writes: int, paths: int, lanes: int, watched: bool = True
) -> dict[str, object]:
    """One flood and what followed; ``watched`` False floods a subtree nobody watches (the floor: the same
    work for the guest and the daemon, no event for the runtime)."""
    probe.phase = name
    probe.seen.clear()
    probe.seen_at.clear()
    throttles = probe.throttles
    start = trio.current_time()
    base = f"/local/domain/{FLOODED}/{'data' if watched else 'unwatched'}"
    end, final = await flood(xs, writes, paths, lanes, base)
    throttled_at_end = probe.throttled_since is not None
    seen_after: float | None = None
    if not watched:
        final = {}
    with trio.move_on_after(10):
        while any(probe.seen.get(p) != v for p, v in final.items()):  # noqa: ASYNC110 (the handler's record)
            await trio.sleep(0.005)
        # When the handler read the last of the final values (not when this loop noticed: reading them back
        # above took a while); the values differ from write to write, so a final one is read only after the end.
        seen_after = max(0.0, max((probe.seen_at[p] for p in final), default=end) - end)
    rewatched = probe.rewatched_at
    await trio.sleep(1.5)  # the throttle's end, then calm again
    return {
        "writes": writes,
        "paths": paths,
        "writes_per_s": round(writes / (end - start), 1),
        "throttles": probe.throttles - throttles,
        "final_value_seen_after_s": None if seen_after is None else round(seen_after, 3),
        "final_value_within_1s": seen_after is not None and seen_after <= 1.0,
        # Where the wait for the final value goes: the cool-down left when the flood ended (its watches came
        # back that long after the end), then the resync (the handler re-reading every path).
        "throttled_at_end": throttled_at_end,
        "rewatched_after_end_s": round(rewatched - end, 3) if throttled_at_end and rewatched else None,
        "others_p99_reader_to_handler_ms": p99(probe.latency.get(name, [])),
        "others_p99_write_to_handler_ms": p99(probe.write_to_handler.get(name, [])),
    }


@contextlib.asynccontextmanager
async def embedded() -> AsyncIterator[str]:
    path = os.path.join(tempfile.mkdtemp(prefix="mtwf", dir="/tmp"), "socket")
    async with daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]):
        yield path


async def run_on(path: str, sizes: Sizes) -> dict[str, object]:
    probe = Probe()
    stop = trio.Event()
    async with actors.connect(path) as xs, actors.open_runtime(xs) as rt:
        rt.observe(probe.observe)
        rt.watch("/local/domain/{domid}/data", probe.handler)
        domids = range(FLOODED, FLOODED + 1 + sizes.others)
        for domid in domids:
            await xs.write(f"/local/domain/{domid}/data", "")
            await actors.announce_domain(xs, domid, identity=f"bench-{domid}")
        for domid in domids:
            with trio.fail_after(30):
                await rt.wait_domain(domid, actors.State.RUNNING)
        async with actors.connect(path) as guest, trio.open_nursery() as nursery:
            nursery.start_soon(calm_writers, path, sizes, stop)
            await trio.sleep(0.5)
            reset_peak_rss()
            rss_before = rss_mb()
            probe.phase = "calm"
            await trio.sleep(sizes.calm_seconds)
            one = await phase(probe, guest, "one_path", sizes.one_path, 1, sizes.lanes)
            many = await phase(probe, guest, "many_paths", sizes.many_writes, sizes.many_paths, sizes.lanes)
            floor = await phase(
                probe, guest, "unwatched", sizes.many_writes, sizes.many_paths, sizes.lanes, watched=False
            )
            rss_growth = max(rss_mb(), rss_mb("VmHWM")) - rss_before
            stop.set()
        calm = p99(probe.latency.get("calm", []))
        result: dict[str, object] = {
            "others": sizes.others,
            "calm_p99_reader_to_handler_ms": calm,
            "calm_p99_write_to_handler_ms": p99(probe.write_to_handler.get("calm", [])),
            "one_path": one,
            "many_paths": many,
            # The same many-path flood to a subtree nobody watches: what the guest's writer (in this process)
            # and the busy daemon cost the others without any flood event reaching the runtime.
            "unwatched_floor": {
                key: floor[key]
                for key in (
                    "writes_per_s",
                    "others_p99_reader_to_handler_ms",
                    "others_p99_write_to_handler_ms",
                )
            },
            "rss_growth_mb": round(rss_growth, 1),
            "target_rss_growth_mb": 20,
            "target_p99_ratio": 1.5,
        }
        floor_p99 = floor["others_p99_reader_to_handler_ms"]
        for figures in (one, many, result["unwatched_floor"]):
            assert isinstance(figures, dict)
            flooded = figures["others_p99_reader_to_handler_ms"]
            if calm and isinstance(flooded, float):
                figures["p99_ratio_to_calm"] = round(flooded / calm, 2)
            if (
                figures is not result["unwatched_floor"]
                and isinstance(floor_p99, float)
                and isinstance(flooded, float)
            ):
                figures["p99_ratio_to_unwatched_floor"] = round(flooded / floor_p99, 2)
        return result


async def bench(quick: bool) -> dict[str, object]:
    if quick:
        sizes = Sizes(one_path=2000, many_writes=1000, many_paths=90, others=5, calm_seconds=0.5)
    else:
        sizes = Sizes(one_path=100_000, many_writes=20_000, many_paths=900, others=20, calm_seconds=3.0)
    result: dict[str, object] = {"one_path_writes": sizes.one_path, "many_paths_writes": sizes.many_writes}
    result.update(await on_both_daemons(lambda path: run_on(path, sizes)))
    return result


async def on_both_daemons(run: Callable[[str], Awaitable[dict[str, object]]]) -> dict[str, object]:
    """``run(socket_path)`` on the embedded xenstored (a process of its own), then on Debian's C xenstored
    (``{"unavailable": why}`` where it cannot run): the figures by daemon."""
    result: dict[str, object] = {}
    async with embedded() as path:
        result["embedded"] = await run(path)
    try:
        from harness.cxenstored import CXenStoredUnavailable, open_cxenstored

        try:
            async with open_cxenstored(tempfile.mkdtemp(prefix="mtwc", dir="/tmp")) as real:
                result["cxenstored"] = await run(real.socket_path)
        except CXenStoredUnavailable as exc:
            result["cxenstored"] = {"unavailable": str(exc)}
    except ImportError as exc:
        result["cxenstored"] = {"unavailable": str(exc)}
    return result
