"""An agent that is alive but whose loop is held is reported as busy, never as absent: ``mtwatch status`` says so
and exits 4 (Exit.AGENT_BUSY), where no agent at all is exit 3. The agent is a real process whose loop a real
handler holds (``time.sleep`` in an ``async def``, the mistake the watchdog names), not a mock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio
from test_agent_daemon import REPO, base_config, clean_env, run_agent

import actors
from actors.agent.exits import Exit
from harness.servers import Embedded

CLI = [sys.executable, "-m", "actors.cli"]


async def status(control: str, *args: str) -> tuple[int, str]:
    with trio.fail_after(30):
        done = await trio.run_process(
            [*CLI, "status", "--control", control, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_env(),
            cwd=REPO,
        )
    return done.returncode, done.stderr.decode()


async def test_a_held_agent_is_busy_and_a_missing_one_is_absent(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    handlers = Path(workdir) / "handlers"
    handlers.mkdir()
    (handlers / "holding_mod.py").write_text(
        "import time\n\n"
        "async def hold(ctx, event):\n"
        "    if event.initial:\n"
        "        return\n"
        "    print('hold: started', flush=True)\n"
        "    time.sleep(8)  # holds the agent's whole loop\n"
    )
    config = Path(workdir) / "agent.toml"
    config.write_text(
        base_config(xenstored.socket_path)
        + f'\n[handlers]\npath = ["{handlers}"]\n'
        + '\n[[watch]]\nname = "hold"\npath = "/local/domain/{domid}/data/ping"\ncall = "holding_mod:hold"\n'
    )
    control = os.path.join(workdir, "control")
    await actors.announce_domain(xs, 4, identity="uuid-4")
    async with run_agent(workdir, "--config", str(config)) as agent:
        with trio.fail_after(30):
            await agent.wait_log("ready: ")
            code, _ = await status(control)
            assert code == Exit.OK
            await xs.write("/local/domain/4/data/ping", "1")
            await agent.wait_log("hold: started")
            code, err = await status(control, "--timeout", "1")
            assert code == Exit.AGENT_BUSY == 4, err
            assert "busy" in err and "no agent" not in err, err
            code, err = await status(os.path.join(workdir, "nobody"), "--timeout", "1")
            assert code == Exit.NO_DAEMON == 3, err
            assert "no agent" in err, err
            await agent.wait_log("domain code failed")  # charged the block, once the loop runs again
            code, err = await status(control, "--timeout", "5")
            assert code not in (Exit.NO_DAEMON, Exit.AGENT_BUSY), err
