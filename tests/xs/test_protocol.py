"""The sans-IO client protocol, by feeding it bytes: every chunking, every misbehaviour of a daemon."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.xs import errors
from actors.xs.events import WatchEvent
from actors.xs.protocol import ClientProtocol, DirectoryParts
from actors.xs.wire import PAYLOAD_MAX, Frame, FrameDecoder, Op, encode, join

ANSWERABLE = [Op.READ, Op.WRITE, Op.DIRECTORY, Op.GET_PERMS, Op.MKDIR, Op.RM, Op.TRANSACTION_START]


def sent_frames(protocol: ClientProtocol) -> list[Frame]:
    return FrameDecoder().feed(b"".join(protocol.data_to_send()))


def feed_in_chunks(protocol: ClientProtocol, stream: bytes, cuts: list[int], now: float = 0.0) -> list[int]:
    answered: list[int] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        answered += [r.req_id for r in protocol.receive_data(stream[start:cut], now)]
        start = cut
    return answered


@given(
    st.lists(
        st.tuples(st.sampled_from(ANSWERABLE), st.binary(max_size=64), st.booleans()), min_size=1, max_size=12
    ),
    st.data(),
)
def test_replies_and_events_in_any_order_and_chunking(
    requests: list[tuple[Op, bytes, bool]], data: st.DataObject
) -> None:
    protocol = ClientProtocol()
    events: list[WatchEvent] = []
    protocol.watch(b"/w", "tok", events.append)
    watch = sent_frames(protocol)[0]
    sent = [protocol.request(op, b"x\0") for op, _, _ in requests]
    on_wire = sent_frames(protocol)
    assert [f.req_id for f in on_wire] == [r.req_id for r in sent]
    assert len({r.req_id for r in sent} | {watch.req_id}) == len(sent) + 1
    # Answers in a shuffled order, each a reply or an ERROR, with watch events between them.
    order = data.draw(st.permutations(range(len(sent))))
    stream = encode(Op.WATCH, b"OK\0", watch.req_id)
    for i in order:
        op, payload, error = requests[i]
        stream += (
            encode(Op.ERROR, b"EACCES\0", sent[i].req_id) if error else encode(op, payload, sent[i].req_id)
        )
        stream += encode(Op.WATCH_EVENT, join(f"/w/{i}", "tok"))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    answered = feed_in_chunks(protocol, stream, cuts, now=7.0)
    assert answered == [watch.req_id] + [sent[i].req_id for i in order]
    for i, request in enumerate(sent):
        op, payload, error = requests[i]
        assert request.reply is not None
        assert request.reply == (
            Frame(Op.ERROR, request.req_id, 0, b"EACCES\0")
            if error
            else Frame(op, request.req_id, 0, payload)
        )
    assert [e.path for e in events] == [f"/w/{i}" for i in order]
    assert all(e.token == "tok" and e.received_at == 7.0 and not e.initial for e in events)
    assert protocol.pending == 0


def test_request_ids_wrap_at_32_bits_skipping_zero_and_ids_in_use() -> None:
    protocol = ClientProtocol(first_req_id=2**32 - 3)
    held = protocol.request(Op.READ, b"/a\0")
    assert held.req_id == 2**32 - 3
    ids = [protocol.request(Op.READ, b"/a\0").req_id for _ in range(4)]
    assert ids == [2**32 - 2, 2**32 - 1, 1, 2]
    # Answer everything but the first; the counter comes round again and skips the one still pending.
    protocol.receive_data(b"".join(encode(Op.READ, b"v", i) for i in ids))
    protocol._next_id = 2**32 - 3
    assert protocol.request(Op.READ, b"/a\0").req_id == 2**32 - 2
    # An abandoned request's id stays in use until its late reply came.
    abandoned = protocol.request(Op.READ, b"/a\0")
    protocol.abandon(abandoned)
    protocol._next_id = abandoned.req_id
    assert protocol.request(Op.READ, b"/a\0").req_id != abandoned.req_id


def test_late_reply_of_an_abandoned_request_is_discarded() -> None:
    protocol = ClientProtocol()
    request = protocol.request(Op.READ, b"/a\0")
    protocol.abandon(request)
    assert protocol.pending == 1  # still outstanding on the wire
    assert protocol.receive_data(encode(Op.READ, b"late", request.req_id)) == []
    assert request.reply is None
    assert protocol.pending == 0
    # Once consumed, the same id is unknown: a second reply for it is a protocol error.
    with pytest.raises(errors.ProtocolError, match="no request"):
        protocol.receive_data(encode(Op.READ, b"again", request.req_id))


@pytest.mark.parametrize("reply_op", [Op.WRITE, Op.WATCH, Op.DIRECTORY, Op.TRANSACTION_END])
def test_reply_of_another_op_is_a_protocol_error(reply_op: Op) -> None:
    protocol = ClientProtocol()
    request = protocol.request(Op.READ, b"/a\0")
    with pytest.raises(errors.ProtocolError, match=f"a {reply_op.name} reply .* answers a READ request"):
        protocol.receive_data(encode(reply_op, b"OK\0", request.req_id))
    assert request.reply is None  # never a wrong value
    assert protocol.drain() == [request]  # its caller is woken with the others when the connection ends
    with pytest.raises(errors.ProtocolError):  # the connection is unusable
        protocol.request(Op.READ, b"/b\0")
    with pytest.raises(errors.ProtocolError):
        protocol.receive_data(b"")


def test_abandoned_request_is_checked_too() -> None:
    protocol = ClientProtocol()
    request = protocol.request(Op.READ, b"/a\0")
    protocol.abandon(request)
    with pytest.raises(errors.ProtocolError, match="answers a READ request"):
        protocol.receive_data(encode(Op.WRITE, b"OK\0", request.req_id))


def test_unknown_req_id_and_req_id_zero_are_protocol_errors() -> None:
    protocol = ClientProtocol()
    protocol.request(Op.READ, b"/a\0")
    with pytest.raises(errors.ProtocolError, match="req_id 99, which no request has"):
        protocol.receive_data(encode(Op.READ, b"v", 99))
    protocol = ClientProtocol()
    protocol.request(Op.WATCH, join("/a", "t"))
    with pytest.raises(errors.ProtocolError, match="req_id 0 that is not a watch event"):
        protocol.receive_data(encode(Op.WATCH, b"OK\0", 0))


def test_xenbus_watch_ack_with_req_id_zero_goes_to_the_oldest_watch() -> None:
    protocol = ClientProtocol(xenbus=True)
    first = protocol.watch(b"/a", "t1", lambda e: None)
    second = protocol.watch(b"/b", "t2", lambda e: None)
    done = protocol.receive_data(encode(Op.WATCH, b"OK\0", 0))
    assert done == [first] and second.reply is None
    with pytest.raises(errors.ProtocolError, match="req_id 0"):  # only WATCH and UNWATCH acks
        protocol.receive_data(encode(Op.READ, b"v", 0))


def test_error_reply_answers_any_op() -> None:
    protocol = ClientProtocol()
    request = protocol.request(Op.WRITE, b"/a\0v")
    (done,) = protocol.receive_data(encode(Op.ERROR, b"ENOENT\0", request.req_id))
    assert isinstance(done.reply and done.reply.error("/a", "WRITE"), errors.NotFound)


def test_xenbus_writes_one_frame_each_socket_batches() -> None:
    for xenbus, writes in ((True, 3), (False, 1)):
        protocol = ClientProtocol(xenbus=xenbus)
        for _ in range(3):
            protocol.request(Op.READ, b"/a\0")
        out = protocol.data_to_send()
        assert len(out) == writes
        assert len(FrameDecoder().feed(b"".join(out))) == 3
        assert protocol.data_to_send() == []


def test_reply_size_bounds() -> None:
    long = b"n\0" * 9000  # oxenstored's DIRECTORY of a big node, in one reply
    socket = ClientProtocol()
    request = socket.request(Op.DIRECTORY, b"/big\0")
    assert socket.receive_data(encode_long(Op.DIRECTORY, long, request.req_id)) == [request]
    xenbus = ClientProtocol(xenbus=True)
    request = xenbus.request(Op.DIRECTORY, b"/big\0")
    with pytest.raises(errors.ProtocolError, match="max 4096"):
        xenbus.receive_data(encode_long(Op.DIRECTORY, long, request.req_id))
    with pytest.raises(errors.ProtocolError, match=f"max {1 << 20}"):
        ClientProtocol().receive_data(struct.pack("=IIII", Op.DIRECTORY, 1, 0, (1 << 20) + 1))


def encode_long(op: int, payload: bytes, req_id: int) -> bytes:
    return struct.pack("=IIII", op, req_id, 0, len(payload)) + payload


def test_initial_event_is_the_first_for_the_watched_path() -> None:
    protocol = ClientProtocol()
    events: list[WatchEvent] = []
    protocol.watch(b"/w", "tok", events.append)
    stream = b"".join(encode(Op.WATCH_EVENT, join(p, "tok")) for p in ("/w/child", "/w", "/w", "/w/x"))
    protocol.receive_data(stream)
    assert [(e.path, e.initial) for e in events] == [
        ("/w/child", False),
        ("/w", True),
        ("/w", False),
        ("/w/x", False),
    ]


@pytest.mark.parametrize(
    ("path", "domid"),
    [
        ("@introduceDomain/5", 5),
        ("@releaseDomain/32751", 32751),
        ("@releaseDomain/0", 0),
        ("@releaseDomain", None),
        ("@releaseDomain/05", None),
        ("@releaseDomain/x", None),
        ("/local/domain/5", None),
    ],
)
def test_special_events_carry_the_domid(path: str, domid: int | None) -> None:
    protocol = ClientProtocol()
    events: list[WatchEvent] = []
    protocol.watch(b"@releaseDomain", "t", events.append, depth=1)
    protocol.receive_data(encode(Op.WATCH_EVENT, join(path, "t")))
    assert events[0].domid == domid


def test_watch_with_depth_is_the_third_argument() -> None:
    protocol = ClientProtocol()
    protocol.watch(b"@introduceDomain", "t", lambda e: None, depth=1)
    assert sent_frames(protocol)[0].payload == b"@introduceDomain\0t\x001\0"


def test_events_for_unknown_tokens_are_counted_and_malformed_ones_refused() -> None:
    protocol = ClientProtocol()
    events: list[WatchEvent] = []
    protocol.watch(b"/a", "t", events.append)
    protocol.unwatch("t")
    protocol.receive_data(encode(Op.WATCH_EVENT, join("/a", "t")))
    assert events == [] and protocol.unknown_events == 1
    with pytest.raises(errors.ProtocolError, match="malformed watch event"):
        protocol.receive_data(encode(Op.WATCH_EVENT, b"/a-no-token"))


def test_sink_replaced_only_by_its_owner() -> None:
    protocol = ClientProtocol()
    first: list[WatchEvent] = []
    sink = first.append
    protocol.watch(b"/a", "t", sink)
    protocol.unwatch("t", sink=lambda e: None)  # a failed add_watch of someone else: nothing happens
    assert protocol.has_watch("t")
    protocol.unwatch("t", sink=sink)
    assert not protocol.has_watch("t")


# -- DIRECTORY_PART ------------------------------------------------------------------------------------------


def parts_of(names: list[bytes], generation: int = 7, room: int = PAYLOAD_MAX) -> dict[int, bytes]:
    """The replies C xenstored gives, by offset (send_directory_part in xenstored_core.c)."""
    blob = b"".join(n + b"\0" for n in names)
    gen = str(generation).encode() + b"\0"
    replies: dict[int, bytes] = {}
    offset = 0
    while True:
        length = 0
        while offset + length < len(blob):
            size = blob.index(b"\0", offset + length) - (offset + length) + 1
            if len(gen) + length + size >= room:
                break
            length += size
        chunk = blob[offset : offset + length]
        last = offset + length == len(blob)
        replies[offset] = gen + chunk + (b"\0" if last else b"")
        if last:
            return replies
        offset += length


def assemble(parts: DirectoryParts, replies: dict[int, bytes]) -> list[bytes]:
    while True:
        offset = int(parts.next_payload().split(b"\0")[1])
        names = parts.feed(replies[offset])
        if names is not None:
            return names


names_st = st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b), max_size=300)


@given(names_st, st.integers(80, PAYLOAD_MAX))
def test_directory_parts_assemble_the_listing(names: list[bytes], room: int) -> None:
    assert assemble(DirectoryParts(b"/big"), parts_of(names, room=room)) == names


def test_directory_parts_restart_when_the_generation_changes() -> None:
    old = parts_of([b"a" * 50] * 200, generation=1)
    new = parts_of([b"b" * 50] * 200, generation=2)
    parts = DirectoryParts(b"/big")
    assert parts.feed(old[0]) is None
    assert parts.feed(new[int(parts.next_payload().split(b"\0")[1])]) is None  # changed: start over
    assert parts.next_payload() == b"/big\x000\0"
    assert assemble(parts, new) == [b"b" * 50] * 200
    assert parts.restarts == 1


def test_directory_parts_that_keep_changing_give_up() -> None:
    parts = DirectoryParts(b"/big", label="/big", max_restarts=3)
    with pytest.raises(errors.TransactionConflict):
        for generation in range(100):
            parts.feed(parts_of([b"a" * 50] * 200, generation=generation)[0])
    assert parts.restarts == 4


def test_directory_parts_are_bounded() -> None:
    endless = DirectoryParts(b"/big", max_bytes=10_000)
    with pytest.raises(errors.ProtocolError, match="exceeds 10000 bytes"):
        for _ in range(1000):
            endless.feed(b"7\0" + b"name\0" * 100)
    rounds = DirectoryParts(b"/big", max_rounds=5)
    with pytest.raises(errors.ProtocolError, match="more than 5 DIRECTORY_PART rounds"):
        for _ in range(1000):
            rounds.feed(b"7\0n\0")


@pytest.mark.parametrize("reply", [b"", b"7", b"x\0a\0\0", b"7\0a", b"7\0"])
def test_malformed_or_stuck_directory_parts(reply: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        DirectoryParts(b"/big").feed(reply)


def test_long_reply_in_pieces() -> None:
    protocol = ClientProtocol()
    request = protocol.request(Op.DIRECTORY, b"/big\0")
    stream = encode_long(Op.DIRECTORY, b"child\0" * 20000, request.req_id) + encode(
        Op.WATCH_EVENT, join("/a", "t")
    )
    assert feed_in_chunks(protocol, stream, list(range(0, len(stream), 999))) == [request.req_id]
    assert request.reply is not None and len(request.reply.payload) == 120000
    assert protocol.unknown_events == 1


def test_watch_events_compare_by_path_token_and_domid() -> None:
    first = WatchEvent("/a", "t", 1.0, True)
    assert first == WatchEvent("/a", "t", 2.0) and hash(first) == hash(WatchEvent("/a", "t"))
    assert first != WatchEvent("/a", "t", domid=3)
    assert first != WatchEvent("/b", "t")
    assert first != ("/a", "t", 1.0, True, None)  # a tuple underneath, but never equal to a plain one
    with pytest.raises(AttributeError):
        first.path = "/b"  # type: ignore[misc]


def test_a_raising_sink_ends_its_watch_with_an_unwatch_and_the_stream_goes_on() -> None:
    protocol = ClientProtocol()
    good: list[str] = []
    broken = ValueError("broken sink")

    def bad(event: WatchEvent) -> None:
        raise broken

    protocol.watch(b"/bad", "bad", bad)
    protocol.watch(b"/good", "good", lambda event: good.append(event.path))
    protocol.data_to_send()
    stream = b"".join(
        encode(Op.WATCH_EVENT, join(path, token))
        for path, token in (("/bad/1", "bad"), ("/good/1", "good"), ("/bad/2", "bad"), ("/good/2", "good"))
    )
    for i in range(len(stream)):  # every split point
        protocol.receive_data(stream[i : i + 1])
    assert good == ["/good/1", "/good/2"]
    assert protocol.failed_sinks == [("bad", bad, broken)]
    assert not protocol.has_watch("bad") and protocol.unknown_events == 1
    [unwatch] = protocol.data_to_send()
    op, req_id, tx_id, _ = struct.unpack_from("<IIII", unwatch)
    frame = Frame(op, req_id, tx_id, unwatch[16:])
    assert (frame.op, frame.payload) == (Op.UNWATCH, join("/bad", "bad"))
    protocol.receive_data(encode(Op.UNWATCH, b"OK\0", frame.req_id))  # nobody waits for it: dropped
    assert protocol.pending == 2  # the two WATCHes, unanswered here


def test_replies_before_the_frame_that_breaks_the_stream_keep_their_answers() -> None:
    # One chunk: a reply, then a reply for no request. The first request's answer is not lost with the stream:
    # drain() gives it back answered (its caller wakes to it), the other one unanswered.
    protocol = ClientProtocol()
    answered = protocol.request(Op.READ, join("/a"))
    unanswered = protocol.request(Op.READ, join("/b"))
    with pytest.raises(errors.ProtocolError, match="which no request has"):
        protocol.receive_data(encode(Op.READ, b"v", answered.req_id) + encode(Op.READ, b"x", 99))
    assert answered.reply == Frame(Op.READ, answered.req_id, 0, b"v")
    assert {r.req_id for r in protocol.drain()} == {answered.req_id, unanswered.req_id}
    assert unanswered.reply is None
    with pytest.raises(errors.ProtocolError):
        protocol.receive_data(b"")
