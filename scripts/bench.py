#!/usr/bin/env python3
"""Benchmarks, printed as one JSON object. Ratios are measured side by side in the same run.

    .venv/bin/python scripts/bench.py [--quick] [--only NAME ...]

- ``xenstored``: the same client workload (a read/write/ls mix from concurrent tasks over one connection) against
  the embedded xenstored and Debian's real C xenstored; ops/s of each and their ratio (target: >= 0.5).
- ``events``: the runtime's event path: guests' writes to N domains, time from the connection's reader receiving
  the frame to the handler starting (p50/p99) and handled events/s.
- ``actor_memory``: Python heap per idle domain actor with one watch (tracemalloc), target a few KiB.
- ``flood``: 100,000 events for one domain with a slow handler: peak mailbox depth and the coalesced count.
- ``stock-host``: the ``domains`` lifecycle with 100, 1,000 and 3,000 live domains, as libxl makes and destroys
  them (no mtwatch node), on the embedded xenstored (a process of its own) and Debian's C xenstored: a domain's
  time from its INTRODUCE to its actor running, and from its RELEASE to its actor gone (median ms; targets
  <= 60 ms on a 4.17 daemon, <= 10 ms with watch depth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.lowlevel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import actors  # noqa: E402
from actors.xenstored import open_xenstored  # noqa: E402


async def mix_workload(path: str, seconds: float, tasks: int = 16) -> dict[str, float]:
    """Each task loops write, read, ls on its own subtree; returns ops/s over ``seconds``."""
    count = 0
    async with actors.connect(path) as xs:
        for t in range(tasks):
            for i in range(10):
                await xs.write(f"/bench/{t}/n{i}", "seed")

        async def worker(t: int) -> None:
            nonlocal count
            i = 0
            while True:
                await xs.write(f"/bench/{t}/n{i % 10}", str(i))
                await xs.read(f"/bench/{t}/n{(i + 3) % 10}")
                await xs.ls(f"/bench/{t}")
                count += 3
                i += 1

        start = time.perf_counter()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for t in range(tasks):
                    nursery.start_soon(worker, t)
        elapsed = time.perf_counter() - start
    return {"ops": count, "seconds": round(elapsed, 3), "ops_per_s": round(count / elapsed, 1)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(path: str, pid: int, seconds: float) -> dict[str, float]:
    """The mix against a daemon in its own process; also its CPU time, so that its capacity (ops per
    CPU-second of the daemon) is known even when the Python client, not the daemon, sets the pace."""
    before = cpu_seconds(pid)
    result = await mix_workload(path, seconds)
    used = cpu_seconds(pid) - before
    result["daemon_cpu_s"] = round(used, 3)
    result["ops_per_daemon_cpu_s"] = round(result["ops"] / used, 1) if used > 0 else float("inf")
    return result


async def bench_xenstored(seconds: float) -> dict[str, object]:
    """Both daemons as processes of their own, driven by the same client workload, one after the other."""
    result: dict[str, object] = {}
    folder = tempfile.mkdtemp(prefix="mtwb", dir="/tmp")
    embedded_path = os.path.join(folder, "socket")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.xenstored", "--socket", embedded_path], stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        logged = b""
        with trio.fail_after(10):
            while b"listening" not in logged:  # the daemon says so once its socket accepts
                chunk = await proc.stderr.receive_some()
                if not chunk:
                    raise RuntimeError(f"embedded xenstored did not start: {logged.decode()}")
                logged += chunk
        result["embedded"] = await measured(embedded_path, proc.pid, seconds)
    finally:
        proc.terminate()
        await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.aclose()
    try:
        from harness.cxenstored import CXenStoredUnavailable, open_cxenstored

        real_dir = tempfile.mkdtemp(prefix="mtwc", dir="/tmp")
        async with open_cxenstored(real_dir) as real:
            result["cxenstored"] = await measured(real.socket_path, real.pid, seconds)
    except CXenStoredUnavailable as exc:
        result["cxenstored"] = {"unavailable": str(exc)}
    emb, real_r = result["embedded"], result["cxenstored"]
    if isinstance(emb, dict) and isinstance(real_r, dict) and "ops_per_s" in real_r:
        result["ratio_ops_per_s"] = round(emb["ops_per_s"] / real_r["ops_per_s"], 3)
        result["ratio_ops_per_daemon_cpu_s"] = round(
            emb["ops_per_daemon_cpu_s"] / real_r["ops_per_daemon_cpu_s"], 3
        )
        result["target_ratio"] = 0.5
        result["note"] = (
            "ops_per_s is paced by the one Python client in both runs; ops_per_daemon_cpu_s is each daemon's"
            " capacity on this workload"
        )
    return result


async def with_runtime(
    fn: Callable[[actors.XenStore, actors.Runtime], Awaitable[dict[str, object]]],
) -> dict[str, object]:
    folder = tempfile.mkdtemp(prefix="mtwb", dir="/tmp")
    path = os.path.join(folder, "socket")
    async with open_xenstored(path), actors.connect(path) as xs, actors.open_runtime(xs) as rt:
        return await fn(xs, rt)


async def bench_events(domains: int, rounds: int) -> dict[str, object]:
    async def run(xs: actors.XenStore, rt: actors.Runtime) -> dict[str, object]:
        latencies: list[float] = []

        def observe(kind: str, domid: int, value: float) -> None:
            if kind == "latency":
                latencies.append(value)

        rt.observe(observe)
        done = trio.Event()
        handled = 0
        expected = domains * rounds

        async def handler(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            nonlocal handled
            if event.path.endswith("/ping"):
                handled += 1
                if handled >= expected:
                    done.set()

        rt.watch("/local/domain/{domid}/data", handler)
        for domid in range(1, domains + 1):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        for domid in range(1, domains + 1):
            await rt.wait_domain(domid, actors.State.RUNNING)
        await trio.sleep(0.2)
        latencies.clear()
        start = time.perf_counter()
        async with actors.connect(xs.name) as writer:
            for r in range(rounds):
                async with trio.open_nursery() as nursery:
                    for domid in range(1, domains + 1):
                        nursery.start_soon(writer.write, f"/local/domain/{domid}/data/ping", str(r))
                await trio.lowlevel.checkpoint()
        with trio.move_on_after(30):
            await done.wait()
        elapsed = time.perf_counter() - start
        lat = sorted(latencies)
        return {
            "domains": domains,
            "events_written": expected,
            "handled": handled,
            "events_per_s": round(handled / elapsed, 1),
            "latency_p50_ms": round(1000 * statistics.median(lat), 3) if lat else None,
            "latency_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 3) if lat else None,
        }

    return await with_runtime(run)


async def bench_actor_memory(domains: int) -> dict[str, object]:
    async def run(xs: actors.XenStore, rt: actors.Runtime) -> dict[str, object]:
        async def handler(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            pass

        rt.watch("/local/domain/{domid}/data", handler)
        await trio.sleep(0.1)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        rt.full({domid: f"uuid-{domid}".encode() for domid in range(1, domains + 1)})
        for domid in range(1, domains + 1):
            await rt.wait_domain(domid, actors.State.RUNNING)
        await trio.sleep(0.5)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        rt.full({})
        return {
            "domains": domains,
            "heap_growth_bytes": grown,
            "bytes_per_actor": round(grown / domains),
            "note": "Python heap (tracemalloc) of the actors, their mailboxes, watches and the client's sinks",
        }

    return await with_runtime(run)


async def bench_flood(events: int) -> dict[str, object]:
    async def run(xs: actors.XenStore, rt: actors.Runtime) -> dict[str, object]:
        async def slow(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            await trio.sleep(0.01)

        rt.watch("/local/domain/{domid}/data", slow)
        await actors.announce_domain(xs, 4, identity="flood")
        await rt.wait_domain(4, actors.State.RUNNING)
        sink = next(s for token, s in xs._sinks.items() if token.startswith("mtw/4/"))
        actor = rt._actors[4]
        peak = 0
        start = time.perf_counter()
        for i in range(events):
            sink(actors.WatchEvent(f"/local/domain/4/data/k{i % 100}", "flood", trio.current_time()))
            if i % 500 == 0:
                peak = max(peak, len(actor.mailbox))
        elapsed = time.perf_counter() - start
        return {
            "events": events,
            "post_ns_per_event": round(1e9 * elapsed / events, 1),
            "peak_mailbox_depth": peak,
            "mailbox_capacity": actor.mailbox.capacity,
            "coalesced": actor.mailbox.coalesced,
        }

    return await with_runtime(run)


async def stock_host_populate(xs: actors.XenStore, domids: range) -> None:
    """Domains as libxl writes them (``vm``, ``name``, perms ``n0 r<domid>``), then introduced; in bulk."""
    for start in range(domids.start, domids.stop, 100):
        batch = range(start, min(start + 100, domids.stop))
        async with xs.transaction() as tx:
            for domid in batch:
                await tx.write(f"/local/domain/{domid}/vm", f"/vm/uuid-{domid}")
                await tx.write(f"/local/domain/{domid}/name", f"guest{domid}")
                await tx.set_perms(f"/local/domain/{domid}", ["n0", f"r{domid}"])
        async with trio.open_nursery() as nursery:
            for domid in batch:
                nursery.start_soon(xs.introduce, domid, 0, 1)


async def stock_host_figures(path: str, sizes: list[int], samples: int) -> dict[str, object]:
    """Create-to-running and destroy-to-gone (median ms) at each number of live domains."""
    out: dict[str, object] = {}
    live = 0
    async with actors.connect(path) as xs:
        for size in sizes:
            await stock_host_populate(xs, range(live + 1, size + 1))
            live = size
            try:
                out[str(size)] = await stock_host_samples(xs, size, samples)
            except trio.TooSlowError:
                out[str(size)] = {"error": "timed out"}
                break
    return out


async def stock_host_samples(xs: actors.XenStore, size: int, samples: int) -> dict[str, object]:
    async with actors.open_runtime(xs, lifecycle="domains") as rt:
        with trio.fail_after(600):
            await rt.ready.wait()
            while sum(d.state is actors.State.RUNNING for d in rt.domains.values()) < size:
                await rt.changed.wait()
        create: list[float] = []
        destroy: list[float] = []
        for k in range(samples):
            domid = 30000 + k
            async with xs.transaction() as tx:
                await tx.write(f"/local/domain/{domid}/vm", f"/vm/new-{domid}")
                await tx.set_perms(f"/local/domain/{domid}", ["n0", f"r{domid}"])
            with trio.fail_after(60):
                start = time.perf_counter()
                await xs.introduce(domid, 0, 1)
                await rt.wait_domain(domid, actors.State.RUNNING)
                create.append(time.perf_counter() - start)
                start = time.perf_counter()
                await xs.release(domid)
                await rt.wait_domain(domid, None)
                destroy.append(time.perf_counter() - start)
            await xs.rm(f"/local/domain/{domid}")
    return {
        "create_to_running_ms": round(statistics.median(create) * 1000, 2),
        "destroy_to_gone_ms": round(statistics.median(destroy) * 1000, 2),
    }


async def stock_host_embedded(compat: str, sizes: list[int], samples: int) -> dict[str, object]:
    """The embedded xenstored as a process of its own, answering as C xenstored ``compat`` does."""
    folder = tempfile.mkdtemp(prefix="mtwb", dir="/tmp")
    path = os.path.join(folder, "socket")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.xenstored", "--socket", path, "--compat", compat],
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        stderr = proc.stderr
        logged = b""
        with trio.fail_after(10):
            while b"listening" not in logged:
                chunk = await stderr.receive_some()
                if not chunk:
                    raise RuntimeError(f"embedded xenstored did not start: {logged.decode()}")
                logged += chunk
        async with trio.open_nursery() as nursery:

            async def drain() -> None:  # a full pipe would stop the daemon
                while await stderr.receive_some():
                    pass

            nursery.start_soon(drain)
            result = await stock_host_figures(path, sizes, samples)
            nursery.cancel_scope.cancel()
        return result
    finally:
        proc.terminate()
        await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.aclose()


async def bench_stock_host(sizes: list[int], samples: int) -> dict[str, object]:
    result: dict[str, object] = {"target_ms_4_17": 60, "target_ms_watch_depth": 10}
    result["embedded_4_22_watch_depth"] = await stock_host_embedded("4.22", sizes, samples)
    result["embedded_4_17"] = await stock_host_embedded("4.17", sizes, samples)
    try:
        from harness.cxenstored import CXenStoredUnavailable, open_cxenstored

        async with open_cxenstored(tempfile.mkdtemp(prefix="mtwc", dir="/tmp")) as real:
            result["cxenstored_4_17"] = await stock_host_figures(real.socket_path, sizes, samples)
    except CXenStoredUnavailable as exc:
        result["cxenstored_4_17"] = {"unavailable": str(exc)}
    return result


async def main(args: argparse.Namespace) -> dict[str, object]:
    quick = args.quick
    benches: dict[str, Callable[[], Awaitable[dict[str, object]]]] = {
        "xenstored": lambda: bench_xenstored(1.0 if quick else 3.0),
        "events": lambda: bench_events(20 if quick else 100, 5 if quick else 20),
        "actor_memory": lambda: bench_actor_memory(500 if quick else 5000),
        "flood": lambda: bench_flood(100_000),
        "stock-host": lambda: bench_stock_host([20, 100] if quick else [100, 1000, 3000], 3 if quick else 9),
    }
    out: dict[str, object] = {"python": sys.version.split()[0], "quick": quick}
    for name, bench in benches.items():
        if args.only and name not in args.only:
            continue
        out[name] = await bench()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks")
    print(json.dumps(trio.run(main, parser.parse_args()), indent=2))
