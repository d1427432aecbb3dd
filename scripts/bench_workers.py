"""The ``workers`` scenario of scripts/bench.py: one guest's plain ``def`` handler misbehaves (spins, allocates
64 MB every 10 ms, segfaults, exits) for a while, as a worker thread (the default for a plain ``def``) and as a
worker process (``isolation="process"``), beside 20 healthy domains pinged every 10 ms.

Each case runs in a process of its own (``python scripts/bench_workers.py --case process:spin``), against the
embedded xenstored in a process of its own, so that a case that kills the runtime (a segfault in a thread) is
reported as such: a calm phase, then the fault phase, measured in the same process. Per phase: the healthy
domains' guest-write-to-handler p99 (the value written is the writer's trio clock), the pings they handled,
how late a 1 ms ticker in the runtime's loop ran at most, the runtime process's RSS, and what was charged to
whom. Beside it, what one handler call costs (round trip, p50/p99): inline ``async def``, a worker thread, a
worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from bench_stream import daemon_process

import actors
from actors.runtime.domain.context import DomainContext
from harness import process_handlers as ph

SCRIPT = os.path.abspath(__file__)
HEALTHY = 20
BAD = 21
FAULTS: dict[str, Callable[..., None]] = {
    "spin": ph.spin,
    "allocate": ph.allocate,
    "segfault": ph.segfault,
    "exit": ph.exit3,
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


def rss_mb(field_name: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Probe:
    phase: str = "setup"
    write_to_handler: dict[str, list[float]] = field(default_factory=dict)
    handled: dict[str, int] = field(default_factory=dict)
    late: dict[str, float] = field(default_factory=dict)

    async def healthy(self, ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        if event.initial:
            return
        value = await ctx.xs.read(event.path)
        self.write_to_handler.setdefault(self.phase, []).append(trio.current_time() - float(value))
        self.handled[self.phase] = self.handled.get(self.phase, 0) + 1

    async def ticker(self) -> None:
        """How late the loop runs a 1 ms sleep, at most, per phase."""
        while True:
            start = trio.current_time()
            await trio.sleep(0.001)
            late = trio.current_time() - start - 0.001
            if late > self.late.get(self.phase, 0.0):
                self.late[self.phase] = late


async def pinger(xs: actors.XenStore, domid: int) -> None:
    while True:
        await xs.write(f"/local/domain/{domid}/ping", repr(trio.current_time()))
        await trio.sleep(0.01)


async def misbehave(xs: actors.XenStore) -> None:
    """Domain 21's handler fault, set off again every 100 ms (after each restart of the domain)."""
    n = 0
    while True:
        n += 1
        await xs.write(f"/local/domain/{BAD}/bad", str(n))
        await trio.sleep(0.1)


async def run_case(isolation: str, fault: str, calm: float, seconds: float, folder: str) -> dict[str, object]:
    path = os.path.join(folder, "socket")  # (the caller's folder: a case that kills its process leaves it)
    probe = Probe()
    async with (
        daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]),
        actors.connect(path) as xs,
        actors.open_runtime(xs, restart=actors.RestartPolicy(max_restarts=1_000_000)) as rt,
        actors.connect(path) as guest,
        trio.open_nursery() as nursery,
    ):
        rt.watch("/local/domain/{domid}/ping", probe.healthy)
        rt.watch("/local/domain/{domid}/bad", FAULTS[fault], timeout=1.0, isolation=isolation, name="bad")
        for domid in range(1, BAD + 1):
            await actors.announce_domain(xs, domid, identity=f"bench-{domid}")
        for domid in range(1, BAD + 1):
            with trio.fail_after(30):
                await rt.wait_domain(domid, actors.State.RUNNING)
        nursery.start_soon(probe.ticker)
        for domid in range(1, HEALTHY + 1):
            nursery.start_soon(pinger, guest, domid)
        await trio.sleep(0.5)
        probe.phase = "calm"
        rss = {"calm_mb": round(rss_mb(), 1)}
        await trio.sleep(calm)
        probe.phase = "fault"
        nursery.start_soon(misbehave, guest)
        await trio.sleep(seconds)
        probe.phase = "after"
        rss["fault_mb"] = round(rss_mb(), 1)
        rss["peak_mb"] = round(rss_mb("VmHWM"), 1)
        domains = dict(rt.domains)  # a snapshot: read after the runtime has left (rt.domains is a live view)
        workers = rt.workers
        nursery.cancel_scope.cancel()
    result: dict[str, object] = {"runtime": "up"}
    for phase, length in (("calm", calm), ("fault", seconds)):
        result[phase] = {
            "healthy_p99_write_to_handler_ms": percentile(probe.write_to_handler.get(phase, []), 0.99),
            "healthy_pings_handled": probe.handled.get(phase, 0),
            "healthy_pings_per_s": round(probe.handled.get(phase, 0) / length, 1),
            "loop_late_max_ms": round(1000 * probe.late.get(phase, 0.0), 2),
        }
    calm_p99 = result["calm"]["healthy_p99_write_to_handler_ms"]  # type: ignore[index]
    fault_p99 = result["fault"]["healthy_p99_write_to_handler_ms"]  # type: ignore[index]
    result["p99_ratio_to_calm"] = round(fault_p99 / calm_p99, 2) if calm_p99 and fault_p99 else None
    result["pings_ratio_to_calm"] = round(
        (probe.handled.get("fault", 0) / seconds) / max(1e-9, probe.handled.get("calm", 0) / calm), 3
    )
    result["bad_domain"] = {
        "failures": domains[BAD].failures,
        "state": str(domains[BAD].state),
        "last_error": domains[BAD].last_error,
    }
    result["healthy_failures"] = sum(domains[d].failures for d in range(1, HEALTHY + 1))
    result["rss"] = rss
    if isolation == "thread":
        result["abandoned_threads"] = rt.abandoned_threads
    else:
        result["workers"] = {
            "size": workers.size,
            "replaced": workers.replaced,
            "deaths": {f"{domid}:{reason}": n for (domid, reason), n in workers.deaths.items()},
        }
    return result


