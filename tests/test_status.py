"""The commands' faces: ``--version`` everywhere, the exit table in ``--help``, and every long-running command
(agent, bridge, xenstored) ending on SIGINT (Ctrl-C) or SIGTERM with one line and no traceback (``top`` and
``demo``: tests/test_top.py, tests/test_demo.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from test_agent_daemon import REPO, clean_env, poll

import actors
from conftest import Embedded

CLI = [sys.executable, "-m", "actors.cli"]


async def run(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(20):
        result = await trio.run_process(
            [*CLI, *args], capture_stdout=True, capture_stderr=True, check=False, env=clean_env(), cwd=REPO
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["agent"],
        ["status"],
        ["domains"],
        ["top"],
        ["reset"],
        ["demo"],
        ["xenstored"],
        ["domain", "bridge"],
    ],
)
async def test_version_everywhere(command: list[str]) -> None:
    code, out, _ = await run(*command, "--version")
    assert (code, out.strip()) == (0, f"mtwatch {actors.__version__}")


async def test_help_lists_the_exit_statuses() -> None:
    code, out, _ = await run("--help")
    assert code == 0
    assert "exit status:" in out and "78  invalid configuration" in out and "3   no agent answers" in out


async def stop_with(
    argv: list[str], ready: Callable[[str], bool], signum: int, workdir: str
) -> tuple[int, str]:
    """Start ``argv``, wait until ``ready(its stderr so far)``, send ``signum``; its exit status and stderr."""
    log = Path(workdir) / "stderr"
    log.write_bytes(b"")
    with log.open("ab") as err:  # the child's stderr, opened once
        proc = await trio.lowlevel.open_process(
            [*CLI, *argv], stdout=subprocess.DEVNULL, stderr=err, env=clean_env()
        )
    try:
        with trio.fail_after(20):
            await poll(lambda: ready(log.read_text()))
            proc.send_signal(signum)
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    return code, log.read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_long_running_commands_stop_with_one_line(
    xenstored: Embedded, workdir: str, signum: signal.Signals
) -> None:
    name = signum.name
    control = os.path.join(workdir, "control")
    agent = ["agent", "--xenstore", xenstored.socket_path, "--control", control]
    code, err = await stop_with(agent, lambda err: "ready: " in err, signum, workdir)
    assert code == 0 and "Traceback" not in err
    assert f"{name} received: stopping" in err and err.rstrip().endswith("mtwatch agent stopped")

    bridge = ["domain", "bridge", "--xenstore", xenstored.socket_path]
    code, err = await stop_with(bridge, lambda err: "domain bridge: keeping" in err, signum, workdir)
    assert code == 0 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == f"mtwatch domain bridge: {name} received, stopping"

    own = os.path.join(workdir, "own.sock")
    code, err = await stop_with(
        ["xenstored", "--socket", own], lambda err: os.path.exists(own), signum, workdir
    )
    assert code == 0 and "Traceback" not in err
