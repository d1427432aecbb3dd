"""The daemon as a program (``python -m actors.xenstored``), and Debian's real client tools against it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import trio

from actors.xenstored.testing import RawClient, serving

TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-list", "xenstore-rm", "xenstore-chmod",
         "xenstore-exists", "xenstore-watch")  # fmt: skip
needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS), reason="xenstore-utils is not installed"
)


async def test_main_serves_and_removes_its_socket_on_sigterm() -> None:
    directory = tempfile.mkdtemp(prefix="xsd-", dir="/tmp")
    path = os.path.join(directory, "run", "socket")  # the directory is made if missing
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "actors.xenstored", "--socket", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            with trio.fail_after(20):
                while not await trio.Path(path).exists():
                    assert proc.poll() is None, "xenstored exited early"
                    await trio.sleep(0.02)
                async with await RawClient.connect(path) as client:
                    await client.write("/hello", "world")
                    assert await client.read("/hello") == b"world"
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert not await trio.Path(path).exists()
        assert proc.stderr is not None
        log = await proc.stderr.receive_some(65536)
        assert b"listening on" in log
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_main_fails_cleanly_on_a_bad_socket_path() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actors.xenstored", "--socket", "/dev/null/not-a-dir/socket"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert b"xenstored:" in result.stderr


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def test_main_replaces_a_stale_socket_and_uses_xenstored_path() -> None:
    directory = tempfile.mkdtemp(prefix="xsd-", dir="/tmp")
    path = os.path.join(directory, "socket")
    try:
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(path)  # a socket file nobody listens on
        env = dict(os.environ, XENSTORED_PATH=path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors.xenstored"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 20
            while not _listening(path):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def tool(path: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, XENSTORED_PATH=path)
    with trio.fail_after(20):
        return await trio.run_process(
            list(argv), env=env, capture_stdout=True, capture_stderr=True, check=check
        )


@needs_tools
async def test_debian_client_tools() -> None:
    async with serving() as (server, path), await RawClient.connect(path) as client:
        assert (
            await tool(path, "xenstore-write", "/vm/name", "demo", "/vm/state", "two words")
        ).returncode == 0
        assert (await tool(path, "xenstore-read", "/vm/name")).stdout == b"demo\n"
        assert (await tool(path, "xenstore-ls", "/vm")).stdout == b'name = "demo"\nstate = "two words"\n'
        assert (await tool(path, "xenstore-list", "/vm")).stdout == b"name\nstate\n"
        assert (await tool(path, "xenstore-exists", "/vm/name")).returncode == 0
        assert (await tool(path, "xenstore-exists", "/vm/nope", check=False)).returncode == 1
        missing = await tool(path, "xenstore-read", "/vm/nope", check=False)
        assert missing.returncode == 1 and b"couldn't read path /vm/nope" in missing.stderr
        await tool(path, "xenstore-chmod", "/vm/name", "n0", "r5")
        assert await client.get_perms("/vm/name") == [b"n0", b"r5"]
        ls_p = (await tool(path, "xenstore-ls", "-p", "/vm")).stdout
        assert b"(n0,r5)" in ls_p
        await tool(path, "xenstore-rm", "/vm/state")
        assert await client.ls("/vm") == [b"name"]
        listing = (await tool(path, "xenstore-ls", "/")).stdout
        assert listing.startswith(b'tool = ""\n xenstored = ""\nvm = ""\n')

        watch_output: list[bytes] = []

        async def watch() -> None:
            result = await tool(path, "xenstore-watch", "-n", "2", "/vm")
            watch_output.append(result.stdout)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.fail_after(20):
                while not len(server.core.watches):  # noqa: ASYNC110 (polls the server's state)
                    await trio.sleep(0.01)
            await client.write("/vm/name", "renamed")
        assert watch_output == [b"/vm\n/vm/name\n"]
