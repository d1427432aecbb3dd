"""The ``agent`` scenario of scripts/bench.py (issue 22): ``mtwatch agent`` at host scale, as an operator runs it.

The embedded xenstored in its own process with N announced mtwatch domains, the agent (its own process: this
file run as ``python scripts/bench_agent.py agent CONFIG OUT``, which runs :func:`actors.agent.daemon.run_agent`
with a 1 ms ticker beside it in the same trio loop) with one ``run`` rule and no guest activity. Measured: the
seconds from the agent starting to ``mtwatch status`` saying healthy with every domain running, its idle CPU
over 10 s, one /metrics scrape (seconds, bytes), ``mtwatch status`` (the command's wall time, interpreter start
included, and the control request alone; the default rows and ``--all``), its RSS and RSS per domain, and the
ticker's worst lateness in each phase. The runtime alone on the same store (``bench_scale.py runtime``, its own
connection as the agent has) gives the start and memory the agent is held to (1.5x).

The rule is ``initial = false``: "no guest activity" (with the default, every domain's registration event runs
the command once, 32,751 processes at start).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve()
PAGE = os.sysconf("SC_PAGE_SIZE")
IDLE_SECONDS = 10.0


def rss_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def write_config(folder: str, xenstored: str, port: int, per_domain: str | None) -> str:
    config = os.path.join(folder, "agent.toml")
    metrics = f'listen = "127.0.0.1:{port}"' + (f'\nper_domain = "{per_domain}"' if per_domain else "")
    Path(config).write_text(
        f'[xenstore]\nsocket = "{xenstored}"\n\n[metrics]\n{metrics}\n\n'
        f'[control]\nsocket = "{folder}/control"\n\n'
        '[[watch]]\npath = "/local/domain/{domid}/data/ping"\nrun = ["/bin/true"]\ninitial = false\n'
    )
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the agent's process ---------------------------------------------------------------------------------------


def agent_main(config_path: str, out: str) -> None:
    """Run the agent with a ticker beside it; on SIGTERM, write what the ticker saw to ``out``."""
    from bench_scale import Ticker

    from actors.agent.config import Overrides, load_config
    from actors.agent.daemon import run_agent
    from actors.agent.logs import configure_logging

    config = load_config(config_path, Overrides())
    configure_logging(config.log_format, "WARNING")
    ticker = Ticker()
    started = {
        "monotonic": time.monotonic(),
        "rss": int(Path("/proc/self/statm").read_text().split()[1]) * PAGE,
    }

    async def pausing() -> (
        None
    ):  # SIGUSR1 pauses the ticker (its own 1,000 wake-ups a second), SIGUSR2 resumes
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
            async for signum in signals:
                ticker.paused = signum == signal.SIGUSR1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            nursery.start_soon(pausing)
            await trio.Path(out + ".started").write_text(json.dumps(started))
            await run_agent(config)
            nursery.cancel_scope.cancel()

    trio.run(main)
    Path(out).write_text(json.dumps(ticker.samples))


# -- the measuring side ---------------------------------------------------------------------------------------


def ask(control: str, request: dict[str, Any], timeout: float = 60.0) -> tuple[float, dict[str, Any]]:
    from actors.agent.control import ask as control_ask

    start = time.perf_counter()
    answer = control_ask(control, request, timeout=timeout)
    return time.perf_counter() - start, answer


async def http_get(port: int, target: str) -> tuple[float, bytes, bool]:
    """(seconds, body, whole): whole when the body is as long as Content-Length says."""
    start = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = bytearray()
        while chunk := await stream.receive_some(1 << 20):
            data += chunk
    elapsed = time.perf_counter() - start
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        -1,
    )
    return elapsed, body, length == len(body)


async def cli_status(control: str, *extra: str) -> tuple[float, float, int]:
    """``mtwatch status`` as an operator runs it: its wall time (the interpreter's start included), its CPU
    seconds (what a loaded machine does not inflate) and exit status. (Without --timeout on an agent from before
    it had the option: a "before" run.)"""
    for timeout in (["--timeout", "60"], []):
        cpu = _children_cpu()
        start = time.perf_counter()
        done = await trio.run_process(
            [sys.executable, "-m", "actors.cli", "status", "--control", control, *timeout, *extra],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if b"unrecognized arguments" not in done.stderr:
            break
    return time.perf_counter() - start, _children_cpu() - cpu, done.returncode


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def one_size(count: int, xenstored: str, idle: float, per_domain: str | None) -> dict[str, Any]:
    from bench_stream import cpu_seconds

    folder = tempfile.mkdtemp(prefix="mtwa", dir="/tmp")
    port = free_port()
    config = write_config(folder, xenstored, port, per_domain)
    control = os.path.join(folder, "control")
    out = os.path.join(folder, "ticker.json")
    log = os.open(os.path.join(folder, "agent.log"), os.O_WRONLY | os.O_CREAT, 0o644)
    proc = await trio.lowlevel.open_process([sys.executable, str(HERE), "agent", config, out], stderr=log)
    result: dict[str, Any] = {"domains": count}
    phases: dict[str, tuple[float, float]] = {}
    try:
        while not await trio.Path(out + ".started").exists():
            await trio.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {proc.returncode}: see {folder}/agent.log")
        started = json.loads(await trio.Path(out + ".started").read_text())
        healthy_at = None
        with trio.fail_after(3600):
            while healthy_at is None:
                await trio.sleep(0.25)
                try:
                    _, doc = await trio.to_thread.run_sync(ask, control, {"op": "status", "limit": 0}, 2.0)
                except Exception:
                    continue  # not listening yet, or busy
                summary = doc.get("summary") or {}
                states = summary.get("states") if isinstance(summary, dict) else None
                running = (
                    states.get("running", 0)
                    if isinstance(states, dict)
                    else len(
                        [
                            d
                            for d in doc.get("domains", [])
                            if isinstance(d, dict) and d.get("state") == "running"
                        ]
                    )
                )
                health = doc.get("health")
                if isinstance(health, dict) and health.get("code") == 0 and running == count:
                    healthy_at = time.monotonic()
        result["seconds_to_healthy"] = round(healthy_at - started["monotonic"], 3)
        phases["start"] = (started["monotonic"], healthy_at)
        rss = rss_of(proc.pid)
        result["rss_bytes"] = rss
        result["rss_bytes_per_domain"] = round((rss - started["rss"]) / count)
        proc.send_signal(signal.SIGUSR1)  # the ticker's own wake-ups are not the agent's idle cost
        await trio.sleep(1.0)
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        await trio.sleep(idle)
        result["idle_cpu_percent"] = round(
            100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0), 2
        )
        proc.send_signal(signal.SIGUSR2)
        await trio.sleep(0.5)
        begin = time.monotonic()
        seconds, body, whole = await http_get(port, "/metrics")
        phases["scrape"] = (begin, time.monotonic())
        result["scrape"] = {"seconds": round(seconds, 3), "bytes": len(body), "whole": whole}
        await trio.sleep(0.5)
        begin = time.monotonic()
        request_s, doc = await trio.to_thread.run_sync(ask, control, {"op": "status"})
        top_s, _ = await trio.to_thread.run_sync(
            ask, control, {"op": "status", "limit": 500}
        )  # a top refresh
        command_s, command_cpu, code = await cli_status(control)
        phases["status"] = (begin, time.monotonic())
        await trio.sleep(0.5)
        begin = time.monotonic()
        all_request_s, _ = await trio.to_thread.run_sync(ask, control, {"op": "status", "limit": None})
        all_command_s, _, _ = await cli_status(control, "--all")
        phases["status_all"] = (begin, time.monotonic())
        result["status"] = {
            "command_seconds": round(command_s, 3),
            "command_cpu_seconds": round(command_cpu, 3),
            "exit_status": code,
            "request_seconds": round(request_s, 3),
            "top_refresh_seconds": round(top_s, 3),
            "rows": len(doc.get("domains", [])),
            "all_command_seconds": round(all_command_s, 3),
            "all_request_seconds": round(all_request_s, 3),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(120):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()
            await proc.wait()
        os.close(log)
    if await trio.Path(out).exists():
        samples = json.loads(await trio.Path(out).read_text())
        result["loop_late_max_ms"] = {
            name: round(1000 * max((late for at, late, _ in samples if a <= at <= b), default=0.0), 1)
            for name, (a, b) in phases.items()
        }
        result["loop_held_max_ms"] = {
            name: round(1000 * max((held for at, _, held in samples if a <= at <= b), default=0.0), 1)
            for name, (a, b) in phases.items()
        }
    return result


async def agent(sizes: list[int], quick: bool, per_domain: str | None = None) -> dict[str, object]:
    """The agent at each size, beside the runtime alone on the same store (time until all run, RSS per domain)."""
    from bench_scale import child, populate
    from bench_stream import daemon_process

    result: dict[str, object] = {"rule": "one run rule, initial = false; no guest activity"}
    for count in sizes:
        path = os.path.join(tempfile.mkdtemp(prefix="mtwa", dir="/tmp"), "socket")
        async with daemon_process([sys.executable, "-m", "actors.xenstored", "--socket", path]):
            await populate(path, count, "mtwatch")
            side = await one_size(count, path, 1.0 if quick else IDLE_SECONDS, per_domain)
            runtime = json.loads(await child(["runtime", str(count), path, "mtwatch"]))
        side["runtime_alone"] = {
            "seconds_until_all_run": runtime["seconds_until_all_run"],
            "rss_bytes_per_actor": runtime["rss_bytes_per_actor"],
        }
        healthy = side["seconds_to_healthy"]
        assert isinstance(healthy, float)
        side["ratios"] = {
            "healthy_vs_runtime_start": round(healthy / max(runtime["seconds_until_all_run"], 1e-9), 2),
            "rss_per_domain_vs_runtime": round(
                side["rss_bytes_per_domain"] / max(runtime["rss_bytes_per_actor"], 1), 2
            ),
        }
        result[str(count)] = side
    result["targets"] = {
        "idle_cpu_percent": "< 2 at 32,751",
        "scrape_seconds": "< 1 at 10,000, < 3 at 32,751",
        "status_command_seconds": "< 0.5 at 32,751",
        "loop_late_max_ms": "<= 20 during scrape and status",
        "healthy_vs_runtime_start": "<= 1.5 at 32,751",
        "rss_per_domain_vs_runtime": "<= 1.5",
    }
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    if sys.argv[1] == "agent":
        agent_main(sys.argv[2], sys.argv[3])
    else:  # python scripts/bench_agent.py measure N [N ...]: this scenario alone
        print(json.dumps(trio.run(agent, [int(n) for n in sys.argv[2:]], False), indent=2))
