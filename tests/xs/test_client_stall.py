"""Stall detection: a daemon that stops answering is noticed (``stalled``, ``stalls``, ``stalled_during``) and,
past ``stall_limit``, ends the connection with ConnectionStalled. Against a real xenstored process stopped with
SIGSTOP, and a scripted daemon going silent on the autojump clock."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import actors
from actors.xs.errors import ConnectionLost, ConnectionStalled
from actors.xs.transport import connect_unix
from harness.scripted import Peer, scripted


@asynccontextmanager
async def xenstored_process(workdir: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """The embedded xenstored in a process of its own, so that it can be stopped."""
    path = os.path.join(workdir, "socket")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.xenstored", "--socket", path, "--log-level", "WARNING"]
    )
    try:
        for _ in range(1000):  # up to 20 s for the process to listen
            try:
                stream = await connect_unix(path)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            break
        yield process, path
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_sigstopped_daemon_is_a_stall_until_it_continues(workdir: str) -> None:
    async with xenstored_process(workdir) as (process, path), actors.connect(path, stall_after=0.2) as xs:
        await xs.write("/a", "1")
        assert not xs.stalled.value and xs.stalls == 0
        process.send_signal(signal.SIGSTOP)
        begun = trio.current_time()
        values: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(values, xs.read("/a")))
            with trio.fail_after(10):
                await xs.stalled.wait_value(True)
            assert xs.stalls == 1
            process.send_signal(signal.SIGCONT)
            with trio.fail_after(10):
                await xs.stalled.wait_value(False)
        ended = trio.current_time()
        assert values == [b"1"]  # the request waited through the stall and got its answer
        assert xs.stalled_during(begun, ended)
        assert not xs.stalled_during(ended + 1, ended + 2)
        assert not xs.is_lost
        assert await xs.read("/a") == b"1"
        assert xs.stalls == 1


async def test_sigstopped_daemon_past_the_limit_ends_the_connection(workdir: str) -> None:
    async with xenstored_process(workdir) as (process, path):
        async with actors.connect(path, stall_after=0.2, stall_limit=0.6) as xs:
            await xs.write("/a", "1")
            process.send_signal(signal.SIGSTOP)
            with trio.fail_after(10), pytest.raises(ConnectionStalled, match="stall_limit"):
                await xs.read("/a")
            assert xs.is_lost and xs.stalls == 1 and not xs.stalled.value
            assert isinstance(await xs.wait_lost(), ConnectionStalled)
        process.send_signal(signal.SIGCONT)


async def _append(values: list[bytes], call: object) -> None:
    values.append(await call)  # type: ignore[misc]


async def test_silent_daemon_stalls_and_recovers(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        first = await peer.receive()
        await trio.sleep(5)  # silent with a request pending
        await peer.reply(first, b"one")
        await trio.sleep(20)  # silent with nothing pending: not a stall
        await peer.answer_everything(b"more")

    async with scripted(script) as path, actors.connect(path) as xs:
        assert xs.stall_after == 2.0 and xs.stall_limit is None  # the defaults
        seen: list[tuple[float, bool]] = []

        async def watch() -> None:
            async for value in xs.stalled.eventual_values():
                seen.append((trio.current_time(), value))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            start = trio.current_time()
            assert await xs.read("/a") == b"one"
            await trio.sleep(20)
            assert await xs.read("/b") == b"more"
            nursery.cancel_scope.cancel()
        assert [value for _, value in seen] == [False, True, False]
        assert seen[1][0] == pytest.approx(start + 2.0)  # stall_after after the request went out
        assert seen[2][0] == pytest.approx(start + 5.0)  # the reply ended it
        assert xs.stalls == 1
        assert xs.stalled_during(start + 0.5, start + 1.0)  # the stall counts from the start of the silence
        assert not xs.stalled_during(start + 6, start + 24)


async def test_silent_daemon_past_the_limit(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path, stall_after=1, stall_limit=30) as xs:
        failures: list[BaseException] = []

        async def call(path: str) -> None:
            try:
                await xs.read(path)
            except ConnectionLost as exc:
                failures.append(exc)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(call, f"/p{i}")
        assert trio.current_time() == pytest.approx(start + 30)
        assert len(failures) == 3 and all(isinstance(f, ConnectionStalled) for f in failures)
        assert all(isinstance(f.__cause__, ConnectionStalled) for f in failures)


async def test_stall_limit_is_settable_while_stalled(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path, stall_after=1) as xs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _expect_stalled(xs))
            await xs.stalled.wait_value(True)
            await trio.sleep(100)
            assert not xs.is_lost  # no limit: stalled as long as it takes
            xs.stall_limit = 50  # already past it: the connection ends now
        assert isinstance(await xs.wait_lost(), ConnectionStalled)


async def _expect_stalled(xs: actors.XenStore) -> None:
    with pytest.raises(ConnectionStalled):
        await xs.read("/never")


async def test_timed_out_requests_still_count_for_a_stall(autojump_clock: trio.abc.Clock) -> None:
    # Callers that gave up (request_timeout below stall_after) leave their requests outstanding on the wire:
    # a daemon that answers none of them is still seen stalled.
    async def script(peer: Peer) -> None:
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path, request_timeout=0.5, stall_after=2) as xs:
        with pytest.raises(actors.XenStoreError):
            await xs.read("/a")
        with trio.fail_after(10):
            await xs.stalled.wait_value(True)


async def test_bad_thresholds_are_refused(xs: actors.XenStore) -> None:
    for after in (0, -1):
        with pytest.raises(ValueError, match="stall_after > 0"):
            xs.stall_after = after
    for limit in (0, -5):
        with pytest.raises(ValueError, match="stall_limit > 0"):
            xs.stall_limit = limit
    assert (xs.stall_after, xs.stall_limit) == (2.0, None)
