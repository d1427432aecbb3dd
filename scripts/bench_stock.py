"""The ``stock-host`` scenario of ``scripts/bench.py``: the ``domains`` lifecycle with 100, 1,000 and 3,000 live
domains, on the embedded xenstored as 4.22 (watch depth) and as 4.17, and on Debian's C xenstored 4.17.

Median milliseconds, with the runtime (``lifecycle="domains"``) in this process and the daemon in its own:

- ``create_to_running_ms``: from INTRODUCE (the domain's nodes written before, in a transaction, as libxl does)
  until the domain's actor runs.
- ``destroy_to_gone_ms``: a domain destroyed as libxl does it (its directory removed, then the domain destroyed:
  RELEASE here), from the removal until the runtime has no actor for it.
- ``release_first_to_gone_ms``: a toolstack that releases first and removes the directory after: from RELEASE
  until gone (without watch depth, the release round finds it). Fewer samples.

Targets (issue 9): at most 10 ms with watch depth, at most 60 ms on 4.17, for create and destroy.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import trio
from bench_stream import daemon_process

import actors

__all__ = ["bench"]


async def populate(xs: actors.XenStore, domids: range) -> None:
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


async def figures(path: str, sizes: list[int], samples: int) -> dict[str, object]:
    """The figures (median ms) at each number of live domains."""
    out: dict[str, object] = {}
    live = 0
    async with actors.connect(path) as xs:
        for size in sizes:
            await populate(xs, range(live + 1, size + 1))
            live = size
            try:
                out[str(size)] = await measured(xs, size, samples)
            except trio.TooSlowError:
                out[str(size)] = {"error": "timed out"}
                break
    return out


async def make(xs: actors.XenStore, domid: int) -> None:
    async with xs.transaction() as tx:
        await tx.write(f"/local/domain/{domid}/vm", f"/vm/new-{domid}")
        await tx.set_perms(f"/local/domain/{domid}", ["n0", f"r{domid}"])


async def measured(xs: actors.XenStore, size: int, samples: int) -> dict[str, object]:
    create: list[float] = []
    destroy: list[float] = []
    release_first: list[float] = []
    async with actors.open_runtime(xs, lifecycle="domains") as rt:
        with trio.fail_after(600):
            await rt.ready.wait()
            while sum(d.state is actors.State.RUNNING for d in rt.domains.values()) < size:
                await rt.changed.wait()
        for k in range(samples):
            domid = 30000 + k
            await make(xs, domid)
            with trio.fail_after(60):
                start = time.perf_counter()
                await xs.introduce(domid, 0, 1)
                await rt.wait_domain(domid, actors.State.RUNNING)
                create.append(time.perf_counter() - start)
                start = time.perf_counter()
                await xs.rm(f"/local/domain/{domid}")  # libxl: the directory, then the domain
                await xs.release(domid)
                await rt.wait_domain(domid, None)
                destroy.append(time.perf_counter() - start)
        for k in range(max(1, samples // 3)):
            domid = 31000 + k
            await make(xs, domid)
            with trio.fail_after(60):
                await xs.introduce(domid, 0, 1)
                await rt.wait_domain(domid, actors.State.RUNNING)
                start = time.perf_counter()
                await xs.release(domid)
                await rt.wait_domain(domid, None)
                release_first.append(time.perf_counter() - start)
            await xs.rm(f"/local/domain/{domid}")
    return {
        "create_to_running_ms": median_ms(create),
        "destroy_to_gone_ms": median_ms(destroy),
        "release_first_to_gone_ms": median_ms(release_first),
    }


def median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


async def embedded(compat: str, sizes: list[int], samples: int) -> dict[str, object]:
    """The embedded xenstored as a process of its own, answering as C xenstored ``compat`` does."""
    path = os.path.join(tempfile.mkdtemp(prefix="mtwb", dir="/tmp"), "socket")
    async with daemon_process(
        [sys.executable, "-m", "actors.xenstored", "--socket", path, "--compat", compat]
    ):
        return await figures(path, sizes, samples)


async def bench(quick: bool) -> dict[str, object]:
    sizes, samples = ([20, 100], 3) if quick else ([100, 1000, 3000], 9)
    result: dict[str, object] = {"target_ms_4_17": 60, "target_ms_watch_depth": 10}
    result["embedded_4_22_watch_depth"] = await embedded("4.22", sizes, samples)
    result["embedded_4_17"] = await embedded("4.17", sizes, samples)
    try:
        from harness.cxenstored import CXenStoredUnavailable, open_cxenstored

        async with open_cxenstored(tempfile.mkdtemp(prefix="mtwc", dir="/tmp")) as real:
            result["cxenstored_4_17"] = await figures(real.socket_path, sizes, samples)
    except CXenStoredUnavailable as exc:
        result["cxenstored_4_17"] = {"unavailable": str(exc)}
    return result
