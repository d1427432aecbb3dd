"""Silences shorter than a stall (``silent_since``, ``silent_for``, ``next_frame``) and ``mute_watch``, against a
scripted daemon on the autojump clock."""

from __future__ import annotations

import trio
import trio.testing

import actors
from actors.xs.wire import Op, split
from harness.scripted import Peer, scripted


async def test_a_silence_is_told_from_a_slow_reply(autojump_clock: trio.testing.MockClock) -> None:
    async def script(peer: Peer) -> None:
        slow = await peer.receive()
        await trio.sleep(0.05)  # answers, slowly
        await peer.reply(slow, b"slow")
        silent = await peer.receive()
        await trio.sleep(5)  # silent
        await peer.reply(silent, b"late")
        await peer.answer_everything(b"more")

    async with scripted(script) as path, actors.connect(path) as xs:
        assert xs.silent_since() is None  # nothing pending: no silence
        verdicts: list[bool] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(xs.read, "/a")
            await trio.sleep(0.01)
            assert xs.silent_since() is not None
            verdicts.append(await xs.silent_for(0.1))  # the reply comes at 0.05 s: the daemon answers
        async with trio.open_nursery() as nursery:
            nursery.start_soon(xs.read, "/b")
            await trio.sleep(0.01)
            start = trio.current_time()
            verdicts.append(await xs.silent_for(0.1))  # nothing for 0.1 s: silent
            assert trio.current_time() - start < 0.1  # counted from the silence's start, not from the call
            await xs.next_frame()  # the late reply
            assert trio.current_time() - start >= 4.9
        assert verdicts == [False, True]
        assert xs.stalls == 1  # the 5 s silence was a stall too (stall_after 2 s)
        assert await xs.read("/c") == b"more"


async def test_a_muted_watch_delivers_nothing_more_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async def script(peer: Peer) -> None:
        watch = await peer.receive()
        await peer.reply(watch, b"OK\0")
        token = split(watch.payload)[1].decode()
        for i in range(3):
            await peer.event(f"/w/{i}", token)
        unwatch = await peer.receive()  # the events still come until the UNWATCH is taken
        for i in range(3, 6):
            await peer.event(f"/w/{i}", token)
        assert unwatch.op == Op.UNWATCH
        await peer.reply(unwatch, b"OK\0")
        await peer.answer_everything()

    seen: list[str] = []
    async with scripted(script) as path, actors.connect(path) as xs:

        def sink(event: actors.WatchEvent) -> None:
            seen.append(event.path)
            if len(seen) == 2:
                xs.mute_watch("t")  # on the reader's path: the third event is already in the same chunk

        await xs.add_watch("/w", "t", sink)
        await trio.sleep(1)
        await xs.remove_watch("/w", "t")
        await trio.sleep(1)
        assert seen == ["/w/0", "/w/1"]
        assert xs.unknown_events == 4  # the third, and the three sent before the UNWATCH was taken
