"""The agent's control socket across a crash: an agent killed with SIGKILL leaves its socket behind, and the
next one started on the same path (as systemd's ``Restart=`` does) replaces it and answers; a live agent's
socket is still refused (exit 75). Real agent processes against the embedded xenstored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from actors.agent.control import ask
from actors.agent.exits import Exit
from actors.xenstored.sockets import daemon_answers
from harness.build import PROJECT_ROOT
from harness.servers import Embedded

AGENT = [sys.executable, "-m", "actors.cli", "agent"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("XENSTORED_", "NOTIFY_", "WATCHDOG_"))}


async def _start(control: str, xenstore: str, log: Path) -> trio.Process:
    with log.open("wb") as out:
        return await trio.lowlevel.open_process(
            [*AGENT, "--control", control, "--xenstore", xenstore],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=_env(),
            cwd=PROJECT_ROOT,
        )


async def _answering(control: str, proc: trio.Process) -> None:
    """Until the agent answers ``status`` on its control socket."""
    while True:
        assert proc.returncode is None, "the agent exited"
        try:
            await trio.to_thread.run_sync(ask, control, {"op": "status"})
            return
        except Exception:
            await trio.sleep(0.05)


async def test_a_killed_agent_comes_back_on_the_same_control_socket(
    xenstored: Embedded, workdir: str
) -> None:
    control = os.path.join(workdir, "run", "control")
    procs: list[trio.Process] = []
    try:
        with trio.fail_after(60):
            first = await _start(control, xenstored.socket_path, Path(workdir, "first.log"))
            procs.append(first)
            await _answering(control, first)

            # A live agent's socket is refused, and stays the first agent's.
            second = await trio.run_process(
                [*AGENT, "--control", control, "--xenstore", xenstored.socket_path],
                capture_stderr=True,
                check=False,
                env=_env(),
                cwd=PROJECT_ROOT,
            )
            assert second.returncode == Exit.TEMPFAIL == 75
            assert f"control socket {control} is already in use" in second.stderr.decode()
            await trio.to_thread.run_sync(ask, control, {"op": "status"})

            for round in range(2):
                killed = procs[-1]
                killed.send_signal(signal.SIGKILL)
                await killed.wait()
                assert await trio.Path(control).exists()  # left behind, and nobody answers on it
                assert not await trio.to_thread.run_sync(daemon_answers, control)
                log = Path(workdir, f"again{round}.log")
                again = await _start(control, xenstored.socket_path, log)
                procs.append(again)
                await _answering(control, again)
                assert "replaced the stale control socket" in await trio.Path(log).read_text()

            procs[-1].send_signal(signal.SIGTERM)
            assert await procs[-1].wait() == 0
            assert not await trio.Path(control).exists()  # the last one removed its own
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
