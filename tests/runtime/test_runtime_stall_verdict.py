"""The stall verdict does not depend on the handler's timeout (issue 19): a handler whose deadline runs out while
it waits on a daemon that stopped answering is interrupted and run again once the daemon answers, never
charged, whether its timeout is shorter than ``stall_after`` or not; a handler slow on its own while the daemon
answers is still charged. Against a scripted daemon that goes silent (autojump clock) and Debian's C xenstored
stopped with SIGSTOP."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
import trio
import trio.testing

import actors
from actors import DomainContext, State, WatchEvent
from actors.xs.wire import Op, split
from harness.scripted import Gate, Peer, answer_as, scripted

DOMID = 7
DATA = f"/local/domain/{DOMID}/data"
TREE = {
    "/local": b"",
    "/local/domain": b"",
    "/local/domain/0": b"",
    actors.MTWATCH_ROOT: b"",
    f"{actors.MTWATCH_ROOT}/{DOMID}": b"uuid-7",
    f"/local/domain/{DOMID}": b"",
    DATA: b"0",
}


class Reads:
    """A handler that reads the node its event names (then, with ``own``, works that long on its own)."""

    def __init__(self, own: float = 0.0) -> None:
        self.own = own
        self.started = 0
        self.completed: list[bytes] = []
        self.cut_short = 0

    async def __call__(self, ctx: DomainContext, event: WatchEvent) -> None:
        self.started += 1
        try:
            value = await ctx.xs.read(DATA)
            if self.own:
                await trio.sleep(self.own)
        except trio.Cancelled:
            self.cut_short += 1
            raise
        self.completed.append(value)


async def until(condition: Callable[[], object]) -> None:
    while not condition():  # noqa: ASYNC110 (the runtime's and the handlers' state, polled)
        await trio.sleep(0.01)


def data_token(peer: Peer) -> str:
    (token,) = {
        split(frame.payload)[1].decode()
        for frame in peer.received
        if frame.op == Op.WATCH and split(frame.payload)[0] == DATA.encode()
    }
    return token


@pytest.mark.parametrize("handler_timeout", [0.2, 1.0])
@pytest.mark.parametrize("silence", [1.5, 5.0])  # shorter than stall_after (2 s, the default), and longer
async def test_a_handler_cut_short_by_a_silent_daemon_is_run_again_not_charged(
    autojump_clock: trio.testing.MockClock, handler_timeout: float, silence: float
) -> None:
    gate = Gate()
    peers: list[Peer] = []

    async def daemon(peer: Peer) -> None:
        peers.append(peer)
        await answer_as(peer, "c422", dict(TREE), gate)

    handler = Reads()
    async with scripted(daemon) as path, actors.connect(path) as xs, actors.open_runtime(xs) as rt:
        rt.watch("/local/domain/{domid}/data", handler, timeout=handler_timeout)
        with trio.fail_after(10):
            await rt.wait_domain(DOMID, State.RUNNING)
            await until(lambda: handler.completed)  # the registration event, handled
        (peer,) = peers
        gate.close()  # the daemon stops answering ...
        await peer.event(DATA, data_token(peer))  # ... just after it sent an event: the handler reads
        await trio.sleep(silence)
        assert handler.cut_short >= 1  # its deadline ran out while it waited on the silent daemon
        assert handler.started >= 2 and len(handler.completed) == 1
        gate.open()
        with trio.fail_after(10):
            await until(lambda: len(handler.completed) == 2)  # run again once the daemon answers
        snap = rt.domains[DOMID]
        assert snap.state is State.RUNNING
        assert (snap.failures, snap.restarts, snap.last_error) == (0, 0, None)
        assert snap.handled == 2
        assert xs.stalls == (1 if silence > xs.stall_after else 0)


async def test_a_handler_slow_on_its_own_while_the_daemon_answers_is_charged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Slow twice over: reading in a loop from a daemon that answers each read in 30 ms (its deadline runs
    out while a read waits: the reply comes, so the daemon answers), and working on its own after a read."""
    gate = Gate()

    async def daemon(peer: Peer) -> None:
        await answer_as(peer, "c422", dict(TREE), gate)

    async def reads_forever(ctx: DomainContext, event: WatchEvent) -> None:
        while True:
            await ctx.xs.read(DATA)

    for handler, timeout in ((reads_forever, 0.2), (Reads(own=2.0), 1.0)):
        async with scripted(daemon) as path, actors.connect(path) as xs, actors.open_runtime(xs) as rt:
            rt.watch("/local/domain/{domid}/data", handler, timeout=timeout)
            gate.delay = 0.03
            with trio.fail_after(30):
                await until(lambda: DOMID in rt.domains and rt.domains[DOMID].failures)
            snap = rt.domains[DOMID]
            assert snap.last_error is not None and "overran its timeout" in snap.last_error
            assert xs.stalls == 0
            gate.delay = 0.0


@pytest.mark.cxenstored
@pytest.mark.parametrize("handler_timeout", [0.2, 1.0])
async def test_sigstopped_c_xenstored_is_never_charged_to_short_timeouts(
    cxenstored_ready: None, workdir: str, handler_timeout: float
) -> None:
    """5 domains whose handlers read their node 50 ms after their event; C xenstored stopped with SIGSTOP just
    after the events went out, for 1.5 s (less than stall_after: no stall is even declared), three times: the
    reads wait past the handlers' deadlines, yet no domain is charged and every last value is handled."""
    from harness.cxenstored import open_cxenstored

    domids = range(1, 6)
    last: dict[int, bytes] = {}
    cut_short = 0

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        nonlocal cut_short
        try:
            await trio.sleep(0.05)
            last[ctx.domid] = await ctx.xs.read(f"/local/domain/{ctx.domid}/data")
        except trio.Cancelled:
            cut_short += 1
            raise

    async with (
        open_cxenstored(workdir) as real,
        actors.connect(real.socket_path) as xs,
        actors.connect(real.socket_path) as toolstack,
        actors.open_runtime(xs) as rt,
    ):
        rt.watch("/local/domain/{domid}/data", handler, timeout=handler_timeout)
        for domid in domids:
            await toolstack.write(f"/local/domain/{domid}/data", "0")
            await actors.announce_domain(toolstack, domid, identity=f"uuid-{domid}")
        with trio.fail_after(20):
            for domid in domids:
                await rt.wait_domain(domid, State.RUNNING)
        for n in range(1, 4):
            await trio.sleep(0.3)
            for domid in domids:
                await toolstack.write(f"/local/domain/{domid}/data", str(n))
            await trio.sleep(0.02)  # the events are in; the handlers will read in 30 ms
            os.kill(real.pid, signal.SIGSTOP)
            try:
                await trio.sleep(1.5)
            finally:
                os.kill(real.pid, signal.SIGCONT)
        with trio.fail_after(20):
            await until(lambda: all(last.get(d) == b"3" for d in domids))
        assert cut_short >= 3  # deadlines did run out in the stopped daemon's silence
        assert xs.stalls == 0
        for domid in domids:
            snap = rt.domains[domid]
            assert snap.state is State.RUNNING
            assert (snap.failures, snap.restarts) == (0, 0), snap
