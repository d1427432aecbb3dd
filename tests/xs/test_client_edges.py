"""Client edge cases that need a peer misbehaving on purpose: a scripted daemon on a real unix socket.

The everyday operations run against the embedded xenstored (test_client.py); here the peer answers out of
order, sends events before replies, breaks the framing, or goes away mid-call.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile

import pytest
import trio

import actors
from actors.xs.transport import connect_unix
from actors.xs.wire import Op, encode
from harness.scripted import Peer, scripted


async def test_replies_out_of_order_are_matched_by_req_id() -> None:
    async def script(peer: Peer) -> None:
        first = await peer.receive()
        second = await peer.receive()
        await peer.reply(second, b"two")
        await peer.reply(first, b"one")
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        results: dict[str, bytes] = {}

        async def read(name: str) -> None:
            results[name] = await xs.read(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "/one")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read, "/two")
        assert results == {"/one": b"one", "/two": b"two"}


async def test_watch_event_before_the_watch_reply() -> None:
    async def script(peer: Peer) -> None:
        watch = await peer.receive()
        assert watch.op == Op.WATCH
        await peer.event("/a", "tok")  # the initial event, ahead of the reply
        await peer.reply(watch, b"OK\0")
        await peer.answer_everything()

    async with scripted(script) as path, actors.connect(path) as xs, xs.watch("/a", "tok") as events:
        with trio.fail_after(5):
            event = await events.receive()
        assert (event.path, event.token) == ("/a", "tok")


async def test_cancelled_call_leaves_the_connection_usable(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        slow = await peer.receive()
        fast = await peer.receive()
        await peer.reply(fast, b"fast")
        await trio.sleep(1)
        await peer.reply(slow, b"late")  # discarded: its caller is gone
        again = await peer.receive()
        await peer.reply(again, b"again")
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.move_on_after(0.2) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(xs.read, "/slow")
                await trio.testing.wait_all_tasks_blocked()
                assert await xs.read("/fast") == b"fast"
                await trio.sleep_forever()
        assert scope.cancelled_caught
        await trio.sleep(1.5)
        assert await xs.read("/again") == b"again"


async def test_protocol_error_is_a_lost_connection() -> None:
    async def script(peer: Peer) -> None:
        await peer.receive()
        await peer.stream.send_all(struct.pack("=IIII", Op.READ, 1, 0, 2 << 20))  # past the 1 MiB bound
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(5), pytest.raises(actors.ConnectionLost, match="payload bytes"):
            await xs.read("/a")
        with pytest.raises(actors.ConnectionLost):
            await xs.write("/a", "b")
        assert xs.is_lost


async def test_server_gone_mid_call_and_mid_watch() -> None:
    async def script(peer: Peer) -> None:
        watch = await peer.receive()
        await peer.event("/w", watch.payload.split(b"\0")[1].decode())
        await peer.reply(watch, b"OK\0")
        await peer.receive()  # the read, never answered
        await peer.stream.aclose()

    async with scripted(script) as path, actors.connect(path) as xs, xs.watch("/w") as events:
        assert (await events.receive()).path == "/w"
        with trio.fail_after(5):
            with pytest.raises(actors.ConnectionLost):
                await xs.read("/never")
            with pytest.raises(actors.ConnectionLost):
                await events.receive()
            with pytest.raises(actors.ConnectionLost):
                await xs.ls("/")
            assert isinstance(await xs.wait_lost(), actors.ConnectionLost)


async def test_missing_socket_names_the_path() -> None:
    with pytest.raises(actors.XenStoreUnavailable, match="/tmp/no-such-dir/socket"):
        async with actors.connect("/tmp/no-such-dir/socket"):
            pass


async def test_refused_connection_names_the_path(tmp_path: object) -> None:
    folder = tempfile.mkdtemp(prefix="mtw", dir="/tmp")
    path = os.path.join(folder, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # a socket file nobody listens on
    try:
        with pytest.raises(actors.XenStoreUnavailable, match="refused"):
            async with actors.connect(path):
                pass
    finally:
        os.unlink(path)
        os.rmdir(folder)


async def test_environment_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.xs.transport import socket_path

    assert socket_path("/explicit", {"XENSTORED_PATH": "/env"}) == "/explicit"
    assert socket_path(None, {"XENSTORED_PATH": "/env", "XENSTORED_RUNDIR": "/rd"}) == "/env"
    assert socket_path(None, {"XENSTORED_RUNDIR": "/rd"}) == "/rd/socket"
    assert socket_path(None, {}) in ("/run/xenstored/socket", "/var/run/xenstored/socket")


async def test_invalid_input_sends_nothing() -> None:
    async def script(peer: Peer) -> None:
        request = await peer.receive()
        await peer.reply(request, b"fine")
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        with pytest.raises(actors.InvalidPath):
            await xs.read("/a//b")
        with pytest.raises(actors.InvalidPermission):
            await xs.set_perms("/a", ["q1"])
        with pytest.raises(actors.InvalidDomid):
            await xs.get_domain_path(-1)
        with pytest.raises(actors.PayloadTooLarge):
            await xs.write("/a", b"x" * 5000)
        # Nothing of the above reached the peer: the first frame it sees is this one.
        assert await xs.read("/ok") == b"fine"


async def test_xenbus_watch_ack_with_req_id_zero() -> None:
    # Old xenbus kernels acknowledge WATCH with req_id 0; taken only from the xenbus device (one frame per
    # write, as the device wants, is what the peer sees).
    async def script(peer: Peer) -> None:
        watch = await peer.receive()
        await peer.stream.send_all(encode(Op.WATCH, b"OK\0", 0, 0))
        token = watch.payload.split(b"\0")[1].decode()
        await peer.event("/x", token)
        await peer.answer_everything()

    async with scripted(script) as path:
        stream = await connect_unix(path)
        async with actors.open_xenstore(stream, xenbus=True) as xs:
            with trio.fail_after(5):
                async with xs.watch("/x") as events:
                    assert (await events.receive()).path == "/x"
