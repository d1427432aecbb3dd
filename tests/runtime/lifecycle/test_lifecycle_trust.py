"""Registry trust: a node is the toolstack's word only when no guest can have written it. Guest-writable mtwatch
nodes are refused (one warning naming the node and its permissions), a domain whose node turns writable is
stopped, and a stock host's guest cannot choose its own identity. Through a real guest connection (a ring on
the C daemon, a socket pair on the embedded one)."""

from __future__ import annotations

import trio

import actors
from actors import State
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from actors.runtime.lifecycle.trust import untrusted_because
from harness.servers import Server
from harness.stockhost import create_domain, warnings_logged


def node(domid: int) -> str:
    return f"{MTWATCH_ROOT}/{domid}"


def test_the_trust_rule() -> None:
    for perms in (["n0"], ["r0"], ["n0", "r5"], ["r0", "n5", "r7"], ["n0", "w0"]):
        assert untrusted_because(perms) is None, perms
    for perms in (["n0", "w5"], ["n0", "b5"], ["w0"], ["b0"], ["n5"], ["r5", "n0"], [], ["n0", "x5"], ["nx"]):
        assert untrusted_because(perms) is not None, perms


GOOD = {1: ["n0"], 2: ["r0"], 3: ["n0", "r5"]}
BAD = {4: ["n0", "w5"], 6: ["n0", "b5"], 7: ["w0"], 8: ["b0"], 10: ["n5"]}


async def test_guest_writable_mtwatch_nodes_are_refused(server: Server) -> None:
    async with actors.connect(server.socket_path) as xs:
        for domid, perms in (GOOD | BAD).items():
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
            await xs.set_perms(node(domid), perms)
        with warnings_logged() as warnings, trio.fail_after(30):
            async with (
                actors.open_runtime(xs, lifecycle="mtwatch") as rt,
                server.guest(5) as stream,
                actors.open_xenstore(stream, name="guest5") as guest,
            ):
                await rt.ready.wait()
                assert set(rt.domains) == set(GOOD)

                async def settled(domid: int) -> None:  # the registry handles events in order
                    await actors.announce_domain(xs, domid)
                    await rt.wait_domain(domid, State.RUNNING)

                await guest.write(node(4), "forged")  # guest 5 may: still refused, not warned again
                await settled(20)
                assert 4 not in rt.domains
                await xs.set_perms(node(3), ["n0", "w5"])  # domain 3's node turns writable: it stops
                await rt.wait_domain(3, None)
                await guest.write(node(3), "forged")
                await settled(21)
                assert set(rt.domains) == {1, 2, 20, 21}
                await xs.set_perms(node(3), ["n0"])  # dom0 takes it back: the toolstack's word again
                await rt.wait_domain(3, State.RUNNING)
                assert rt.domains[3].identity == b"forged"
        for domid, perms in (BAD | {3: ["n0", "w5"]}).items():
            said = [w for w in warnings if f"{node(domid)}:" in w]
            assert len(said) == 1, (domid, warnings)
            assert f"permissions {' '.join(perms)}" in said[0]


async def test_a_stock_host_guest_cannot_choose_its_identity(server: Server) -> None:
    async with actors.connect(server.socket_path) as xs:
        await create_domain(xs, 5, "aaaa")
        await create_domain(xs, 6, "bbbb")
        await xs.set_perms("/local/domain/6/vm", ["n0", "w6"])  # a toolstack that left it writable
        with warnings_logged() as warnings, trio.fail_after(30):
            async with (
                actors.open_runtime(xs, lifecycle="domains") as rt,
                server.guest(6) as stream,
                actors.open_xenstore(stream, name="guest6") as guest,
            ):
                await rt.wait_domain(5, State.RUNNING)
                await rt.wait_domain(6, State.RUNNING)
                assert rt.domains[5].identity == b"/vm/aaaa"
                assert rt.domains[6].identity == b""
                await guest.write("/local/domain/6/vm", "/vm/aaaa")  # posing as domain 5
                await create_domain(xs, 7, "cccc")
                await rt.wait_domain(7, State.RUNNING)
                assert rt.domains[6].identity == b""
        assert sum("/local/domain/6/vm" in w and "w6" in w for w in warnings) == 1, warnings
