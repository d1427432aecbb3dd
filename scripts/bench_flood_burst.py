"""The ``flood-burst`` scenario of scripts/bench.py: a short flood's burst (issue 19's case), beside calm, in one run.

One guest writes 20,000 times over 900 paths in about 0.3 s (pipelined, from a process of its own) while 20
other domains are written every 10 ms; on the embedded xenstored and on Debian's C xenstored. Calm windows and
burst windows alternate, so the calm p99 is measured in the same run, under the same load: ``burst`` runs from
the burst's first write to 0.2 s after its last (the events it left queued), ``after`` from there to 1.5 s
after it (the cool-down's end and the flooded domain's resync), and ``floor`` the same burst to paths nobody
watches (the guest's and the daemon's load on the machine's CPUs without a single event for the runtime, from
its first write to 0.2 s after its last). Reported: the other domains' reader->handler p99 in each (target:
burst and after within 1.5x of calm), their write->handler p99, the bursts' durations, throttles, and whether the flooded
domain's handler read the last value of every path after each burst (flood control is lossless).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import trio
from bench_flood import FLOODED, Probe, Sizes, calm_writers, on_both_daemons, p99

import actors

TAIL = 0.2  # seconds after the burst's last write still counted as the burst (the events it left queued)
GUEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_burst_guest.py")


@dataclass
class Burst:
    writes: int
    paths: int
    others: int
    bursts: int
    window: float  # seconds of calm before each burst, and of the burst window after its end


class Guest:
    """The flooding guest's process: one burst per :meth:`burst`, which returns its duration."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.sent = 0  # bursts so far: the guest writes ``f"{burst}.{i}"`` in burst number ``burst``
        self._buffer = bytearray()

    async def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise RuntimeError("the flooding guest exited")
            self._buffer.extend(chunk)
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return line.decode()

    async def burst(self, folder: str | None = None) -> float:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(b"go\n" if folder is None else f"go {folder}\n".encode())
        self.sent += 1
        return float(await self.line())


def final_values(sizes: Burst, burst: int, base: str) -> dict[str, bytes]:
    """The last value the guest wrote to each path in burst number ``burst`` (one pipeline: in order)."""
    last = {}
    for i in range(max(0, sizes.writes - sizes.paths), sizes.writes):
        last[f"{base}/k{i % sizes.paths}"] = f"{burst}.{i}".encode()
    return last


async def run_on(path: str, sizes: Burst) -> dict[str, object]:
    probe = Probe()
    stop = trio.Event()
    base = f"/local/domain/{FLOODED}/data"
    durations: list[float] = []
    seen_after: list[float | None] = []
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
        proc = await trio.lowlevel.open_process(
            [sys.executable, GUEST, path, base, str(sizes.writes), str(sizes.paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        guest = Guest(proc)
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(30):
                    assert await guest.line() == "ready"
                calm = Sizes(0, 0, 0, sizes.others, 0.0)
                nursery.start_soon(calm_writers, path, calm, stop)
                await trio.sleep(0.5)
                throttles = probe.throttles
                for _ in range(sizes.bursts):
                    probe.phase = "calm"
                    await trio.sleep(sizes.window)
                    probe.phase = "burst"
                    probe.seen.clear()
                    probe.seen_at.clear()
                    start = trio.current_time()
                    number = guest.sent
                    durations.append(await guest.burst())
                    end = start + durations[-1]
                    await trio.sleep(TAIL)
                    probe.phase = "after"
                    await trio.sleep(sizes.window - TAIL)
                    final = final_values(sizes, number, base)
                    if all(probe.seen.get(p) == v for p, v in final.items()):
                        seen_after.append(round(max(0.0, max(probe.seen_at[p] for p in final) - end), 3))
                    else:
                        seen_after.append(None)
                    probe.phase = "settle"  # not counted: back to calm before the next window
                    await trio.sleep(0.3)
                    # The floor: the same burst to paths nobody watches (the guest's and the daemon's work,
                    # competing for the machine's CPUs, without one event for the runtime).
                    probe.phase = "floor"
                    await guest.burst(f"/local/domain/{FLOODED}/unwatched")
                    await trio.sleep(TAIL)
                    probe.phase = "settle"
                    await trio.sleep(0.3)
                stop.set()
        finally:
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    calm_p99 = p99(probe.latency.get("calm", []))
    burst_p99 = p99(probe.latency.get("burst", []))
    after_p99 = p99(probe.latency.get("after", []))
    floor_p99 = p99(probe.latency.get("floor", []))
    ordered = sorted(durations)
    return {
        "others": sizes.others,
        "bursts": sizes.bursts,
        "burst_seconds_median": round(ordered[len(ordered) // 2], 3),
        "burst_writes_per_s_median": round(sizes.writes / ordered[len(ordered) // 2], 1),
        "calm_samples": len(probe.latency.get("calm", [])),
        "burst_samples": len(probe.latency.get("burst", [])),
        "calm_p99_reader_to_handler_ms": calm_p99,
        "burst_p99_reader_to_handler_ms": burst_p99,
        "p99_ratio_to_calm": round(burst_p99 / calm_p99, 2) if calm_p99 and burst_p99 else None,
        "after_samples": len(probe.latency.get("after", [])),
        "after_p99_reader_to_handler_ms": after_p99,
        "after_p99_ratio_to_calm": round(after_p99 / calm_p99, 2) if calm_p99 and after_p99 else None,
        "floor_samples": len(probe.latency.get("floor", [])),
        "floor_p99_reader_to_handler_ms": floor_p99,
        "floor_p99_ratio_to_calm": round(floor_p99 / calm_p99, 2) if calm_p99 and floor_p99 else None,
        "calm_p99_write_to_handler_ms": p99(probe.write_to_handler.get("calm", [])),
        "burst_p99_write_to_handler_ms": p99(probe.write_to_handler.get("burst", [])),
        "after_p99_write_to_handler_ms": p99(probe.write_to_handler.get("after", [])),
        "throttles": probe.throttles - throttles,
        # When the flooded domain's handler had read the last value of every path, after each burst's end
        # (None: not within the burst window; lossless flood control must never leave one unread).
        "final_values_seen_after_s": seen_after,
        "target_p99_ratio": 1.5,
    }


async def bench(quick: bool) -> dict[str, object]:
    if quick:
        sizes = Burst(writes=3000, paths=90, others=5, bursts=1, window=0.5)
    else:
        sizes = Burst(writes=20_000, paths=900, others=20, bursts=5, window=1.5)
    result: dict[str, object] = {"writes": sizes.writes, "paths": sizes.paths}
    result.update(await on_both_daemons(lambda path: run_on(path, sizes)))
    return result
