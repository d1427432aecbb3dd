"""The daemon as a program (``python -m actors.xenstored``), and Debian's real client tools against it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
import trio

from actors.xenstored.sockets import SocketInUse, take_socket_path
from actors.xenstored.testing import RawClient, serving

TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-list", "xenstore-rm", "xenstore-chmod",
         "xenstore-exists", "xenstore-watch")  # fmt: skip
needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS), reason="xenstore-utils is not installed"
)


async def test_main_serves_and_removes_its_socket_on_sigterm() -> None:
    directory = tempfile.mkdtemp(prefix="xsd-", dir="/tmp")
    path = os.path.join(directory, "socket")
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


def start(path: str | None, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``mtwatch xenstored`` in a process of its own, serving once it returns."""
    command = [sys.executable, "-m", "actors.xenstored", *(["--socket", path] if path else []), *argv]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    target = path or (env or {})["XENSTORED_PATH"]
    deadline = time.monotonic() + 20
    while not _listening(target):
        assert proc.poll() is None, "xenstored exited early"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def refused(path: str) -> subprocess.CompletedProcess[bytes]:
    """A second ``mtwatch xenstored --socket path``, which must give up at once."""
    return subprocess.run(
        [sys.executable, "-m", "actors.xenstored", "--socket", path], capture_output=True, timeout=30
    )


@pytest.fixture
def folder() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="xsd-", dir="/tmp")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_main_uses_xenstored_path(folder: str) -> None:
    path = os.path.join(folder, "socket")
    proc = start(None, env=dict(os.environ, XENSTORED_PATH=path))
    assert stop(proc) == 0
    assert not os.path.exists(path)


def test_a_socket_a_live_daemon_answers_on_is_refused_and_kept(folder: str) -> None:
    path = os.path.join(folder, "socket")
    first = start(path)
    try:
        identity = os.stat(path).st_ino
        second = refused(path)
        assert second.returncode == 1
        assert f"a daemon already answers on {path}".encode() in second.stderr
        assert b"Traceback" not in second.stderr
        assert os.stat(path).st_ino == identity  # still the first daemon's socket, still served
        assert _listening(path)
    finally:
        assert stop(first) == 0
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_refused_and_left_alone(folder: str) -> None:
    path = os.path.join(folder, "socket")
    with open(path, "w") as other:
        other.write("not a socket")
    result = refused(path)
    assert result.returncode == 1
    assert f"{path} exists and is not a socket: not touching it".encode() in result.stderr
    with open(path) as other:
        assert other.read() == "not a socket"


def test_a_stale_socket_is_replaced(folder: str) -> None:
    path = os.path.join(folder, "socket")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # a socket file nobody listens on
    proc = start(path)
    try:
        assert _listening(path)
    finally:
        assert stop(proc) == 0
    assert not os.path.exists(path)


def test_killed_with_sigkill_it_comes_back_on_the_same_path(folder: str) -> None:
    """As systemd's Restart= does: the killed daemon left its socket; each restart replaces it, serves, and a
    second daemon meanwhile is still refused."""
    path = os.path.join(folder, "socket")
    log_path = os.path.join(folder, "log")
    proc = start(path)
    for _ in range(3):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
        assert os.path.exists(path) and not _listening(path)  # stale: left behind, nobody answers
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "actors.xenstored", "--socket", path], stderr=log)
        deadline = time.monotonic() + 20
        while not _listening(path):
            assert proc.poll() is None, "xenstored exited early"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert refused(path).returncode == 1  # the live one is refused, as before
        assert _listening(path)
    try:
        assert _listening(path)
    finally:
        assert stop(proc) == 0
    with open(log_path, "rb") as log:
        assert b"replaced the stale socket" in log.read()
    assert not os.path.exists(path)


def test_two_starting_at_once_on_a_stale_socket_one_serves(folder: str) -> None:
    """Both find the path taken by a stale socket; the folder's lock lets only one replace it: the other finds
    it answering and gives up, and the winner's socket stays in place."""
    path = os.path.join(folder, "socket")
    for _ in range(2):
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(path)
        command = [sys.executable, "-m", "actors.xenstored", "--socket", path]
        logs = [os.path.join(folder, f"log{i}") for i in range(2)]
        procs = []
        for log_path in logs:
            with open(log_path, "wb") as log:
                procs.append(subprocess.Popen(command, stderr=log))
        deadline = time.monotonic() + 30
        while sum(p.poll() is None for p in procs) > 1 or not _listening(path):
            assert time.monotonic() < deadline, "neither gave up"
            time.sleep(0.02)
        (winner,) = (p for p in procs if p.poll() is None)
        (loser,) = (p for p in procs if p is not winner)
        assert loser.returncode == 1
        with open(logs[procs.index(loser)], "rb") as log:
            assert f"a daemon already answers on {path}".encode() in log.read()
        assert _listening(path)
        assert stop(winner) == 0
        assert not os.path.exists(path)


def test_the_folder_lock_lets_one_of_two_racing_starters_replace_a_stale_socket(folder: str) -> None:
    """The race itself, widened: each starter sleeps between its bind and its listen, when its socket is at
    the path and refuses connections (stale-looking). Without the lock both would replace the other's."""
    path = os.path.join(folder, "socket")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)
    outcomes: list[object] = []
    socks: list[socket.socket] = []
    both_ready = threading.Barrier(2)

    def starter() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.append(sock)

        def place() -> None:
            sock.bind(path)
            time.sleep(0.3)
            sock.listen(1)

        both_ready.wait()
        try:
            outcomes.append(take_socket_path(path, place))
        except SocketInUse as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=starter) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert sorted(map(type, outcomes), key=str) == [SocketInUse, bool]  # one replaced it, one refused
        assert True in outcomes
        assert _listening(path)  # the winner's, still in place
    finally:
        for sock in socks:
            sock.close()


def test_a_missing_folder_is_an_error_and_is_not_made(folder: str) -> None:
    path = os.path.join(folder, "run", "socket")
    result = refused(path)
    assert result.returncode == 1
    assert f"folder {folder}/run does not exist".encode() in result.stderr
    assert not os.path.exists(os.path.join(folder, "run"))


def test_a_socket_replaced_meanwhile_is_not_removed(folder: str) -> None:
    path = os.path.join(folder, "socket")
    proc = start(path)
    os.unlink(path)  # someone else takes the path over
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(path)
        assert stop(proc) == 0
        assert os.path.exists(path)  # not the daemon's own: left alone


async def test_compat_417_in_a_process(folder: str) -> None:
    paths = {compat: os.path.join(folder, f"s{compat}") for compat in ("4.17", "4.22")}
    procs = [start(paths["4.17"], "--compat", "4.17"), start(paths["4.22"])]
    try:
        async with (
            await RawClient.connect(paths["4.17"]) as old,
            await RawClient.connect(paths["4.22"]) as new,
        ):
            assert await old.error(23, b"") == "ENOSYS"  # GET_FEATURE
            assert await new.call(23, b"") == b"14\0"
    finally:
        assert [stop(proc) for proc in procs] == [0, 0]


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


def test_a_long_socket_path_that_fits_is_served(folder: str) -> None:
    """A path near the unix-socket limit (107 bytes) works: the private name it is bound under first is short."""
    path = os.path.join(folder, "s" * (100 - len(folder) - 1))
    assert len(path) == 100
    proc = start(path)
    assert _listening(path)
    assert stop(proc) == 0
    assert not os.path.exists(path)
