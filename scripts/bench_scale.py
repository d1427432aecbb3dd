"""The ``scale`` scenario of scripts/bench.py: start-up, memory and leaving with many domains, beside a floor
of bare trio tasks. Every measured side runs in a fresh process of its own (this file, run as
``python scripts/bench_scale.py floor|runtime ...``), so neither inherits the other's freed memory.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

# The package faces are lazy: the runtime's modules are loaded here, not inside the first measured start, where
# their import would count as the actors' time and memory.
import actors
import actors.runtime.runtime
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from actors.xs.wire import Op, join

HERE = Path(__file__).resolve()
PAGE = os.sysconf("SC_PAGE_SIZE")
_BATCH = 512  # requests in flight while populating the store


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def heap() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


async def populate(path: str, count: int, lifecycle: str) -> None:
    """Announce domains 1..count: mtwatch nodes (made by dom0, so owned by it), or, for a stock host,
    introduced domains with a ``vm`` node."""
    async with actors.connect(path) as xs:

        async def one(domid: int) -> None:
            if lifecycle == "mtwatch":
                await xs.write(f"{MTWATCH_ROOT}/{domid}", f"uuid-{domid}")
            else:
                await xs.introduce(domid, 0, 1)
                await xs.write(f"/local/domain/{domid}/vm", f"/vm/uuid-{domid}")

        for first in range(1, count + 1, _BATCH):
            async with trio.open_nursery() as nursery:
                for domid in range(first, min(first + _BATCH, count + 1)):
                    nursery.start_soon(one, domid)


# -- the two measured sides, each in its own process --------------------------------------------------------


async def floor(count: int, with_nursery: bool = True) -> dict[str, float]:
    """``count`` bare tasks, each owning a nursery (unless ``with_nursery`` is False: the bench-only variant that
    prices a nursery) and a memory channel and waiting on it."""
    running = 0
    all_running = trio.Event()

    async def wait() -> None:
        nonlocal running
        _send, receive = trio.open_memory_channel[object](64)
        running += 1
        if running == count:
            all_running.set()
        await receive.receive()

    async def task() -> None:
        if with_nursery:
            async with trio.open_nursery():
                await wait()
        else:
            await wait()

    rss0, heap0, start, cpu0 = rss(), heap(), time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(task)
        await all_running.wait()
        up, cpu = time.perf_counter() - start, time.process_time() - cpu0
        rss1, heap1 = rss(), heap()
        leave = time.perf_counter()
        nursery.cancel_scope.cancel()
    return measures(count, up, cpu, rss1 - rss0, heap1 - heap0, time.perf_counter() - leave)


async def runtime(path: str, count: int, lifecycle: str, watchdog: bool = True) -> dict[str, float]:
    """The runtime on an already populated store, as the agent runs it (its own connection, connect=); every
    domain's actor with one watch; without the watchdog thread if ``watchdog`` is False."""

    async def noop(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        pass

    rss0, heap0, start, cpu0 = rss(), heap(), time.perf_counter(), time.process_time()
    connect = functools.partial(actors.connect, path)
    threshold = actors.RuntimeOptions().block_threshold if watchdog else None
    async with actors.open_runtime(
        connect=connect,
        lifecycle=lifecycle,
        block_threshold=threshold,
    ) as rt:
        rt.watch("/local/domain/{domid}/data", noop)
        for domid in range(1, count + 1):
            await rt.wait_domain(domid, actors.State.RUNNING)
        up, cpu = time.perf_counter() - start, time.process_time() - cpu0
        rss1, heap1 = rss(), heap()
        leave = time.perf_counter()
    return measures(count, up, cpu, rss1 - rss0, heap1 - heap0, time.perf_counter() - leave)


class Ticker:
    """A 1 ms ticker beside the measured code, in its process: how late each tick woke (wall clock: the loop held
    by something else, or the process not scheduled on a loaded machine) and how much CPU the loop's thread
    used between two ticks (the loop held by this process's own work, whatever the machine's load), by when the
    tick began (``time.monotonic``, comparable across processes)."""

    def __init__(self) -> None:
        self.samples: list[
            tuple[float, float, float]
        ] = []  # (began, late, loop CPU), when either is > 0.5 ms
        self.paused = False

    async def run(self) -> None:
        clock, cpu = time.monotonic, time.thread_time
        while True:
            if self.paused:
                await trio.sleep(0.1)
                continue
            began, used = clock(), cpu()
            await trio.sleep(0.001)
            late, held = clock() - began - 0.001, cpu() - used
            if late > 0.0005 or held > 0.0005:
                self.samples.append((began, late, held))

    def worst(self, start: float, end: float) -> dict[str, float]:
        """The most late a tick that began within [start, end] was, and the most CPU the loop used between two
        ticks, in milliseconds."""
        within = [(late, held) for began, late, held in self.samples if start <= began <= end]
        return {
            "loop_late_max_ms": round(1000 * max((late for late, _ in within), default=0.0), 1),
            "loop_held_max_ms": round(1000 * max((held for _, held in within), default=0.0), 1),
        }


class Collections:
    """Every garbage collection in this process (``gc.callbacks``): when it began, how long it took, its
    generation."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, int]] = []
        self._began = 0.0

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.monotonic()
        else:
            self.seen.append((self._began, time.monotonic() - self._began, info["generation"]))

    def within(self, start: float, end: float) -> dict[str, float]:
        """Seconds spent collecting, and the longest full (generation 2) collection, within [start, end]."""
        inside = [(took, gen) for began, took, gen in self.seen if start <= began <= end]
        return {
            "gc_seconds": round(sum(took for took, _ in inside), 3),
            "gc_full_max_ms": round(1000 * max((took for took, gen in inside if gen == 2), default=0.0), 1),
        }


class Phases:
    """A 1 ms ticker and the collector's work, summed up per phase of a run."""

    def __init__(self) -> None:
        self.ticker = Ticker()
        self.collections = Collections()
        self.figures: dict[str, dict[str, float]] = {}
        self._cpu = 0.0

    def begin(self) -> float:
        """A phase begins now: its start (``time.monotonic``)."""
        self._cpu = time.process_time()
        return time.monotonic()

    def done(self, name: str, start: float) -> None:
        """Phase ``name`` ran from ``start`` (what :meth:`begin` gave) until now."""
        end = time.monotonic()
        self.figures[name] = {
            "seconds": round(end - start, 3),
            "cpu_seconds": round(time.process_time() - self._cpu, 3),
            **self.ticker.worst(start, end),
            **self.collections.within(start, end),
        }


async def lateness(path: str, count: int, churn: int, freeze: bool = True) -> dict[str, object]:
    """Issue 19's loop test: the runtime on a connection the caller keeps (the README's way), every domain with
    one watch, a 1 ms ticker beside it; per phase, how late the ticker is, how much CPU the loop used between
    two ticks, and the collector's share: start, a full snapshot as status/metrics/top take it, reading one
    domain, ``churn`` domains retired and announced again, leaving. ``freeze`` False: without the runtime's
    ``gc.freeze`` (``gc_freeze_at=None``), to measure what it changes."""
    import actors.runtime.runtime  # (before the clock starts: a program imports once)
    from actors.agent import status
    from actors.agent.metrics import Metrics

    describe: Any = status.describe
    encode: Any = getattr(status, "encode", None)

    async def noop(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        pass

    phases = Phases()
    options = {} if freeze else {"gc_freeze_at": None}
    with phases.collections:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(phases.ticker.run)
            async with actors.connect(path) as xs, actors.connect(path) as toolstack:
                start = phases.begin()
                async with actors.open_runtime(xs, **options) as rt:
                    rt.watch("/local/domain/{domid}/data", noop)
                    for domid in range(1, count + 1):
                        await rt.wait_domain(domid, actors.State.RUNNING)
                    phases.done("start", start)
                    await trio.sleep(0.2)
                    start = phases.begin()
                    if encode is None:  # the agent before issue 22 (a "before" run on old code)
                        json.dumps(describe(rt, started_at=0.0, xenstore=path), default=str)
                        body = Metrics(rt).render()
                    else:
                        await encode(await describe(rt, started_at=0.0, xenstore=path, limit=None))
                        body = await Metrics(rt).scrape()
                    phases.done("snapshot", start)
                    phases.figures["snapshot"]["metrics_bytes"] = len(body)
                    one = time.perf_counter()
                    for _ in range(100):
                        rt.domains[count // 2]
                    phases.figures["read_one_domain_us"] = {
                        "mean": round((time.perf_counter() - one) * 1e4, 2)
                    }
                    await trio.sleep(0.2)
                    start = phases.begin()
                    await retire_and_announce(toolstack, rt, range(1, min(churn, count) + 1))
                    phases.done("churn", start)
                    await trio.sleep(0.2)
                    start = phases.begin()
                phases.done("leave", start)
            nursery.cancel_scope.cancel()
    gc_freeze_at = actors.RuntimeOptions().gc_freeze_at if freeze else None
    return {"domains": count, "churn": min(churn, count), "gc_freeze_at": gc_freeze_at, **phases.figures}


async def retire_and_announce(toolstack: actors.XenStore, rt: actors.Runtime, domids: range) -> None:
    """The toolstack retires ``domids`` (pipelined), then announces them again; returns once all run again."""
    pipe = toolstack.pipeline()
    for domid in domids:
        node = f"{MTWATCH_ROOT}/{domid}"
        pipe.request(Op.RM, join(node), node)
    await pipe.send()
    for domid in domids:
        await rt.wait_domain(domid, None)
    pipe = toolstack.pipeline()
    for domid in domids:
        pipe.write(f"{MTWATCH_ROOT}/{domid}", f"uuid-{domid}")
    await pipe.send()
    for domid in domids:
        await rt.wait_domain(domid, actors.State.RUNNING)


def measures(
    count: int, up: float, cpu: float, rss_grown: int, heap_grown: int, leave: float
) -> dict[str, float]:
    return {
        "seconds_until_all_run": round(up, 3),
        "cpu_seconds_until_all_run": round(cpu, 3),
        "rss_bytes_per_actor": round(rss_grown / count),
        "heap_bytes_per_actor": round(heap_grown / count),
        "seconds_to_leave": round(leave, 3),
    }


async def measure(argv: list[str], quick: bool) -> dict[str, object]:
    """Run one side in a fresh process twice: timed (and RSS), then under tracemalloc (the Python heap); quick,
    once under tracemalloc (its times are then inflated)."""
    if quick:
        return dict(json.loads(await child([*argv, "--tracemalloc"])))
    timed = json.loads(await child(argv))
    traced = json.loads(await child([*argv, "--tracemalloc"]))
    timed["heap_bytes_per_actor"] = traced["heap_bytes_per_actor"]
    return dict(timed)


async def child(argv: list[str]) -> str:
    with trio.fail_after(900):
        done = await trio.run_process(
            [sys.executable, str(HERE), *argv], capture_stdout=True, capture_stderr=True
        )
    return done.stdout.decode()


def ratios(side: dict[str, object], base: dict[str, object]) -> dict[str, float]:
    def ratio(key: str) -> float:
        value, floor_value = side[key], base[key]
        assert isinstance(value, int | float) and isinstance(floor_value, int | float)
        return round(value / floor_value, 3) if floor_value else float("inf")

    return {
        "start_vs_floor": ratio("seconds_until_all_run"),
        "start_cpu_vs_floor": ratio("cpu_seconds_until_all_run"),
        "rss_vs_floor": ratio("rss_bytes_per_actor"),
        "heap_vs_floor": ratio("heap_bytes_per_actor"),
    }


async def scale(count: int, quick: bool = False) -> dict[str, object]:
    """The floor once, then the runtime on each lifecycle, against the embedded xenstored in its process."""
    from bench_stream import daemon_process

    result: dict[str, object] = {
        "domains": count,
        "floor": (base := await measure(["floor", str(count)], quick)),
    }
    for key, lifecycle in (("mtwatch_tree", "mtwatch"), ("stock_host", "domains")):
        path = os.path.join(tempfile.mkdtemp(prefix="mtwl", dir="/tmp"), "socket")
        argv = [sys.executable, "-m", "actors.xenstored", "--socket", path]
        async with daemon_process(argv):
            start = time.perf_counter()
            await populate(path, count, lifecycle)
            populated = time.perf_counter() - start
            side = await measure(["runtime", str(count), path, lifecycle], quick)
        side["ratios"] = ratios(side, base)
        side["populate_seconds"] = round(populated, 3)
        result[key] = side
    result["targets"] = {"start_vs_floor": "<= 3", "rss_vs_floor": "<= 1.3", "seconds_to_leave": "<= 2"}
    return result


async def loop_lateness(sizes: list[int], churn: int) -> dict[str, object]:
    """The ``lateness`` child at each size, against the embedded xenstored in its own process."""
    from bench_stream import daemon_process

    result: dict[str, object] = {}
    for count in sizes:
        path = os.path.join(tempfile.mkdtemp(prefix="mtwl", dir="/tmp"), "socket")
        async with daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]):
            await populate(path, count, "mtwatch")
            result[str(count)] = json.loads(await child(["lateness", str(count), path, str(churn)]))
            if count == max(sizes):  # the collector's share: the same without the runtime's gc.freeze
                argv = ["lateness", str(count), path, str(churn), "--no-freeze"]
                result[f"{count}_without_gc_freeze"] = json.loads(await child(argv))
    result["targets"] = {
        "loop_late_max_ms": "<= 20 in every phase (on a loaded machine: loop_held_max_ms, the loop's own CPU)",
        "leave_seconds": "<= 2",
    }
    return result


async def costs(count: int, events: int, quick: bool = False) -> dict[str, object]:
    """What the watchdog and the per-domain nursery cost, side by side in one run.

    The watchdog: the runtime (mtwatch tree, ``count`` domains, as in ``scale``) with and without it (time
    until all run, memory per actor), and the events-stream runtime consumer with and without it (events/s
    and per CPU-second, each twice, alternating). The nursery: the product has no mode without it, so the
    floor's bare tasks are measured with and without a nursery each (a bench-only variant): the difference
    is what one nursery costs per actor; it does no work per event (a handler runs in the actor's own task,
    the nursery's scope is entered once per incarnation)."""
    from bench_stream import daemon_process, stream_daemon
    from bench_stream import runtime as stream_runtime

    result: dict[str, object] = {"domains": count}
    path = os.path.join(tempfile.mkdtemp(prefix="mtwc", dir="/tmp"), "socket")
    async with daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]):
        await populate(path, count, "mtwatch")
        with_dog = await measure(["runtime", str(count), path, "mtwatch"], quick)
        without = await measure(["runtime", str(count), path, "mtwatch", "--no-watchdog"], quick)
    rates: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    async with stream_daemon(100) as (stream_path, _proc):
        for _ in range(1 if quick else 2):
            for side, threshold in (("with", 0.5), ("without", None)):
                elapsed, seen, cpu = await stream_runtime(stream_path, 100, events, block_threshold=threshold)
                rates[side].append((seen / elapsed, seen / max(cpu, 1e-9)))

    def stream(side: str) -> dict[str, int]:
        return {
            "events_per_s": round(max(r for r, _ in rates[side])),
            "events_per_cpu_s": round(max(c for _, c in rates[side])),
        }

    result["watchdog"] = {
        "with": {**with_dog, "events_stream": stream("with")},
        "without": {**without, "events_stream": stream("without")},
    }
    nested = await measure(["floor", str(count)], quick)
    bare = await measure(["floor", str(count), "--no-nursery"], quick)

    def difference(key: str) -> int:
        more, less = nested[key], bare[key]
        assert isinstance(more, int) and isinstance(less, int)
        return more - less

    result["nursery"] = {
        "floor_with_nursery": nested,
        "floor_without_nursery": bare,
        "heap_bytes_per_nursery": difference("heap_bytes_per_actor"),
        "rss_bytes_per_nursery": difference("rss_bytes_per_actor"),
    }
    return result


def main(argv: list[str]) -> None:
    if "--tracemalloc" in argv:
        argv.remove("--tracemalloc")
        tracemalloc.start()
    flags = {"--no-watchdog", "--no-nursery", "--no-freeze"} & set(argv)
    argv = [arg for arg in argv if arg not in flags]
    kind, count = argv[0], int(argv[1])
    if kind == "lateness":
        print(json.dumps(trio.run(lateness, argv[2], count, int(argv[3]), "--no-freeze" not in flags)))
        return
    if kind == "floor":
        out = trio.run(floor, count, "--no-nursery" not in flags)
    else:
        out = trio.run(runtime, argv[2], count, argv[3], "--no-watchdog" not in flags)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
