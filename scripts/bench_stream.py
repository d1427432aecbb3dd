"""Scenarios on the streaming daemon (scripts/stream_xenstored.py): throughput of four consumers of the same
event stream, and the runtime's latency at a steady rate. Used by scripts/bench.py."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

import actors
from actors.xs.wire import HEADER, Op

SCRIPTS = Path(__file__).resolve().parent
GO = "/bench/go"
PREPARE = "/bench/prepare"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def daemon_process(argv: list[str]) -> AsyncIterator[trio.Process]:
    """A daemon in a process of its own, once it says ``listening`` on stderr; terminated at the end. Its
    stderr is read all along (a full pipe would stop a daemon that logs)."""
    proc = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    listening = trio.Event()
    logged = bytearray()

    async def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.receive_some():
            logged.extend(chunk)
            if b"listening" in logged:
                listening.set()
            del logged[:-4096]
        if not listening.is_set():
            raise RuntimeError(f"{argv[1]} did not start: {logged.decode()}")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stderr)
            with trio.fail_after(20):
                await listening.wait()
            try:
                yield proc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        proc.terminate()
        await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.aclose()


@asynccontextmanager
async def stream_daemon(domains: int) -> AsyncIterator[tuple[str, trio.Process]]:
    path = os.path.join(tempfile.mkdtemp(prefix="mtws", dir="/tmp"), "socket")
    argv = [sys.executable, str(SCRIPTS / "stream_xenstored.py"), "--socket", path, "--domains", str(domains)]
    async with daemon_process(argv) as proc:
        yield path, proc


def data_path(domid: int) -> str:
    return f"/local/domain/{domid}/data"


def token_of(domid: int) -> str:
    return f"mtw/{domid}/1/1"  # the shape of the runtime's tokens, so every consumer reads the same bytes


# -- the consumers: each connects, watches every domain's data, asks for the stream and counts it --------------
# Each returns (seconds from asking for the prepared stream to its last event, events counted, CPU seconds of this process).


def decoder(path: str, domains: int, count: int) -> tuple[float, int, float]:
    """The floor: a blocking socket and struct, frames split into path and token, nothing else."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    go_id, prepare_id = 0xFFFF, 0xFFFE
    frames = []
    for d in range(1, domains + 1):
        payload = f"{data_path(d)}\0{token_of(d)}\0".encode()
        frames.append(HEADER.pack(Op.WATCH, d, 0, len(payload)) + payload)
    prepare = f"{PREPARE}\0{count}".encode()
    frames.append(HEADER.pack(Op.WRITE, prepare_id, 0, len(prepare)) + prepare)
    sock.sendall(b"".join(frames))
    go = f"{GO}\0".encode()
    buf = bytearray()
    seen = 0
    start: float | None = None
    cpu0 = 0.0
    unpack = HEADER.unpack_from
    with sock:
        while start is None or seen < count:
            data = sock.recv(262144)
            if not data:
                raise RuntimeError("stream daemon closed the connection")
            buf += data
            pos, size_buf = 0, len(buf)
            while size_buf - pos >= 16:
                op, req_id, _, size = unpack(buf, pos)
                end = pos + 16 + size
                if end > size_buf:
                    break
                if op == Op.WATCH_EVENT:
                    _path, _token, _ = bytes(buf[pos + 16 : end]).split(b"\0")
                    if start is not None:
                        seen += 1
                elif req_id == prepare_id:
                    start, cpu0 = time.perf_counter(), time.process_time()
                    sock.sendall(HEADER.pack(Op.WRITE, go_id, 0, len(go)) + go)
                pos = end
            del buf[:pos]
    assert start is not None
    return time.perf_counter() - start, seen, time.process_time() - cpu0


def pyxs_monitor(path: str, domains: int, count: int) -> tuple[float, int, float]:
    """pyxs 0.4.1's threaded Client and a Monitor, as its documentation shows them."""
    from pyxs import Client

    with Client(unix_socket_path=path) as client:
        monitor = client.monitor()
        for d in range(1, domains + 1):
            monitor.watch(data_path(d).encode(), token_of(d).encode())
        events = monitor.wait()
        for _ in range(domains):  # the initial events
            next(events)
        client.write(PREPARE.encode(), str(count).encode())
        start, cpu0 = time.perf_counter(), time.process_time()
        client.write(GO.encode(), b"now")
        seen = 0
        for _ in range(count):
            next(events)
            seen += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        monitor.unwatch_queue.clear()  # the daemon is done with this connection: no UNWATCH round trips
    return elapsed, seen, cpu


async def client_subscriptions(path: str, domains: int, count: int, batch: bool) -> tuple[float, int, float]:
    """The project's client: one ``xs.watch()`` per domain, each read by a task of its own (event by event,
    or with ``receive_batch``)."""
    seen = 0
    target = domains + count
    done = trio.Event()
    initial = trio.Event()

    async def consume(sub: actors.Subscription) -> None:
        nonlocal seen
        if batch:
            while True:
                # Not ``seen += len(await ...)``: that reads ``seen`` before waiting.
                events = await sub.receive_batch()
                seen += len(events)
                if seen == domains:
                    initial.set()
                if seen >= target:
                    done.set()
        else:
            async for _ in sub:
                seen += 1
                if seen == domains:
                    initial.set()
                if seen >= target:
                    done.set()

    async with actors.connect(path) as xs, AsyncExitStack() as stack, trio.open_nursery() as nursery:
        for d in range(1, domains + 1):
            sub = await stack.enter_async_context(xs.watch(data_path(d), token_of(d), capacity=target))
            nursery.start_soon(consume, sub)
        await initial.wait()
        await xs.write(PREPARE, str(count))
        start, cpu0 = time.perf_counter(), time.process_time()
        await xs.write(GO, "")
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    return elapsed, seen - domains, cpu


