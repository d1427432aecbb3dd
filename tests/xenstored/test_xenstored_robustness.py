"""Bad input: a broken frame drops only its own connection, bad requests get error replies, and random
or mutated frames never crash or hang the server (hypothesis)."""

from __future__ import annotations

import os
import struct

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.xenstored.testing import RawClient, XsError, serving
from actors.xs.quota import parse_domain_use
from actors.xs.wire import HEADER, Op, join


async def test_oversized_frame_drops_only_that_connection() -> None:
    async with serving() as (_, path):
        async with await RawClient.connect(path) as bad, await RawClient.connect(path) as good:
            await good.write("/ok", "1")
            await bad.send_raw(HEADER.pack(Op.READ, 1, 0, 4097) + b"x" * 100)
            with trio.fail_after(5), pytest.raises(EOFError):
                await bad.recv_frame()
            assert await good.read("/ok") == b"1"
        async with await RawClient.connect(path) as again:  # the listener goes on
            assert await again.read("/ok") == b"1"


async def test_payload_of_exactly_4096_bytes_is_fine() -> None:
    async with serving() as (_, path), await RawClient.connect(path) as c:
        value = b"v" * (4096 - len(b"/max\0"))
        await c.write("/max", value)
        assert await c.read("/max") == value


async def test_frame_split_across_writes() -> None:
    async with serving() as (_, path), await RawClient.connect(path) as c:
        data = RawClient.frame(Op.WRITE, join("/split", "abc", terminate=False), req_id=5)
        for byte in data:
            await c.send_raw(bytes([byte]))
        frame = await c.recv_frame()
        assert (frame.req_id, frame.payload) == (5, b"OK\0")


async def test_garbage_gets_error_replies() -> None:
    async with serving() as (_, path), await RawClient.connect(path) as c:
        for op in (Op.READ, Op.WRITE, Op.DIRECTORY, Op.GET_PERMS, Op.SET_PERMS, Op.WATCH, Op.INTRODUCE):
            with pytest.raises(XsError) as info:
                await c.call(op, b"\xff\xfe\x00\x01garbage")
            assert info.value.name == "EINVAL", op
        assert await c.read("/") == b""


async def test_client_vanishing_mid_frame_and_mid_transaction() -> None:
    async with serving() as (server, path):
        c = await RawClient.connect(path)
        await c.watch("/", "t")
        tx = await c.start()
        await c.write("/in-tx", "1", tx)
        await c.send_raw(HEADER.pack(Op.READ, 1, 0, 100) + b"/partial")
        await c.aclose()
        with trio.fail_after(5):
            while server.connections:  # noqa: ASYNC110 (polls the server's state)
                await trio.sleep(0.01)
        async with await RawClient.connect(path) as d:
            await d.write("/after", "1")
            assert await d.ls("/") == [b"tool", b"after"]


_OPS = st.one_of(st.sampled_from([int(op) for op in Op] + [20, 23, 255]), st.integers(0, 2**32 - 1))
_PATHS = st.sampled_from(
    [b"/", b"/a", b"/a/b", b"a", b"", b"@releaseDomain", b"/local/domain/1", b"//", b"/a/"]
)
_PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.lists(st.one_of(_PATHS, st.binary(max_size=8)), max_size=4).map(
        lambda parts: b"\0".join(parts) + b"\0"
    ),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:  # raw noise
        return draw(st.binary(max_size=40))
    op = draw(_OPS)
    payload = draw(_PAYLOADS)
    tx = draw(st.sampled_from([0, 0, 1, 2, 2**32 - 1]))
    length = len(payload)
    if kind == 1:  # a lying length (never past the payload limit: that drops the connection, tested above)
        length = draw(st.integers(0, 4096))
    data = struct.pack("=IIII", op, draw(st.integers(0, 2**32 - 1)), tx, length) + payload
    if kind == 2 and data:  # a flipped byte
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    return data


