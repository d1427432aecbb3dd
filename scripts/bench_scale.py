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

import actors
from actors.runtime.lifecycle import MTWATCH_ROOT

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


async def floor(count: int) -> dict[str, float]:
    """``count`` bare tasks, each owning a nursery and a memory channel and waiting on it."""
    running = 0
    all_running = trio.Event()

    async def task() -> None:
        nonlocal running
        async with trio.open_nursery():
            _send, receive = trio.open_memory_channel[object](64)
            running += 1
            if running == count:
                all_running.set()
            await receive.receive()

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


async def runtime(path: str, count: int, lifecycle: str) -> dict[str, float]:
    """The runtime on an already populated store, as the agent runs it (its own connection, connect=); every
    domain's actor with one watch."""

    async def noop(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        pass

    rss0, heap0, start, cpu0 = rss(), heap(), time.perf_counter(), time.process_time()
    connect = functools.partial(actors.connect, path)
    async with actors.open_runtime(connect=connect, lifecycle=lifecycle) as rt:  # type: ignore[arg-type]
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


def main(argv: list[str]) -> None:
    if "--tracemalloc" in argv:
        argv.remove("--tracemalloc")
        tracemalloc.start()
    kind, count = argv[0], int(argv[1])
    out = trio.run(floor, count) if kind == "floor" else trio.run(runtime, argv[2], count, argv[3])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