async def runtime(path: str, domains: int, count: int, **options: Any) -> tuple[float, int, float]:
    """The runtime on the mtwatch tree: a no-op handler per domain, mailboxes that keep every event (and the
    RuntimeOptions fields in ``options``)."""
    handled = 0
    target = domains + count
    done = trio.Event()
    initial = trio.Event()

    async def handler(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        nonlocal handled
        handled += 1
        if handled == domains:
            initial.set()
        if handled >= target:
            done.set()

    async with (
        actors.connect(path) as xs,
        # The raw event path, every event kept: flood control (rightly) would throttle this stream.
        actors.open_runtime(
            xs, lifecycle="mtwatch", mailbox_size=target, flood_rate=None, flood_high_water=None, **options
        ) as rt,
    ):
        rt.watch("/local/domain/{domid}/data", handler)
        await initial.wait()
        await rt.xs.write(PREPARE, str(count))
        start, cpu0 = time.perf_counter(), time.process_time()
        await rt.xs.write(GO, "")
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return elapsed, handled - domains, cpu


async def events_stream(domains: int, count: int, rounds: int = 3) -> dict[str, object]:
    """Every consumer on its own connection to one streaming daemon, one after the other, ``rounds`` times
    over (interleaved, so that a slow moment of the machine hits every consumer alike); each consumer's figures
    are its best round's (the least disturbed), every round's events per CPU-second beside them."""
    consumers: dict[str, Callable[[str], Awaitable[tuple[float, int, float]]]] = {
        "decoder": lambda p: trio.to_thread.run_sync(decoder, p, domains, count),
        "pyxs": lambda p: trio.to_thread.run_sync(pyxs_monitor, p, domains, count),
        "client": lambda p: client_subscriptions(p, domains, count, batch=False),
        "client_batch": lambda p: client_subscriptions(p, domains, count, batch=True),
        "runtime": lambda p: runtime(p, domains, count),
    }
    result: dict[str, object] = {"domains": domains, "events": count, "rounds": rounds}
    rates: dict[str, float] = {}
    per_cpu: dict[str, float] = {}
    every: dict[str, list[int]] = {name: [] for name in consumers}
    best: dict[str, dict[str, object]] = {}
    async with stream_daemon(domains) as (path, proc):
        for _ in range(rounds):
            for name, consume in consumers.items():
                daemon_cpu0 = cpu_seconds(proc.pid)
                with trio.fail_after(300):
                    elapsed, seen, cpu = await consume(path)
                every[name].append(round(seen / max(cpu, 1e-9)))
                if seen / max(cpu, 1e-9) <= per_cpu.get(name, 0.0):
                    continue
                rates[name] = seen / elapsed
                per_cpu[name] = seen / max(cpu, 1e-9)
                best[name] = {
                    "events": seen,
                    "seconds": round(elapsed, 4),
                    "events_per_s": round(seen / elapsed),
                    "events_per_cpu_s": round(seen / cpu) if cpu > 0 else None,
                    "daemon_cpu_s": round(cpu_seconds(proc.pid) - daemon_cpu0, 3),
                }
    for name, figures in best.items():
        result[name] = {**figures, "events_per_cpu_s_each_round": every[name]}
    pairs = [
        ("runtime", "pyxs"),
        ("runtime", "client"),
        ("runtime", "decoder"),
        ("client", "decoder"),
        ("client_batch", "decoder"),
        ("pyxs", "decoder"),
    ]
    result["ratios"] = {f"{a}_vs_{b}": round(rates[a] / rates[b], 3) for a, b in pairs}
    # On a shared machine the wall-clock rates follow whatever else runs; the rates per CPU-second of this
    # process do not (pyxs's threads included).
    result["ratios_per_cpu_s"] = {f"{a}_vs_{b}": round(per_cpu[a] / per_cpu[b], 3) for a, b in pairs}
    result["targets"] = {"runtime_vs_pyxs": ">= 3", "runtime_vs_client": ">= 0.6"}
    return result


async def latency(domains: int, rate: float, seconds: float) -> dict[str, object]:
    """The runtime on the streaming daemon at a steady ``rate`` events/s spread over ``domains``: from the
    connection's reader receiving a frame to its handler starting (the runtime's ``latency`` observation)."""
    count = int(rate * seconds)
    latencies: list[float] = []
    handled = 0
    done = trio.Event()
    initial = trio.Event()

    def observe(kind: str, domid: int, value: float) -> None:
        if kind == "latency" and initial.is_set():
            latencies.append(value)

    async def handler(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        nonlocal handled
        handled += 1
        if handled == domains:
            initial.set()
        if handled >= domains + count:
            done.set()

    async with (
        stream_daemon(domains) as (path, _),
        actors.connect(path) as xs,
        actors.open_runtime(xs, lifecycle="mtwatch") as rt,
    ):
        rt.observe(observe)
        rt.watch("/local/domain/{domid}/data", handler)
        await initial.wait()
        await rt.xs.write(PREPARE, f"{count} {rate}")
        await rt.xs.write(GO, "")
        with trio.fail_after(seconds * 3 + 30):
            await done.wait()
    lat = sorted(latencies)
    return {
        "domains": domains,
        "rate_per_s": rate,
        "events": count,
        "handled": handled - domains,
        "latency_p50_ms": round(1000 * statistics.median(lat), 3),
        "latency_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 3),
        "latency_max_ms": round(1000 * lat[-1], 3),
        "target_p99_ms": "< 1",
    }
