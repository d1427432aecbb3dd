"""The sans-IO wire layer: round trips in every chunking, and bad frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.xs import errors, wire
from actors.xs.wire import Frame, FrameDecoder, Op

ops = st.sampled_from(list(Op))
frames = st.builds(
    Frame,
    op=ops.map(int),
    req_id=st.integers(0, 2**32 - 1),
    tx_id=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=wire.PAYLOAD_MAX),
)


def test_op_table_extends_pyxs() -> None:
    assert Op.RESET_WATCHES == 21
    assert Op.DIRECTORY_PART == 22
    assert Op.SET_TARGET == 19
    assert 20 not in {int(op) for op in Op}
    assert wire.CONTROL == Op.DEBUG == 0


def test_header_is_sixteen_native_bytes() -> None:
    raw = wire.encode(Op.READ, b"/a\0", req_id=7, tx_id=3)
    assert raw[:16] == struct.pack("=IIII", 2, 7, 3, 3)
    assert raw[16:] == b"/a\0"


@given(st.lists(frames, max_size=8), st.data())
def test_round_trip_in_any_chunking(sent: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(f.encode() for f in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    got: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert got == sent
    assert decoder.buffered == 0


def test_byte_by_byte() -> None:
    frame = Frame(Op.WRITE, 1, 0, b"/a\0value")
    decoder = FrameDecoder()
    out: list[Frame] = []
    for byte in frame.encode():
        out += decoder.feed(bytes([byte]))
    assert out == [frame]


@given(frames, st.integers(1, 15))
def test_truncated_frame_waits_for_more(frame: Frame, missing: int) -> None:
    raw = frame.encode()
    decoder = FrameDecoder()
    assert decoder.feed(raw[: max(0, len(raw) - missing)]) == []
    assert decoder.feed(raw[max(0, len(raw) - missing) :]) == [frame]


@given(st.integers(wire.PAYLOAD_MAX + 1, 2**32 - 1))
def test_oversized_frame_is_a_protocol_error(size: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(errors.ProtocolError, match="payload bytes"):
        decoder.feed(struct.pack("=IIII", Op.READ, 1, 0, size))
    # The stream's framing is lost: the decoder refuses anything after.
    with pytest.raises(errors.ProtocolError):
        decoder.feed(Frame(Op.READ, 2, 0, b"/\0").encode())


@given(st.integers(0, 2**32 - 1).filter(lambda op: op not in {int(o) for o in Op}))
def test_unknown_op(op: int) -> None:
    raw = struct.pack("=IIII", op, 1, 0, 0)
    with pytest.raises(errors.ProtocolError, match="unknown op"):
        FrameDecoder().feed(raw)
    # The daemon side takes it, to answer ENOSYS.
    assert FrameDecoder(allow_unknown_ops=True).feed(raw) == [Frame(op, 1, 0, b"")]


def test_encode_refuses_oversized_payload() -> None:
    wire.encode(Op.WRITE, b"x" * 4096)
    with pytest.raises(errors.PayloadTooLarge):
        wire.encode(Op.WRITE, b"x" * 4097)


@pytest.mark.parametrize(
    "path",
    ["/", "/local/domain/0", "data", "a/b-c_d@e", "/" + "a" * 3071, "a" * 2048],
)
def test_valid_paths(path: str) -> None:
    assert wire.check_path(path) == path.encode()


@pytest.mark.parametrize(
    "path",
    ["", "/a/", "a//b", "/a b", "/a\0b", "/é", "/" + "a" * 3072, "a" * 2049, "@introduceDomain", "/a\n"],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(errors.InvalidPath):
        wire.check_path(path)


def test_watch_paths() -> None:
    assert wire.check_watch_path("@releaseDomain") == b"@releaseDomain"
    assert wire.check_watch_path("@introduceDomain") == b"@introduceDomain"
    assert wire.check_watch_path("/local/domain") == b"/local/domain"
    for bad in ("@", "@bad path", "@a//b", ""):
        with pytest.raises(errors.InvalidPath):
            wire.check_watch_path(bad)


def test_perms() -> None:
    assert wire.check_perms(["n0", "r5", "b65535", "w7"]) == [b"n0", b"r5", b"b65535", b"w7"]
    for bad in (["x0"], ["n"], ["r-1"], ["n65536"], ["r05"], []):
        with pytest.raises(errors.InvalidPermission):
            wire.check_perms(bad)


@pytest.mark.parametrize("bad", ["abc", "-1", "007", "0", "99999", "32752", "1" * 3000, "", " 5"])
def test_guest_domids_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidDomid):
        wire.check_domid(bad, guest_only=True)


def test_guest_domids_accepted() -> None:
    assert wire.check_domid("1", guest_only=True) == 1
    assert wire.check_domid(32751, guest_only=True) == 32751
    assert wire.check_domid(0) == 0
    with pytest.raises(errors.InvalidDomid):
        wire.check_domid(True)


def test_join_and_split() -> None:
    assert wire.join("/a", "tok") == b"/a\0tok\0"
    assert wire.split(b"a\0b\0") == [b"a", b"b"]
    assert wire.split(b"a\0b") == [b"a", b"b"]
    assert wire.split(b"") == []


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ENOENT", errors.NotFound),
        ("EACCES", errors.PermissionDenied),
        ("EEXIST", errors.AlreadyExists),
        ("EINVAL", errors.InvalidArgument),
        ("EAGAIN", errors.TransactionConflict),
        ("ENOSPC", errors.QuotaExceeded),
        ("E2BIG", errors.QuotaExceeded),
        ("EQUOTA", errors.QuotaExceeded),
        ("EIO", errors.OperationFailed),
        ("ENOSYS", errors.OperationFailed),
    ],
)
def test_error_frames_map_to_the_hierarchy(name: str, cls: type[errors.ErrorReply]) -> None:
    exc = Frame(Op.ERROR, 1, 0, name.encode() + b"\0").error(path="/a", op="READ")
    assert isinstance(exc, cls)
    assert isinstance(exc, errors.XenStoreError)
    assert exc.errno_name == name
    assert exc.path == "/a"
    assert exc.op == "READ"
    assert name in str(exc)


def test_import_prints_nothing_and_starts_no_threads() -> None:
    import subprocess
    import sys

    code = "import threading, actors; print(threading.active_count())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == "1\n"
    assert result.stderr == ""
