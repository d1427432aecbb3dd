"""Pipelines (``xs.pipeline()``): many requests sent together over a real socket, each with its own answer or
its own error; a window bounds what is in flight; a deadline, a lost connection or a cancellation leaves no
request pending and no watch behind."""

from __future__ import annotations

import pytest
import trio

import actors
from actors.xs.errors import (
    ConnectionLost,
    InvalidPath,
    NotFound,
    PermissionDenied,
    RequestTimeout,
    TokenInUse,
)
from actors.xs.subscription import WatchEvent
from actors.xs.wire import Op
from harness.scripted import Peer, scripted


async def test_answers_in_order_with_their_own_errors(xs: actors.XenStore) -> None:
    for n in range(300):
        await xs.write(f"/p/{n}", f"v{n}")
    await xs.set_perms("/p/7", ["n0", "r3"])
    pipe = xs.pipeline(window=16)  # 600 requests through a window of 16
    reads = [pipe.read(f"/p/{n}") for n in range(300)]
    perms = [pipe.get_perms(f"/p/{n}") for n in range(300)]
    missing = pipe.read("/p/none")
    assert len(pipe) == 601
    await pipe.send()
    assert [r.result() for r in reads] == [f"v{n}".encode() for n in range(300)]
    assert perms[7].result() == ["n0", "r3"]
    assert perms[8].result() == ["n0"]
    with pytest.raises(NotFound, match="/p/none"):
        missing.result()
    assert isinstance(missing.error, NotFound)
    assert reads[0].error is None
    assert xs._link.protocol.pending == 0
    assert len(pipe) == 0  # sent: the pipeline may be used again
    again = pipe.read("/p/1")
    await pipe.send()
    assert again.result() == b"v1"


async def test_domains_and_bad_input(xs: actors.XenStore, xenstored: object) -> None:
    await xs.introduce(5, 0, 1)
    pipe = xs.pipeline()
    five, six = pipe.is_domain_introduced(5), pipe.is_domain_introduced(6)
    with pytest.raises(InvalidPath):  # refused as it is added: nothing queued
        pipe.read("bad//path")
    with pytest.raises(ValueError):
        xs.pipeline(window=0)
    await pipe.send()
    assert five.result() is True
    assert six.result() is False


async def test_watches_take_or_leave_nothing(xs: actors.XenStore) -> None:
    events: list[WatchEvent] = []
    written = trio.Event()

    def sink(event: WatchEvent) -> None:
        events.append(event)
        if [e.path for e in events].count("/w/a") == 2:  # the registration's event, then the write's
            written.set()

    pipe = xs.pipeline()
    first = pipe.watch("/w/a", "tok-a", sink)
    pipe.watch("/w/b", "tok-b", events.append)
    await pipe.send()
    assert first.result() is None
    await xs.write("/w/a", "x")
    with trio.fail_after(5):
        await written.wait()
    again = xs.pipeline()
    taken = again.watch("/w/c", "tok-a", events.append)  # the token is in use: nothing sent
    await again.send()
    with pytest.raises(TokenInUse):
        taken.result()
    assert set(xs._sinks) == {"tok-a", "tok-b"}


async def test_refused_watch_leaves_no_sink(xenstored: object) -> None:
    async def script(peer: Peer) -> None:
        while True:
            frame = await peer.receive()
            if frame.op == Op.WATCH and b"denied" in frame.payload:
                await peer.error(frame, "EACCES")
            else:
                await peer.reply(frame, b"OK\0")

    async with scripted(script) as path, actors.connect(path) as xs:
        pipe = xs.pipeline()
        ok = pipe.watch("/fine", "t1", lambda event: None)
        refused = pipe.watch("/denied", "t2", lambda event: None)
        await pipe.send()
        assert ok.result() is None
        with pytest.raises(PermissionDenied):
            refused.result()
        assert set(xs._sinks) == {"t1"}


async def test_a_deadline_is_each_requests_own(autojump_clock: trio.abc.Clock) -> None:
    """The connection's request_timeout holds for each request: the unanswered one times out, its late answer
    is discarded (it does not count down the others), the rest are answered."""

    async def script(peer: Peer) -> None:
        silent = await peer.receive()
        for _ in range(3):
            await peer.reply(await peer.receive(), b"fine")
        await trio.sleep(30)
        await peer.reply(silent, b"late")
        await peer.answer_everything(b"after")

    async with scripted(script) as path, actors.connect(path, request_timeout=10) as xs:
        pipe = xs.pipeline()
        silent = pipe.read("/silent")
        answered = [pipe.read(f"/a{n}") for n in range(3)]
        with trio.fail_after(60):
            await pipe.send()
        assert [a.result() for a in answered] == [b"fine"] * 3
        with pytest.raises(RequestTimeout, match="READ on '/silent'"):
            silent.result()
        await trio.sleep(40)  # the late answer came and was dropped
        assert await xs.read("/x") == b"after"
        assert not xs.is_lost
        assert xs._link.protocol.pending == 0


async def test_lost_connection_ends_the_send(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await peer.reply(await peer.receive(), b"one")
        await peer.receive()
        await peer.stream.aclose()

    async with scripted(script) as path, actors.connect(path) as xs:
        pipe = xs.pipeline()
        one, two = pipe.read("/1"), pipe.read("/2")
        with trio.fail_after(10), pytest.raises(ConnectionLost):
            await pipe.send()
        assert one.result() == b"one"
        with pytest.raises(ConnectionLost):
            two.result()


async def test_cancelled_send_abandons_its_requests(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await peer.receive()
        await peer.receive()
        await trio.sleep(10)
        await peer.answer_everything(b"later")

    async with scripted(script) as path, actors.connect(path) as xs:
        pipe = xs.pipeline()
        pipe.read("/1")
        pipe.watch("/2", "tok", lambda event: None)
        with trio.move_on_after(1):
            await pipe.send()
        assert not list(xs._link.protocol.waiting())
        assert "tok" not in xs._sinks
        await trio.sleep(20)  # the late answers are discarded: the connection goes on
        assert await xs.read("/3") == b"later"
        assert not xs.is_lost