async def call_costs(calls: int) -> dict[str, object]:
    """One handler call's round trip as the domain actor pays it: awaiting an inline handler, a worker thread
    (``trio.to_thread.run_sync``, as for a plain ``def``), a worker process (the pool's call); p50/p99 in ms,
    after a warm-up (the process figure's first call, which starts the worker, is given apart)."""
    folder = tempfile.TemporaryDirectory(prefix="mtwc", dir="/tmp")
    path = os.path.join(folder.name, "socket")
    event = actors.WatchEvent("/local/domain/1/x", "t")
    result: dict[str, object] = {"calls": calls}
    async with (
        contextlib.AsyncExitStack() as cleanup,
        daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]),
        actors.connect(path) as xs,
        actors.open_runtime(xs) as rt,
    ):
        cleanup.callback(folder.cleanup)  # the socket's folder, once the daemon is gone
        ctx = DomainContext(1, b"bench", rt)
        limiter = trio.CapacityLimiter(16)

        async def inline(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            return None

        start = time.perf_counter()
        await rt._pool.call(ctx, ph.noop, event, template=None, timeout=5.0, what="bench")
        result["process_first_call_ms"] = round(1000 * (time.perf_counter() - start), 1)
        kinds: dict[str, Callable[[], Any]] = {
            "inline": lambda: inline(ctx, event),
            "thread": lambda: trio.to_thread.run_sync(ph.noop, ctx, event, limiter=limiter),
            "process": lambda: rt._pool.call(ctx, ph.noop, event, template=None, timeout=5.0, what="bench"),
        }
        for name, call in kinds.items():
            for _ in range(min(50, calls)):
                await call()
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                await call()
                times.append(time.perf_counter() - start)
            result[name] = {"p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99)}
        result["worker_rss_mb"] = [round(_rss_of(pid), 1) for pid in sorted(rt._pool.pids)]
    return result


def _rss_of(pid: int) -> float:
    """A worker process's resident memory (MB)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def case_in_process(isolation: str, fault: str, calm: float, seconds: float) -> dict[str, object]:
    """One case in a fresh process (a session of its own); a runtime that dies is reported with how it died,
    and what it left behind (its xenstored, its workers) is killed with its process group."""
    argv = [sys.executable, SCRIPT, "--case", f"{isolation}:{fault}"]
    argv += ["--calm", str(calm), "--seconds", str(seconds)]
    with (
        tempfile.TemporaryDirectory(prefix="mtww", dir="/tmp") as folder,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        argv += ["--folder", folder]
        async with trio.open_nursery() as nursery:
            run = functools.partial(
                trio.run_process, argv, stdout=out, stderr=err, check=False, start_new_session=True
            )
            done: trio.Process = await nursery.start(run)
            try:
                with trio.fail_after(calm + seconds + 120):
                    await done.wait()
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(done.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if done.returncode == 0:
        parsed: dict[str, object] = json.loads(stdout)
        return parsed
    code = done.returncode
    how = signal.Signals(-code).name if code < 0 else f"exit status {code}"
    return {"runtime": f"dead ({how})", "stderr_tail": stderr.decode(errors="replace")[-300:]}


async def bench(quick: bool) -> dict[str, object]:
    calm, seconds = (0.5, 1.5) if quick else (5.0, 5.0)
    load = os.getloadavg()
    result: dict[str, object] = {
        "healthy_domains": HEALTHY,
        "calm_seconds": calm,
        "fault_seconds": seconds,
        "handler_timeout_s": 1.0,
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }
    for isolation in ("process", "thread"):
        cases: dict[str, object] = {}
        for fault in FAULTS:
            cases[fault] = await case_in_process(isolation, fault, calm, seconds)
        result[isolation] = cases
    result["call_cost"] = await call_costs(200 if quick else 5_000)
    result["targets"] = {
        "p99_ratio_to_calm": 2.0,
        "pings_ratio_to_calm": 0.9,
        "loop_late_max_ms": 20,
        "process_call_p50_ms": 0.5,
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case", help="isolation:fault, e.g. process:spin (one case; else the whole scenario)"
    )
    parser.add_argument("--calm", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--folder", help="for --case: where its daemon's socket goes (default: a new folder)")
    args = parser.parse_args()
    if args.case:
        isolation, _, fault = args.case.partition(":")
        if args.folder:
            report = trio.run(run_case, isolation, fault, args.calm, args.seconds, args.folder)
        else:
            with tempfile.TemporaryDirectory(prefix="mtww", dir="/tmp") as own:
                report = trio.run(run_case, isolation, fault, args.calm, args.seconds, own)
    else:
        report = trio.run(bench, args.quick)
    print(json.dumps(report, indent=2))
