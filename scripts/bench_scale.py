"""The ``scale`` scenario of scripts/bench.py: start-up, memory and leaving with many domains, beside a floor
of bare trio tasks. Every measured side runs in a fresh process of its own (this file, run as
``python scripts/bench_scale.py floor|runtime ...``), so neither inherits the other's freed memory.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

# The package faces are lazy: the runtime's modules are loaded here, not inside the first measured start, where
# their import would count as the actors' time and memory.
import actors
import actors.runtime.runtime
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT

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
    flags = {"--no-watchdog", "--no-nursery"} & set(argv)
    argv = [arg for arg in argv if arg not in flags]
    kind, count = argv[0], int(argv[1])
    if kind == "floor":
        out = trio.run(floor, count, "--no-nursery" not in flags)
    else:
        out = trio.run(runtime, argv[2], count, argv[3], "--no-watchdog" not in flags)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
