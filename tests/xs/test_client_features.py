"""What the daemon can do, probed once per connection, and the Xen 4.21/4.22 protocol: against scripted daemons
answering as C xenstored 4.22, C 4.17 and oxenstored 4.17 do, and against the embedded and Debian's C 4.17."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

import actors
from actors.xs.capabilities import Feature
from actors.xs.errors import Unsupported
from actors.xs.events import WatchEvent
from actors.xs.transport import connect_unix
from actors.xs.wire import DOMID_ANY, Op
from harness.scripted import Peer, answer_as, scripted
from harness.servers import Server, answer

Check = Callable[[actors.XenStore, list[Peer]], Awaitable[None]]


async def against(flavour: str, check: Check, tree: dict[str, bytes] | None = None) -> list[Op]:
    """Run ``check`` against a scripted ``flavour`` daemon; the ops the client sent, in order."""
    peers: list[Peer] = []

    async def script(peer: Peer) -> None:
        peers.append(peer)
        await answer_as(peer, flavour, tree)

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(10):
            await check(xs, peers)
    return [Op(frame.op) for frame in peers[0].received]


async def test_capabilities_of_c422_are_probed_once() -> None:
    async def check(xs: actors.XenStore, peers: list[Peer]) -> None:
        caps = await xs.capabilities()
        assert caps.features == Feature.ERROR | Feature.WATCHDEPTH | Feature.DOMID_ANY
        assert (caps.directory_part, caps.reset_watches, caps.daemon) == (True, True, "cxenstored")
        assert await xs.capabilities() is caps

    sent = await against("c422", check)
    assert sent == [Op.DIRECTORY_PART, Op.GET_FEATURE, Op.DIRECTORY]


async def test_capabilities_of_c417_and_unsupported_ops() -> None:
    async def check(xs: actors.XenStore, peers: list[Peer]) -> None:
        caps = await xs.capabilities()
        assert caps.features == Feature(0)
        assert (caps.directory_part, caps.reset_watches, caps.daemon) == (True, True, "cxenstored")
        for call in (
            xs.features(),
            xs.set_features(5, 4),
            xs.quota(),
            xs.quota("nodes"),
            xs.set_quota("nodes", 9),
        ):
            with pytest.raises(Unsupported) as info:
                await call
            assert info.value.errno_name == "ENOSYS"
        with pytest.raises(Unsupported, match="WATCHDEPTH"):
            await xs.add_watch("@introduceDomain", "t", lambda e: None, depth=1)
        with pytest.raises(Unsupported, match="DOMID_ANY"):
            await xs.set_perms("/a", ["n0", f"r{DOMID_ANY}"])
        await xs.reset_watches()

    sent = await against("c417", check)
    # The depth watch and the DOMID_ANY permissions were never sent.
    assert Op.WATCH not in sent and Op.SET_PERMS not in sent
    assert sent[-1] == Op.RESET_WATCHES


async def test_oxenstored_is_known_and_never_sent_reset_watches() -> None:
    children = {f"/big/child-{i:05d}": b"" for i in range(1500)}

    async def check(xs: actors.XenStore, peers: list[Peer]) -> None:
        caps = await xs.capabilities()
        assert caps == type(caps)(Feature(0), False, False, "oxenstored")
        with pytest.raises(Unsupported, match="oxenstored never answers it; nothing was sent"):
            await xs.reset_watches()
        # One DIRECTORY reply of 18,000 bytes: oxenstored's way of listing on a socket.
        names = await xs.ls("/big")
        assert len(names) == 1500 and names[0] == "child-00000"

    sent = await against("oxenstored", check, children)
    assert Op.RESET_WATCHES not in sent


async def test_c422_features_and_quotas() -> None:
    async def check(xs: actors.XenStore, peers: list[Peer]) -> None:
        assert await xs.features() == Feature(14)
        assert await xs.features(domid=5) == Feature(14)
        await xs.set_features(5, Feature.WATCHDEPTH)
        names = await xs.quota()
        assert "nodes" in names and "transaction-nodes" in names
        assert await xs.quota("nodes") == 1000
        await xs.set_quota("nodes", 2000)
        assert await xs.quota("nodes") == 2000
        assert await xs.quota("watches", domid=3) == 1000
        await xs.set_quota("watches", 64, domid=3)
        with pytest.raises(actors.InvalidArgument):
            await xs.quota("no-such-quota")
        await xs.set_perms("/a", ["n0", f"r{DOMID_ANY}"])

    await against("c422", check)


async def test_c422_depth_watch_on_special_paths_carries_the_domid() -> None:
    async def check(xs: actors.XenStore, peers: list[Peer]) -> None:
        async with xs.watch("@introduceDomain", depth=1) as events:
            first = await events.receive()
            assert (first.path, first.initial, first.domid) == ("@introduceDomain", True, None)
            watch = next(f for f in peers[0].received if f.op == Op.WATCH)
            assert watch.payload.endswith(b"\x001\0")  # path, token, depth
            await peers[0].event("@introduceDomain/7", first.token)
            event = await events.receive()
            assert (event.path, event.initial, event.domid) == ("@introduceDomain/7", False, 7)

    await against("c422", check)


async def test_depth_over_xenbus_is_refused() -> None:
    async def script(peer: Peer) -> None:
        await answer_as(peer, "c422")

    async with scripted(script) as path:
        stream = await connect_unix(path)
        async with actors.open_xenstore(stream, xenbus=True) as xs:
            with pytest.raises(Unsupported, match="xenbus device drops a watch's depth"):
                await xs.add_watch("/a", "t", lambda e: None, depth=1)
            for bad in (-1, True, 1.5):
                with pytest.raises(ValueError, match="depth"):
                    await xs.add_watch("/a", "t", lambda e: None, depth=bad)  # type: ignore[arg-type]


async def test_initial_event_and_later_ones(server: Server) -> None:
    async with actors.connect(server.socket_path, request_timeout=10) as xs:
        got: list[WatchEvent] = []
        await xs.add_watch("/vm", "t", got.append)
        await xs.write("/vm/x", "1")
        await xs.write("/vm", "2")
        with trio.fail_after(10):
            while len(got) < 3:  # noqa: ASYNC110 - events arrive through the sink
                await trio.sleep(0.01)
        assert [(e.path, e.initial, e.domid) for e in got] == [
            ("/vm", True, None),
            ("/vm/x", False, None),
            ("/vm", False, None),
        ]


async def test_capabilities_of_the_real_daemons(server: Server) -> None:
    # The embedded xenstored speaks C 4.22; Debian's C xenstored is 4.17 (no 4.21+ ops); oxenstored 4.17 has
    # no DIRECTORY_PART either and never answers RESET_WATCHES.
    expected = answer(
        server,
        (Feature(0), True, True, "cxenstored", False),
        embedded=(Feature.ERROR | Feature.WATCHDEPTH | Feature.DOMID_ANY, True, True, "cxenstored", True),
        oxenstored=(Feature(0), False, False, "oxenstored", False),
    )
    async with actors.connect(server.socket_path) as xs:
        with trio.fail_after(10):  # the probe's three requests go out in one write: every answer is awaited
            caps = await xs.capabilities()
        assert (
            caps.features,
            caps.directory_part,
            caps.reset_watches,
            caps.daemon,
            caps.feature_ops,
        ) == expected
        if caps.feature_ops:
            assert await xs.features() == caps.features
            assert await xs.quota("nodes") > 0
        else:
            with pytest.raises(Unsupported):
                await xs.features()
            with pytest.raises(Unsupported):
                await xs.quota("nodes")
            with pytest.raises(Unsupported, match="WATCHDEPTH"):
                await xs.add_watch("@releaseDomain", "t", lambda e: None, depth=1)
        async with xs.watch("/local") as events:
            assert (await events.receive()).initial
            if caps.reset_watches:
                await xs.reset_watches()
            else:
                with pytest.raises(Unsupported):
                    await xs.reset_watches()


async def test_token_in_use_on_a_real_daemon(server: Server) -> None:
    async with actors.connect(server.socket_path, request_timeout=10) as xs:
        await xs.add_watch("/vm", "t", lambda e: None)
        with pytest.raises(actors.AlreadyExists, match="EEXIST"):
            await xs.add_watch("/other", "t", lambda e: None)
        await xs.remove_watch("/vm", "t")
        await xs.add_watch("/other", "t", lambda e: None)  # free again
