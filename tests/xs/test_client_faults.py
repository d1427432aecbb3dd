"""A client that defends itself: a scripted misbehaving daemon on a real unix socket, every case ending within
a bound (trio's autojump clock where time matters): never a hang, never a wrong value, always a typed error."""

from __future__ import annotations

import re
import struct

import pytest
import trio

import actors
from actors.xs.errors import (
    ConnectionLost,
    OperationFailed,
    ProtocolError,
    RequestTimeout,
    TransactionConflict,
    XenStoreError,
)
from actors.xs.wire import Op, encode
from harness.scripted import Peer, scripted


async def lost_cause(call: object) -> BaseException | None:
    """Await ``call``; it must fail with ConnectionLost: its cause."""
    with pytest.raises(ConnectionLost) as info:
        await call  # type: ignore[misc]
    return info.value.__cause__


async def test_request_timeout_keeps_the_connection(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        silent = await peer.receive()  # never answered in time
        answered = await peer.receive()
        await peer.reply(answered, b"fine")
        await trio.sleep(60)
        await peer.reply(silent, b"late")  # discarded: its caller is gone
        await peer.answer_everything(b"after")

    async with scripted(script) as path, actors.connect(path, request_timeout=10) as xs:
        assert xs.request_timeout == 10
        with pytest.raises(RequestTimeout, match=r"READ on '/silent': no reply within 10 s"):
            await xs.read("/silent")
        assert await xs.read("/answered") == b"fine"
        xs.request_timeout = None  # settable: now it waits as long as it takes
        await trio.sleep(100)
        assert await xs.read("/x") == b"after"
        assert not xs.is_lost


async def test_silence_then_timeout_on_every_caller(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        xs.request_timeout = 1.5
        failures: list[BaseException] = []

        async def call(path: str) -> None:
            try:
                await xs.read(path)
            except XenStoreError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(call, f"/p{i}")
        assert len(failures) == 5 and all(isinstance(f, RequestTimeout) for f in failures)


@pytest.mark.parametrize(
    ("misbehaviour", "cause"),
    [
        ("wrong op", "a WRITE reply .* answers a READ request"),
        ("unknown req_id", "which no request has"),
        ("req_id 0", "req_id 0 that is not a watch event"),
        ("malformed event", "malformed watch event"),
        ("oversized frame", "payload bytes"),
    ],
)
async def test_broken_replies_end_the_connection_never_a_wrong_value(misbehaviour: str, cause: str) -> None:
    async def script(peer: Peer) -> None:
        first = await peer.receive()
        second = await peer.receive()
        if misbehaviour == "wrong op":
            await peer.reply(first, b"OK\0", op=Op.WRITE)
        elif misbehaviour == "unknown req_id":
            await peer.reply(first, b"value", req_id=first.req_id + 1000)
        elif misbehaviour == "req_id 0":
            await peer.reply(first, b"value", req_id=0)
        elif misbehaviour == "malformed event":
            await peer.stream.send_all(encode(Op.WATCH_EVENT, b"no-token"))
        else:
            await peer.stream.send_all(struct.pack("=IIII", Op.READ, first.req_id, 0, 2 << 20))
        await peer.reply(second, b"never seen")
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        causes: list[BaseException | None] = []

        async def call(path: str) -> None:
            causes.append(await lost_cause(xs.read(path)))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "/first")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(call, "/second")
        # Every pending caller got ConnectionLost, caused by the ProtocolError that ended the connection.
        assert len(causes) == 2
        assert all(isinstance(c, ProtocolError) for c in causes)
        assert str(causes[0]) == str(causes[1])
        assert re.search(cause, str(causes[0]))
        assert xs.is_lost
        assert isinstance(await lost_cause(xs.read("/later")), ProtocolError)


async def test_half_a_frame_then_close_is_a_lost_connection() -> None:
    async def script(peer: Peer) -> None:
        request = await peer.receive()
        frame = encode(Op.READ, b"value", request.req_id)
        await peer.stream.send_all(frame[:10])

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(5):
            await lost_cause(xs.read("/a"))


async def test_half_a_frame_then_silence_times_out(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        request = await peer.receive()
        await peer.stream.send_all(encode(Op.READ, b"value", request.req_id)[:20])
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path, request_timeout=3) as xs:
        with pytest.raises(RequestTimeout):
            await xs.read("/a")


@pytest.mark.parametrize("tx_id", [b"abc\0", b"\0", b"0\0", b"-1\0", b"99999999999\0", b"1.5\0"])
async def test_bad_transaction_id_is_a_typed_error(tx_id: bytes) -> None:
    async def script(peer: Peer) -> None:
        start = await peer.receive()
        await peer.reply(start, tx_id)
        await peer.answer_everything()

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(5), pytest.raises(ProtocolError, match="transaction id"):
            async with xs.transaction():
                pass
        assert await xs.read("/still-usable") == b"OK\0"


async def test_directory_part_that_never_ends_is_bounded() -> None:
    async def script(peer: Peer) -> None:
        while True:
            request = await peer.receive()
            if request.op == Op.DIRECTORY:
                await peer.error(request, "E2BIG")
            else:  # a chunk of names, never the last one
                await peer.reply(request, b"7\0" + b"name-that-repeats\0" * 200)

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(10), pytest.raises(ProtocolError, match="listing of '/big' exceeds"):
            await xs.ls("/big")
        assert not xs.is_lost


async def test_directory_part_whose_generation_always_changes_gives_up() -> None:
    async def script(peer: Peer) -> None:
        generation = 0
        while True:
            request = await peer.receive()
            if request.op == Op.DIRECTORY:
                await peer.error(request, "E2BIG")
            else:
                generation += 1
                await peer.reply(request, f"{generation}\0".encode() + b"name\0" * 100)

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(10), pytest.raises(TransactionConflict):
            await xs.ls("/busy")


@pytest.mark.parametrize(
    ("op", "reply", "call"),
    [
        (Op.IS_DOMAIN_INTRODUCED, b"maybe\0", lambda xs: xs.is_domain_introduced(3)),
        (Op.GET_FEATURE, b"lots\0", lambda xs: xs.features()),
        (Op.GET_QUOTA, b"-5\0", lambda xs: xs.quota("nodes")),
    ],
)
async def test_malformed_payloads_are_typed_errors(op: Op, reply: bytes, call: object) -> None:
    async def script(peer: Peer) -> None:
        while True:
            request = await peer.receive()
            if request.op == op:
                await peer.reply(request, reply)
            elif request.op == Op.GET_FEATURE:  # the capability probe: a 4.22 daemon
                await peer.reply(request, b"14\0")
            else:
                await peer.reply(request, b"OK\0")

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(5), pytest.raises(ProtocolError):
            await call(xs)  # type: ignore[operator]


async def test_unknown_error_name_is_a_typed_error() -> None:
    async def script(peer: Peer) -> None:
        request = await peer.receive()
        await peer.reply(request, b"\xffgarbage", op=Op.ERROR)
        await peer.answer_everything()

    async with scripted(script) as path, actors.connect(path) as xs:
        with trio.fail_after(5), pytest.raises(OperationFailed):
            await xs.read("/a")
        assert await xs.read("/b") == b"OK\0"


async def test_watch_reply_of_another_op_does_not_register(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        watch = await peer.receive()
        await peer.reply(watch, b"OK\0", op=Op.UNWATCH)
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path) as xs:
        assert isinstance(await lost_cause(xs.add_watch("/w", "tok", lambda e: None)), ProtocolError)
        assert xs._sinks == {}


async def test_token_in_use_sends_nothing() -> None:
    async def script(peer: Peer) -> None:
        watch = await peer.receive()
        await peer.reply(watch, b"OK\0")
        await peer.answer_everything()

    async with scripted(script) as path, actors.connect(path) as xs:
        await xs.add_watch("/w", "tok", lambda e: None)
        with pytest.raises(actors.AlreadyExists) as info:
            await xs.add_watch("/other", "tok", lambda e: None)
        assert type(info.value).__name__ == "TokenInUse"
        assert info.value.path == "/other"
        assert await xs.read("/next") == b"OK\0"  # the duplicate WATCH never reached the daemon


async def test_oversized_watch_is_refused_before_anything_is_registered() -> None:
    # A too-long path and token are refused before anything is registered or sent.
    async def script(peer: Peer) -> None:
        await peer.answer_everything()

    async with scripted(script) as path, actors.connect(path) as xs:
        with pytest.raises(actors.PayloadTooLarge, match="payload limit"):
            await xs.add_watch("/" + "a" * 3000, "t" * 2000, lambda e: None)
        assert xs._sinks == {}


async def test_pipelined_requests_left_unanswered_are_abandoned(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path, request_timeout=1) as xs:
        pipe = xs.pipeline()
        answers = [pipe.request(Op.READ, f"/{name}\0".encode(), f"/{name}") for name in "abc"]
        await pipe.send()
        for answer in answers:
            with pytest.raises(RequestTimeout):
                answer.result()
        assert not xs._link.protocol._pending  # all abandoned: their late replies are discarded
        for name in "abc":
            pipe.request(Op.READ, f"/{name}\0".encode(), f"/{name}")
        with trio.move_on_after(0.5) as scope:
            await pipe.send()
        assert scope.cancelled_caught
        assert not xs._link.protocol._pending


async def test_a_shorter_timeout_set_later_is_kept_on_time(autojump_clock: trio.abc.Clock) -> None:
    """One task keeps every request's deadline: a request made after the timeout was shortened times out at
    its own deadline, not at the earlier request's later one, and that one still waits."""

    async def script(peer: Peer) -> None:
        await trio.sleep_forever()

    async with scripted(script) as path, actors.connect(path, request_timeout=100) as xs:
        outcome: list[float] = []

        async def patient() -> None:
            with pytest.raises(RequestTimeout, match="within 100 s"):
                await xs.read("/patient")
            outcome.append(trio.current_time() - start)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient)
            await trio.sleep(1)
            xs.request_timeout = 2
            with pytest.raises(RequestTimeout, match=r"READ on '/hasty': no reply within 2 s"):
                await xs.read("/hasty")
            assert trio.current_time() - start == pytest.approx(3)
            assert not outcome  # the first request still waits for its own deadline
        assert outcome == [pytest.approx(100)]
        assert not xs.is_lost
