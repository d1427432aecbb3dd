"""``mtwatch top`` in a real pseudo-terminal, against a real agent process with 60 domains: the screen (read back
through pyte, a VT100 emulator) fits the terminal with the header pinned, keys sort and select, the view
survives an agent restart, and ``q`` quits (SIGTERM too, with one line and the terminal restored)."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pyte
import pytest
import trio
from test_agent_daemon import REPO, clean_env, run_agent

import actors
from harness.servers import Embedded


class Terminal:
    """A pty of ``columns`` x ``lines`` with ``mtwatch top`` on its slave side, and what its screen shows."""

    def __init__(self, columns: int, lines: int) -> None:
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.reader = trio.lowlevel.FdStream(os.dup(self.master))

    def text(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    async def wait_for(self, wanted: str, *, bottom: str = "") -> list[str]:
        """Read until a line shows ``wanted`` (and the bottom line ``bottom``: the screen is drawn whole)."""
        while not (any(wanted in line for line in self.text()) and bottom in self.text()[-1]):
            data = await self.reader.receive_some(65536)
            assert data, "the terminal closed"
            self.stream.feed(data)
        return self.text()

    async def next_screen(self, bottom: str) -> list[str]:
        """The next whole screen: at least one more read, then until the bottom line shows ``bottom``."""
        data = await self.reader.receive_some(65536)
        assert data, "the terminal closed"
        self.stream.feed(data)
        return await self.wait_for("", bottom=bottom)

    async def drain(self) -> None:
        with trio.move_on_after(0.5), pytest.raises(OSError):  # EIO once the process has gone
            while data := await self.reader.receive_some(65536):
                self.stream.feed(data)

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)


@asynccontextmanager
async def top(control: str, columns: int, lines: int) -> AsyncIterator[tuple[trio.Process, Terminal]]:
    term = Terminal(columns, lines)
    argv = [sys.executable, "-m", "actors.cli", "top", "--control", control, "--interval", "0.2"]
    env = clean_env(TERM="xterm-256color", LINES=str(lines), COLUMNS=str(columns))
    proc = await trio.lowlevel.open_process(
        argv,
        stdin=term.slave,
        stdout=term.slave,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    os.close(term.slave)
    try:
        yield proc, term
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        await term.reader.aclose()
        os.close(term.master)


def agent_config(workdir: str, socket_path: str) -> str:
    path = Path(workdir) / "agent.toml"
    path.write_text(f'[xenstore]\nsocket = "{socket_path}"\n[log]\nformat = "json"\n')
    return str(path)


async def stderr_of(proc: trio.Process) -> str:
    assert proc.stderr is not None
    data = bytearray()
    while chunk := await proc.stderr.receive_some(65536):
        data += chunk
    return data.decode()


def first_row(screen: list[str]) -> int:
    return int(screen[-1].split("rows ")[1].split("-")[0])


@pytest.mark.parametrize(("columns", "lines"), [(80, 24), (50, 12)])
async def test_top_fits_the_terminal_scrolls_sorts_and_quits(
    xenstored: Embedded, xs: actors.XenStore, workdir: str, columns: int, lines: int
) -> None:
    for domid in range(1, 61):
        await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
    control = os.path.join(workdir, "control")
    with trio.fail_after(30):
        async with (
            run_agent(workdir, "--config", agent_config(workdir, xenstored.socket_path)) as agent,
        ):
            await agent.wait_log("ready: ")
            async with top(control, columns, lines) as (proc, term):
                screen = await term.wait_for("60 domains", bottom="of 60")
                assert screen[0].startswith("mtwatch top")  # the header is pinned at the top
                assert "of 60" in screen[-1] and first_row(screen) == 1  # the rows scroll under it
                assert (
                    screen.count("") <= 1
                )  # every line used but the one under the header: none scrolled away
                assert all(len(line) < columns for line in screen)  # cut at the width, not wrapped
                term.press(b"s")
                screen = await term.wait_for("sort: domid", bottom="of 60")
                term.press(b"j" * 40)  # the selection moves down; the rows follow it
                while first_row(screen) == 1:
                    screen = await term.next_screen("of 60")
                assert screen[0].startswith("mtwatch top") and "of 60" in screen[-1]
                term.press(b"q")
                assert await proc.wait() == 0
                assert "Traceback" not in await stderr_of(proc)


async def test_top_survives_an_agent_restart_and_stops_on_sigterm(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    await actors.announce_domain(xs, 3, identity="uuid-3")
    control = os.path.join(workdir, "control")
    config = agent_config(workdir, xenstored.socket_path)
    with trio.fail_after(30):
        async with top(control, 80, 24) as (proc, term):
            await term.wait_for("no agent at")  # not there yet: it says so, and keeps trying
            async with run_agent(workdir, "--config", config) as agent:
                await term.wait_for("1 domains")
                agent.signal(signal.SIGTERM)
                assert await agent.wait_exit() == 0
                await term.wait_for("reconnecting")
            async with run_agent(workdir, "--config", config):
                await term.wait_for("1 domains")  # back, without a restart of top
                assert proc.returncode is None
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
            assert (await stderr_of(proc)).strip() == "mtwatch top: SIGTERM received, stopping"
