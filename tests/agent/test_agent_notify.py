"""sd_notify over a real AF_UNIX datagram socket: messages, the abstract namespace, the environment, the
watchdog's rhythm (on the autojump clock) and a service manager that went away."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger

from actors.agent.notify import Notifier, monotonic_usec


@pytest.fixture
def receiver(workdir: str) -> Iterator[tuple[socket.socket, str]]:
    path = os.path.join(workdir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def test_messages_reach_the_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier(path) as notifier:
        assert notifier.enabled
        assert notifier.notify(READY=1, STATUS="3 domains\n(2 running)")
        assert sock.recv(4096) == b"READY=1\nSTATUS=3 domains (2 running)"
        before = monotonic_usec()
        notifier.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec())
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        assert fields["RELOADING"] == "1" and before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()


def test_abstract_namespace() -> None:
    name = f"mtwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        with Notifier("@" + name) as notifier:
            assert notifier.notify(STOPPING=1)
        assert sock.recv(4096) == b"STOPPING=1"


def test_environment_is_read_and_unset() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/x",
        "WATCHDOG_USEC": "4000000",
        "WATCHDOG_PID": str(os.getpid()),
        "HOME": "/",
    }
    with Notifier.from_environment(env) as notifier:
        assert notifier.address == "/run/x"
        assert notifier.watchdog_interval == 2.0
    assert env == {"HOME": "/"}  # the agent's commands do not inherit them

    other = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    with Notifier.from_environment(other) as notifier:
        assert notifier.watchdog_interval is None  # the watchdog is for another process

    with Notifier.from_environment({}) as notifier:
        assert not notifier.enabled
        assert not notifier.notify(READY=1)
        assert notifier.watchdog_interval is None


async def test_watchdog_pings_at_half_the_timeout(
    receiver: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = receiver
    sock.setblocking(False)
    with Notifier(path, watchdog_usec=2_000_000) as notifier:
        start = trio.current_time()
        with trio.move_on_after(3.5):
            await notifier.watchdog()
        assert trio.current_time() - start == pytest.approx(3.5)
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 4  # at 0, 1, 2 and 3 s


def test_a_vanished_service_manager_is_a_warning_once(workdir: str) -> None:
    seen: list[Any] = []
    sink = logger.add(lambda m: seen.append(m.record), level="WARNING")
    logger.enable("actors")
    try:
        with Notifier(os.path.join(workdir, "gone")) as notifier:
            assert not notifier.notify(READY=1)
            assert not notifier.notify(STATUS="x")
    finally:
        logger.disable("actors")
        logger.remove(sink)
    assert len([r for r in seen if "cannot notify" in r["message"]]) == 1
