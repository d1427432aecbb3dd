#!/usr/bin/env python3
"""Benchmarks, printed as one JSON object. Ratios are measured side by side in the same run.

    .venv/bin/python scripts/bench.py [--quick] [--domains N] [--only NAME ...]

Scenarios (``--only`` picks some; by default all run). Each is a function registered with ``@scenario(name)``
taking the parsed arguments and returning a JSON-able dict:

- ``events-stream``: a scripted daemon in its own process (scripts/stream_xenstored.py) streams 200,000 watch
  events for 100 domains, each to a distinct path; consumed, one after the other, by a bare decoder (socket and
  struct), pyxs 0.4.1's Client and Monitor, the project's client (``xs.watch()``, event by event and in
  batches) and the runtime (no-op handler, mailboxes that keep every event). Events/s, events per CPU-second,
  ratios.
- ``scale``: 32,751 domains (``--domains``) announced before the runtime starts, the embedded xenstored in its own
  process, every actor with one watch, beside as many bare trio tasks each owning a nursery and a memory
  channel (the floor), each side in a fresh process: time until all run, memory per actor (RSS, and the Python
  heap by tracemalloc in a second pass), time to leave. The mtwatch tree and the stock-host lifecycle.
  Beside it (``loop_lateness``), at 1,000 and 32,751 domains: the runtime on a connection the caller keeps
  with a 1 ms ticker in its loop, the ticker's worst lateness and the seconds of each phase: start, a full
  status/metrics snapshot (as the agent builds them), 500 retire+announce, leave; and reading one domain.
- ``agent``: ``mtwatch agent`` (one ``run`` rule, no guest activity) on the embedded xenstored with 1,000,
  10,000 and 32,751 domains (``--agent-domains``): time to healthy, idle CPU over 10 s, one /metrics scrape
  (time, size), ``mtwatch status`` (command and request), RSS, and a 1 ms ticker's worst lateness in the
  agent's loop during each; beside the runtime alone on the same store. In ``scripts/bench_agent.py``.
- ``costs``: what the watchdog and the per-domain nursery cost, side by side in one run: the runtime (4,000
  domains on the mtwatch tree) with and without the watchdog (time until all run, memory per actor) and the
  events-stream runtime consumer with and without it (events/s, per CPU-second); the floor's bare tasks with
  and without a nursery each (a bench-only variant: the product has no nursery-less mode), whose difference
  is what a domain's nursery costs per actor (it does no work per event).
- ``latency``: the runtime at 1,000 events/s over 100 domains from the streaming daemon: p50/p99/max from the
  connection's reader receiving a frame to the handler starting.
- ``xenstored``: the same client workload against the embedded xenstored and Debian's real C xenstored.
- ``flood``: one guest writing 100,000 times to one path, then 20,000 times over 900 paths, as fast as it can,
  while 20 other domains write every 10 ms, on the embedded xenstored (a process of its own) and Debian's C
  xenstored: the others' p99 from the reader receiving the frame to the handler starting, calm and flooded
  (target within 1.5x), their guest-write-to-handler p99 beside it, whether the flooded domain's handler saw
  the last value of every path within 1 s of the flood's end, throttles, RSS growth (target < 20 MB).
- ``flood-burst``: a short flood's burst (issue 19): one guest (a process of its own) writing 20,000 times over
  900 paths in about 0.3 s, five times, while 20 other domains are written every 10 ms, on the embedded xenstored
  and Debian's C xenstored; calm and burst windows alternate in one run: the others' reader->handler p99 in each
  (target: burst within 1.5x of calm), and whether the flooded domain read every path's last value. In
  ``scripts/bench_flood_burst.py``.
- ``flood-cost``: the streaming daemon sends 200,000 events for one domain whose handler is blocked (``busy``),
  or which flood control throttled (``throttled``), beside a no-op handler (``noop``) in the same run: this
  process's CPU-seconds per event (target: at most 2 us for a busy or throttled domain).
- ``stall``: a daemon stopped with SIGSTOP (5 s, then twelve times 2 s) while 20 domains are written every 10 ms
  and their handlers (``timeout=1.0``, shorter than ``stall_after``) read their node, on the embedded and the C
  xenstored: domains charged and failed (target: none), handlers cut short, every last value handled. In
  ``scripts/bench_stall.py``.
- ``stock-host``: the ``domains`` lifecycle with 100, 1,000 and 3,000 live domains, as libxl makes and destroys
  them (no mtwatch node), on the embedded xenstored (a process of its own) and Debian's C xenstored: a domain's
  time from its INTRODUCE to its actor running, and from its destruction to its actor gone (median ms; targets
  <= 60 ms on a 4.17 daemon, <= 10 ms with watch depth). In ``scripts/bench_stock.py``.
- ``sandbox``: the testing kit: ``actors.testing.sandbox()`` entered and left, a runtime ready on it and a domain
  made to running (ms: the first in the process, imports included; median and worst of the rest; target: a
  sandbox starts in under 50 ms). In ``scripts/bench_sandbox.py``.
- ``quota``: one round of quota telemetry over 1,000 live domains on the embedded xenstored (4.22 and 4.17, a
  process of its own) and Debian's C xenstored: the round's time (target < 1 s) and how late a 1 ms ticker
  woke meanwhile (how long the loop was held; target <= 20 ms). In ``scripts/bench_quota.py``.
- ``workers``: domain 21's plain ``def`` handler spins, allocates 64 MB every 10 ms, segfaults or exits for 5 s
  (after 5 s calm) while 20 healthy domains are pinged every 10 ms, as a worker thread and as a worker process
  (``isolation="process"``), each case in a process of its own: whether the runtime survives, what was
  charged to whom, the healthy domains' write-to-handler p99 and pings handled beside the calm phase (targets
  2x and 90%), the loop's lateness (a 1 ms ticker; target 20 ms), the runtime's RSS; and one call's cost,
  inline, thread and process (p50/p99; target p50 < 0.5 ms for a process). In ``scripts/bench_workers.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio
import trio.lowlevel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import bench_agent
import bench_flood as bench_flood_module
import bench_flood_burst
import bench_flood_cost
import bench_quota
import bench_sandbox
import bench_scale
import bench_stall
import bench_stock
import bench_stream
import bench_workers
from bench_stream import cpu_seconds, daemon_process

import actors
from actors.runtime.domain.mailbox import Envelope, Mailbox
from actors.xs.coalesce import CoalescingQueue

Scenario = Callable[[argparse.Namespace], Awaitable[dict[str, object]]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario under ``name`` (what ``--only`` takes); they run in the order registered."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


def size(args: argparse.Namespace, full: int, quick: int) -> int:
    return quick if args.quick else full


# -- the event path, start-up and latency -------------------------------------------------------------------


@scenario("events-stream")
async def events_stream(args: argparse.Namespace) -> dict[str, object]:
    return await bench_stream.events_stream(size(args, 100, 10), size(args, 200_000, 2_000), size(args, 3, 1))


@scenario("scale")
async def scale(args: argparse.Namespace) -> dict[str, object]:
    count = args.domains or size(args, 32_751, 50)
    result = await bench_scale.scale(count, args.quick)
    sizes = sorted({size(args, 1_000, 20), count})
    result["loop_lateness"] = await bench_scale.loop_lateness(sizes, size(args, 500, 10))
    return result


@scenario("agent")
async def agent(args: argparse.Namespace) -> dict[str, object]:
    sizes = args.agent_domains or ([30] if args.quick else [1_000, 10_000, 32_751])
    return await bench_agent.agent(sizes, args.quick, args.per_domain)


@scenario("costs")
async def costs(args: argparse.Namespace) -> dict[str, object]:
    return await bench_scale.costs(size(args, 4_000, 50), size(args, 200_000, 2_000), args.quick)


@scenario("latency")
async def latency(args: argparse.Namespace) -> dict[str, object]:
    return await bench_stream.latency(size(args, 100, 10), 1_000.0, 0.5 if args.quick else 10.0)


@scenario("queues")
async def queues(args: argparse.Namespace) -> dict[str, object]:
    """The runtime's Mailbox (a CoalescingQueue of envelopes) beside a bare CoalescingQueue, on the same
    envelopes: ns per post (nobody waiting, every key distinct, all kept), then per item received one by one,
    and in batches (the mailbox's of 64, as a domain actor receives)."""
    count = size(args, 200_000, 2_000)

    async def noop(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        pass

    watch = actors.Watch("/local/domain/{domid}/data", noop)
    envelopes = [
        Envelope(watch, actors.WatchEvent(f"/local/domain/4/data/e{i}", "t"), "/local/domain/4/data")
        for i in range(count)
    ]

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return 1e9 * (time.perf_counter() - start) / count

    async def drain(receive: Callable[[], Awaitable[object]], batch: bool) -> float:
        start, got = time.perf_counter(), 0
        while got < count:
            items = await receive()
            got += len(items) if batch and isinstance(items, list) else 1
        return 1e9 * (time.perf_counter() - start) / count

    result: dict[str, object] = {"items": count}
    for name, batch in (("mailbox", False), ("mailbox_batch", True)):
        mailbox = Mailbox(count, 1024)

        def post_all_mailbox(mailbox: Mailbox = mailbox) -> None:
            for envelope in envelopes:
                mailbox.post(envelope)

        post_ns = timed(post_all_mailbox)
        receive = functools.partial(mailbox.receive_batch, 64) if batch else mailbox.receive
        result[name] = {"post_ns": round(post_ns), "receive_ns": round(await drain(receive, batch))}
    for name, batch in (("queue", False), ("queue_batch", True)):
        queue: CoalescingQueue[tuple[int, str], Envelope] = CoalescingQueue(count)

        def post_all(queue: CoalescingQueue[tuple[int, str], Envelope] = queue) -> None:
            for envelope in envelopes:
                queue.post((envelope.watch.id, envelope.event.path), envelope)

        post_ns = timed(post_all)
        receive = queue.receive_batch if batch else queue.receive
        result[name] = {"post_ns": round(post_ns), "receive_ns": round(await drain(receive, batch))}
    return result


# -- the embedded xenstored against the C one ------------------------------------------------------------------


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


async def measured(path: str, pid: int, seconds: float) -> dict[str, float]:
    """The mix against a daemon in its own process; also its CPU time, so that its capacity (ops per
    CPU-second of the daemon) is known even when the Python client, not the daemon, sets the pace."""
    before = cpu_seconds(pid)
    result = await mix_workload(path, seconds)
    used = cpu_seconds(pid) - before
    result["daemon_cpu_s"] = round(used, 3)
    result["ops_per_daemon_cpu_s"] = round(result["ops"] / used, 1) if used > 0 else float("inf")
    return result


@scenario("xenstored")
async def bench_xenstored(args: argparse.Namespace) -> dict[str, object]:
    """Both daemons as processes of their own, driven by the same client workload, one after the other."""
    seconds = 1.0 if args.quick else 3.0
    result: dict[str, object] = {}
    embedded_path = os.path.join(tempfile.mkdtemp(prefix="mtwb", dir="/tmp"), "socket")
    async with daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", embedded_path]) as proc:
        result["embedded"] = await measured(embedded_path, proc.pid, seconds)
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


# -- floods ----------------------------------------------------------------------------------------------


@scenario("flood")
async def bench_flood(args: argparse.Namespace) -> dict[str, object]:
    return await bench_flood_module.bench(args.quick)


@scenario("flood-burst")
async def flood_burst(args: argparse.Namespace) -> dict[str, object]:
    return await bench_flood_burst.bench(args.quick)


@scenario("flood-cost")
async def flood_cost(args: argparse.Namespace) -> dict[str, object]:
    return await bench_flood_cost.flood_cost(size(args, 200_000, 2_000))


@scenario("stall")
async def stall(args: argparse.Namespace) -> dict[str, object]:
    return await bench_stall.bench(args.quick)


@scenario("stock-host")
async def stock_host(args: argparse.Namespace) -> dict[str, object]:
    return await bench_stock.bench(args.quick)


@scenario("sandbox")
async def sandbox(args: argparse.Namespace) -> dict[str, object]:
    return await bench_sandbox.bench(size(args, 50, 3))


@scenario("quota")
async def quota(args: argparse.Namespace) -> dict[str, object]:
    return await bench_quota.bench(args.quick)


@scenario("workers")
async def workers(args: argparse.Namespace) -> dict[str, object]:
    return await bench_workers.bench(args.quick)


async def main(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"python": sys.version.split()[0], "quick": args.quick}
    for name, run in SCENARIOS.items():
        if not args.only or name in args.only:
            out[name] = await run(args)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--domains", type=int, help="domains of the scale scenario (default 32,751)")
    parser.add_argument(
        "--agent-domains",
        type=int,
        nargs="*",
        help="sizes of the agent scenario (default 1,000 10,000 32,751)",
    )
    parser.add_argument(
        "--per-domain", choices=("all", "trouble", "none"), help="the agent's [metrics] per_domain"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these scenarios")
    print(json.dumps(trio.run(main, parser.parse_args()), indent=2))
