"""The ``sandbox`` scenario of scripts/bench.py: what the testing kit costs a test. ``actors.testing.sandbox()``
entered (the embedded xenstored on a fresh socket, a dom0 connection, the mtwatch root) and left, then a
sandbox with a runtime ready on it (``box.runtime()``), a domain made to running (``create_domain``) and the
whole left: milliseconds, the first in this process (imports included) and the median and worst of the rest.
Target: a sandbox starts in under 50 ms."""

from __future__ import annotations

import statistics
import time

import trio


def _figures(samples: list[float]) -> dict[str, float]:
    rest = samples[1:] or samples
    return {
        "first_ms": round(samples[0] * 1000, 2),
        "median_ms": round(statistics.median(rest) * 1000, 2),
        "max_ms": round(max(rest) * 1000, 2),
    }


async def bench(rounds: int) -> dict[str, object]:
    from actors.testing import sandbox

    start: list[float] = []
    leave: list[float] = []
    runtime: list[float] = []
    domain: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        async with sandbox():
            t1 = time.perf_counter()
        start.append(t1 - t0)
        leave.append(time.perf_counter() - t1)
    for index in range(rounds):
        async with sandbox() as box:
            t0 = time.perf_counter()
            async with box.runtime() as rt:
                t1 = time.perf_counter()
                await box.create_domain(index + 1)
                t2 = time.perf_counter()
                assert rt.domains[index + 1].state.value == "running"
            runtime.append(t1 - t0)
            domain.append(t2 - t1)
        await trio.lowlevel.checkpoint()
    return {
        "rounds": rounds,
        "start": _figures(start),
        "leave": _figures(leave),
        "runtime_ready": _figures(runtime),
        "create_domain_to_running": _figures(domain),
        "target_start_ms": 50,
    }