async def _fuzz(chunks: list[bytes], as_guest: bool) -> None:
    with trio.fail_after(10):
        async with serving() as (server, path), await RawClient.connect(path) as observer:
            await observer.write("/a/b", "v")
            await observer.set_perms("/a", "n0", "b1")
            async with server.guest(1) as guest_stream:
                stream = guest_stream if as_guest else (await RawClient.connect(path)).stream
                fuzzer = RawClient(stream)
                for chunk in chunks:
                    try:
                        await fuzzer.send_raw(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    assert await observer.call(Op.GET_DOMAIN_PATH, b"1\0") == b"/local/domain/1\0"
                await trio.lowlevel.checkpoint()
                await observer.write("/after", "ok")
                assert await observer.read("/after") == b"ok"
                await fuzzer.aclose()
            assert server.core.internal_errors == 0


@settings(
    max_examples=int(os.environ.get("XENSTORED_FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(chunks=st.lists(frames(), min_size=1, max_size=12), as_guest=st.booleans())
def test_fuzzed_frames_never_crash_or_hang(chunks: list[bytes], as_guest: bool) -> None:
    trio.run(_fuzz, chunks, as_guest)


_TREE_PATHS = ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "a", "a/x", "/local/domain/1/z", "/local/domain/1"]
_REQUESTS = st.one_of(
    st.tuples(st.just(Op.WRITE), st.sampled_from(_TREE_PATHS), st.sampled_from(["", "v", "w" * 50])).map(
        lambda t: (t[0], join(t[1], t[2], terminate=False))
    ),
    st.tuples(st.sampled_from([Op.MKDIR, Op.RM, Op.READ, Op.DIRECTORY]), st.sampled_from(_TREE_PATHS)).map(
        lambda t: (t[0], join(t[1]))
    ),
    st.tuples(
        st.sampled_from(_TREE_PATHS), st.sampled_from([["n0"], ["n1"], ["b0", "r1"], ["n1", "b0"]])
    ).map(lambda t: (Op.SET_PERMS, join(t[0], *t[1]))),
    st.tuples(st.sampled_from([*_TREE_PATHS, "/"]), st.sampled_from(["t1", "t2"])).map(
        lambda t: (Op.WATCH, join(t[0], t[1]))
    ),
    st.just((Op.TRANSACTION_START, b"\0")),
    st.sampled_from([(Op.TRANSACTION_END, b"T\0"), (Op.TRANSACTION_END, b"F\0")]),
    st.just((Op.RESET_WATCHES, b"")),
)


def check_store(store: object) -> None:
    """Every node is listed by its parent, every listed child exists, owner counts add up."""
    from actors.xenstored.store import Store, child_path, parent_path

    assert isinstance(store, Store)
    owned: dict[int, int] = {}
    for path, node in store.nodes.items():
        owned[node.owner] = owned.get(node.owner, 0) + 1
        if path != b"/":
            parent = store.get(parent_path(path))
            assert parent is not None, path
            assert path.rsplit(b"/", 1)[1] in parent.children, path
        for name in node.children:
            assert child_path(path, name) in store, (path, name)
        assert node.childlen == sum(len(n) + 1 for n in node.children)
        assert node.listing() == b"".join(n + b"\0" for n in node.children)
    assert owned == store.owned


async def _run_requests(requests: list[tuple[int, int, bytes, int]]) -> None:
    with trio.fail_after(10):
        async with serving() as (server, path), await RawClient.connect(path) as dom0:
            async with server.guest(1) as guest_stream:
                clients = [dom0, RawClient(guest_stream)]
                for who, op, payload, tx in requests:
                    await clients[who].request(op, payload, tx)
                    check_store(server.store)
                for client in clients:  # everything answered, nothing hung
                    assert await client.call(Op.GET_DOMAIN_PATH, b"1\0") == b"/local/domain/1\0"
            assert server.core.internal_errors == 0
            check_store(server.store)


@settings(max_examples=int(os.environ.get("XENSTORED_FUZZ_EXAMPLES", "80")), deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.integers(0, 1), _REQUESTS, st.sampled_from([0, 0, 1, 2])).map(
            lambda t: (t[0], t[1][0], t[1][1], t[2])
        ),
        max_size=30,
    )
)
def test_random_request_sequences_keep_the_tree_consistent(
    requests: list[tuple[int, int, bytes, int]],
) -> None:
    trio.run(_run_requests, requests)


async def test_handle_stream_serves_any_trio_stream() -> None:
    from trio.testing import memory_stream_pair

    from actors.xenstored import XenStored

    server = XenStored()
    ours, theirs = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, ours, 0)
        client = RawClient(theirs)
        with trio.fail_after(5):
            await client.write("/m", "1")
            await client.watch("/m", "t")
            assert await client.read("/m") == b"1"
            assert await client.event() == (b"/m", b"t")
            await client.aclose()
    assert not server.connections


async def test_a_guest_breaking_the_framing_loses_its_connection_only() -> None:
    async with serving() as (server, path), await RawClient.connect(path) as dom0:
        await dom0.mkdir("/local/domain/3")
        await dom0.set_perms("/local/domain/3", "n3")
        async with server.guest(3) as stream:
            g = RawClient(stream)
            await g.watch("w", "t")
            await g.send_raw(HEADER.pack(Op.READ, 1, 0, 5000))
            with trio.fail_after(5), pytest.raises(EOFError):
                while True:
                    await g.recv_frame()
        assert server.is_introduced(3)
        report = await dom0.call(Op.DEBUG, b"quota\x003\0")
        assert parse_domain_use(report, 3)["watches"] == 0
        async with server.guest(3) as stream:  # a new connection works
            assert await RawClient(stream).call(Op.GET_DOMAIN_PATH, b"3\0") == b"/local/domain/3\0"
