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
from harness.servers import Embedded

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
        ["stack"],
        ["contrib"],
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


def test_the_table_puts_trouble_first_and_says_what_each_domain_does() -> None:
    from actors.agent.status import header, rates_between, rows, totals

    def dom(domid: int, state: str = "running", handled: int = 0, **more: object) -> dict[str, object]:
        counts = {"mailbox": 0, "dropped": 0, "failures": 0, "restarts": 0, "name": f"guest-{domid}"}
        return {"domid": domid, "state": state, "handled": handled, **counts, **more}

    doc = {
        "version": "0.1.0",
        "pid": 42,
        "uptime": 75.0,
        "ready": True,
        "lifecycle": "mtwatch",
        "connection": {"connected": False, "disconnected_for": 3.0, "xenstored": "/run/xs", "reconnects": 2},
        "health": {"code": 2, "reason": "not connected to xenstored (retrying for 3 s)"},
        "default": {"handled": 1, "failures": 0},
        "domains": [
            dom(1, handled=500),
            dom(2, handled=9, busy=12.5, busy_path="/local/domain/2/data/x"),
            dom(3, "failed", last_error="on-ping (pid 7) exited with status 3"),
            dom(4, handled=50),
            dom(5, "stopping", stopping=2.0),
        ],
    }
    lines = header(doc)
    assert (
        "xenstored /run/xs: NOT CONNECTED, reconnecting for 3 s, 2 reconnects; lifecycle mtwatch" in lines[0]
    )
    assert lines[1] == "health: not connected to xenstored (retrying for 3 s)"
    table = rows(doc, labels={4: "HUNG"})
    assert [domid for domid, _ in table] == [3, 2, 5, 1, 4]  # failed, busy, stopping, then by activity
    text = dict(table)
    assert "failed" in text[3] and text[3].endswith("on-ping (pid 7) exited with status 3")
    assert " busy " in text[2] and text[2].endswith("busy 12.5 s on /local/domain/2/data/x")
    assert "guest-1" in text[1] and text[4].endswith("HUNG")
    assert text[5].endswith("stopping 2 s")
    assert [domid for domid, _ in rows(doc, sort="domid")] == [1, 2, 3, 4, 5]
    later = {**doc, "domains": [dom(1, handled=600), dom(4, handled=40)]}
    assert rates_between(doc, later, 2.0) == {1: 50.0, 4: None}  # a count that went back: unknown
    assert totals(doc).startswith("5 domains (1 failed, 1 busy, 1 stopping, 2 running)")
