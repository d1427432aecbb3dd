"""Error replies to the registry's requests are the request's, not the runtime's: retried with backoff, then
skipped with a warning naming the node and the error; the runtime carries on. Through a scripted proxy on a
real unix socket that answers chosen requests with an ERROR frame, in front of the embedded and the C daemon."""

from __future__ import annotations

import pytest
import trio

import actors
from actors import State
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from actors.runtime.lifecycle.requests import gather_bounded
from actors.xs.wire import Frame, Op
from harness.faultproxy import fault_proxy, path_of
from harness.servers import Embedded, Server
from harness.stockhost import warnings_logged


def node(domid: int) -> str:
    return f"{MTWATCH_ROOT}/{domid}"


async def test_error_replies_are_retried_or_skipped_never_fatal(server: Server) -> None:
    failures = {  # (op, path) -> errno names to answer with, in turn (then the daemon's own answer)
        (Op.DIRECTORY, MTWATCH_ROOT): ["EIO"],
        (Op.READ, node(5)): ["EIO", "EIO"],
        (Op.GET_PERMS, node(9)): ["EACCES"] * 1000,  # until the test lets it through
        (Op.READ, node(30)): ["EIO"],
    }

    def rule(frame: Frame) -> str | None:
        answers = failures.get((Op(frame.op), path_of(frame)))
        return answers.pop(0) if answers else None

    async with actors.connect(server.socket_path) as xs:
        for domid in range(1, 13):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        async with fault_proxy(server.socket_path) as proxy, actors.connect(proxy.path) as proxied:
            proxy.rule = rule
            with warnings_logged() as warnings, trio.fail_after(30):
                async with actors.open_runtime(proxied, lifecycle="mtwatch") as rt:
                    await rt.ready.wait()
                    for domid in set(range(1, 13)) - {9}:
                        await rt.wait_domain(domid, State.RUNNING)
                    assert 9 not in rt.domains
                    assert any(f"GET_PERMS {node(9)}" in w and "EACCES" in w for w in warnings), warnings
                    assert not failures[(Op.DIRECTORY, MTWATCH_ROOT)]  # the listing was retried
                    assert not failures[(Op.READ, node(5))]
                    failures[(Op.GET_PERMS, node(9))].clear()  # the daemon relents: the tree is listed again
                    await rt.wait_domain(9, State.RUNNING)
                    await actors.announce_domain(xs, 30, identity="uuid-30")  # an event, refused once
                    await rt.wait_domain(30, State.RUNNING)
                    assert rt.domains[30].identity == b"uuid-30"
                    assert not failures[(Op.READ, node(30))]
                    # A domain the daemon will not tell about keeps its state; it is not stopped.
                    failures[(Op.READ, node(3))] = ["EIO"] * 1000
                    failures[(Op.DIRECTORY, MTWATCH_ROOT)] = ["EIO"] * 10
                    await actors.retire_domain(xs, 1)
                    await xs.write(node(3), "uuid-3")  # same value: the read of it fails from now on
                    await rt.wait_domain(1, None)
                    assert rt.domains[3].state is State.RUNNING
                    assert len(proxy.refused) >= 5


class Boom(Exception):
    pass


async def test_gather_bounded_turns_a_group_of_lost_connections_into_one() -> None:
    async def lose(item: int) -> None:
        await trio.lowlevel.checkpoint()
        raise actors.ConnectionLost(f"lost under item {item}")

    with pytest.raises(actors.ConnectionLost):  # a bare ConnectionLost, as `except` on 3.11 needs it
        await gather_bounded(range(10), lose, limit=4)

    async def bug(item: int) -> None:
        raise Boom(item)

    with pytest.raises(ExceptionGroup) as info:  # anything else comes out as it is
        await gather_bounded(range(3), bug)
    assert info.group_contains(Boom)


async def test_connection_cut_during_the_listing_fan_out_is_a_reconnect(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    for domid in range(1, 201):
        await actors.announce_domain(xs, domid)
    cuts = [node(100)]

    def rule(frame: Frame) -> str | None:
        if frame.op == Op.GET_PERMS and path_of(frame) in cuts:
            cuts.clear()
            return "CUT"  # while ~64 requests of the listing are in flight
        return None

    async with fault_proxy(xenstored.socket_path) as proxy:
        proxy.rule = rule
        with trio.fail_after(30):
            async with actors.open_runtime(connect=lambda: actors.connect(proxy.path)) as rt:
                reconnected = trio.Event()
                rt.observe(lambda kind, domid, value: reconnected.set() if kind == "reconnect" else None)
                if rt.reconnects == 0:
                    await reconnected.wait()
                await rt.ready.wait()
                for domid in range(1, 201):
                    await rt.wait_domain(domid, State.RUNNING)
        assert not cuts
