"""The agent's ``call`` rules with ``isolation = "process"``: the agent as a real process against the embedded
xenstored, a handler module in a ``[handlers]`` folder run in worker processes; ``mtwatch status --json`` and
``/metrics`` show the pool, a domain's worker and the deaths; SIGTERM ends every worker (checked by pid)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import trio
from test_agent_daemon import actors_cli, base_config, metrics_port, per_domain, run_agent, scrape

import actors
from actors.agent.schema import ConfigError, watch_rule
from harness.servers import Embedded

pytestmark = pytest.mark.slow

HANDLERS = """\
import ctypes
import os
import time


def on_ping(ctx, event):
    value = ctx.xs.read(event.path).decode()
    ctx.log.info("ping {} in worker {}", value, os.getpid())
    ctx.xs.write(f"/local/domain/{ctx.domid}/data/pong", str(os.getpid()))


def crash(ctx, event):
    ctypes.string_at(0)


def linger(ctx, event):
    ctx.xs.write(f"/local/domain/{ctx.domid}/data/lingering", str(os.getpid()))
    time.sleep(60)


async def not_plain(ctx, event):
    pass
"""


def process_rule(name: str, call: str, *, timeout: float = 5.0) -> str:
    return f"""
[[watch]]
name = "{name}"
path = "/local/domain/{{domid}}/data/{name}"
call = "{call}"
isolation = "process"
initial = false
timeout = {timeout}
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def status(control: str) -> dict[str, object]:
    done = await trio.run_process(
        [*actors_cli(), "status", "--json", "--control", control], capture_stdout=True, check=False
    )
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


async def test_process_rules_run_in_workers_are_shown_and_end_with_the_agent(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    handlers = Path(workdir) / "handlers"
    handlers.mkdir()
    (handlers / "worker_mod.py").write_text(HANDLERS)
    config = Path(workdir) / "agent.toml"
    config.write_text(
        base_config(xenstored.socket_path)
        + f'\n[handlers]\npath = ["{handlers}"]\n'
        + process_rule("ping", "worker_mod:on_ping")
        + process_rule("crash", "worker_mod:crash")
        + process_rule("linger", "worker_mod:linger", timeout=60)
    )
    control = os.path.join(workdir, "control")
    await actors.announce_domain(xs, 5, identity="uuid-5")
    await actors.announce_domain(xs, 6, identity="uuid-6")
    async with run_agent(workdir, "--config", str(config), "--metrics", "127.0.0.1:0") as agent:
        with trio.fail_after(60):
            await agent.wait_log("ready: ")
            port = metrics_port(agent)
            assert (await status(control))["workers"]["alive"] == 0  # type: ignore[index]

            await xs.write("/local/domain/5/data/ping", "hello")
            while not await xs.exists("/local/domain/5/data/pong"):  # noqa: ASYNC110 (another process)
                await trio.sleep(0.02)
            worker = int(await xs.read("/local/domain/5/data/pong"))
            assert worker != agent.proc.pid
            (line,) = await agent.wait_log(f"ping hello in worker {worker}")
            assert line["extra"]["domid"] == 5 and line["extra"]["pid"] == worker

            await xs.write("/local/domain/6/data/crash", "now")
            await agent.wait_log("died: SIGSEGV")
            samples = await scrape(port)
            deaths = samples["mtwatch_worker_deaths_total"]
            assert deaths == {(("domid", "6"), ("reason", "SIGSEGV")): 1.0}
            assert per_domain(samples, "mtwatch_handler_failures_total")[5] == 0

            await xs.write("/local/domain/5/data/linger", "x")
            while not await xs.exists("/local/domain/5/data/lingering"):  # noqa: ASYNC110 (as above)
                await trio.sleep(0.02)
            lingering = int(await xs.read("/local/domain/5/data/lingering"))
            doc = await status(control)
            pool = doc["workers"]
            assert isinstance(pool, dict)
            assert pool["busy"] == 1 and pool["replaced"] >= 1 and pool["size"] >= 1
            assert pool["held"]["5"]["pid"] == lingering
            samples = await scrape(port)
            assert samples["mtwatch_workers"][(("state", "busy"),)] == 1
            text = await trio.run_process(
                [*actors_cli(), "status", "--control", control], capture_stdout=True, check=False
            )
            assert f"worker pid {lingering} for" in text.stdout.decode()
            assert "replaced" in text.stdout.decode()

            agent.signal(signal.SIGTERM)
            assert await agent.wait_exit() == 0
    assert not alive(worker) and not alive(lingering)  # every worker ended with the agent


def test_isolation_is_checked_with_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "iso_mod.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = {"path": "/local/domain/{domid}/data/x"}
    rule = watch_rule(0, {**base, "call": "iso_mod:on_ping", "isolation": "process"}, fresh=False)
    assert rule.isolation == "process"
    with pytest.raises(ConfigError, match="not a plain function"):
        watch_rule(0, {**base, "call": "iso_mod:not_plain", "isolation": "process"}, fresh=False)
    with pytest.raises(ConfigError, match="not an async function"):
        watch_rule(0, {**base, "call": "iso_mod:on_ping"}, fresh=False)
    with pytest.raises(ConfigError, match="is for a call rule"):
        watch_rule(0, {**base, "run": ["true"], "isolation": "process"}, fresh=False)
    with pytest.raises(ConfigError, match="isolation"):
        watch_rule(0, {**base, "call": "iso_mod:on_ping", "isolation": "thread"}, fresh=False)
