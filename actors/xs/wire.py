"""The XenStore wire format, sans-IO: no trio, no sockets.

Shared by the client and the embedded daemon. Frames are ``struct xsd_sockmsg`` (four native uint32: type,
req_id, tx_id, len) followed by ``len`` payload bytes (``xen/include/public/io/xs_wire.h``).
Built on pyxs's ``Packet`` header struct, ``Op`` table and path/permission checks, with its gaps filled here:
RESET_WATCHES and DIRECTORY_PART, empty values, the 2048-byte limit of relative paths.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from pyxs import _internal as _pyxs

from .errors import (
    InvalidDomid,
    InvalidPath,
    InvalidPermission,
    PayloadTooLarge,
    ProtocolError,
    error_from_name,
)

__all__ = [
    "ABS_PATH_MAX",
    "DOMID_ANY",
    "DOMID_FIRST_RESERVED",
    "DOMID_SELF",
    "HEADER",
    "INTRODUCE_DOMAIN",
    "PAYLOAD_MAX",
    "RELEASE_DOMAIN",
    "REL_PATH_MAX",
    "SPECIAL_PATHS",
    "XSD_ERRORS",
    "Feature",
    "Frame",
    "FrameDecoder",
    "Op",
    "check_domid",
    "check_path",
    "check_perms",
    "check_watch_path",
    "encode",
    "introduced",
    "join",
    "op_name",
    "special_domid",
    "split",
    "texts",
]

PAYLOAD_MAX: Final = 4096  # XENSTORE_PAYLOAD_MAX
ABS_PATH_MAX: Final = 3072  # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX: Final = 2048  # XENSTORE_REL_PATH_MAX

# The reserved domids (xen/include/public/xen.h): no domain has one.
DOMID_FIRST_RESERVED: Final = 0x7FF0  # DOMID_SELF and friends start here
DOMID_SELF: Final = 0x7FF0
DOMID_ANY: Final = 0x7FF5  # 32757: "every domain" in a permission (Xen 4.22)

# The special watch paths, fired by the daemon (4.22 with watch depth 1: ``@introduceDomain/<domid>``).
INTRODUCE_DOMAIN: Final = "@introduceDomain"
RELEASE_DOMAIN: Final = "@releaseDomain"
SPECIAL_PATHS: Final = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

# The errno names an ERROR reply may carry (xsd_errors[] of xs_wire.h); C xenstored sends EINVAL for the others.
XSD_ERRORS: Final = frozenset(
    {
        "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY",
        "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
    }
)  # fmt: skip

HEADER: Final = _pyxs.Packet._struct  # native "IIII", 16 bytes
assert HEADER.size == 16


class Op(enum.IntEnum):
    """``enum xsd_sockmsg_type``: pyxs's ``Op`` table plus RESET_WATCHES (21), DIRECTORY_PART (22) and the
    Xen 4.21/4.22 ops GET_FEATURE (23), SET_FEATURE (24), GET_QUOTA (25), SET_QUOTA (26)."""

    DEBUG = 0  # XS_CONTROL
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was RESTRICT, removed from Xen (ENOSYS); pyxs 0.4.1 still lists it, as 128.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    # Xen 4.21/4.22 (C xenstored); older daemons and oxenstored answer ENOSYS.
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26


class Feature(enum.IntFlag):
    """GET_FEATURE's bits (Xen 4.21+: ``XENSTORE_SERVER_FEATURE_*``)."""

    RECONNECTION = 1
    ERROR = 2
    WATCHDEPTH = 4
    DOMID_ANY = 8


# Our table must agree with pyxs's wherever pyxs has an entry.
assert all(Op[name] == value for name, value in _pyxs.Op._asdict().items() if name != "RESTRICT")

CONTROL: Final = Op.DEBUG  # xs_wire.h: XS_CONTROL, alias XS_DEBUG
_KNOWN_OPS: Final = frozenset(int(op) for op in Op)


def op_name(op: int) -> str:
    """The op's name (``"READ"``), or ``"op 99"`` for a number no op has."""
    return Op(op).name if op in _KNOWN_OPS else f"op {op}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One message either way: ``op`` is an :class:`Op` value (a plain int for an unknown op on the server)."""

    op: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        return encode(self.op, self.payload, self.req_id, self.tx_id)

    @property
    def op_name(self) -> str:
        return op_name(self.op)

    def error(self, path: str | None = None, op: str | None = None) -> Exception | None:
        """For an ERROR frame, the matching exception (not raised); else None."""
        if self.op != Op.ERROR:
            return None
        name = self.payload.rstrip(b"\0").decode("ascii", "replace")
        return error_from_name(name, op, path)


def encode(op: int, payload: bytes, req_id: int = 0, tx_id: int = 0) -> bytes:
    """Header and payload as bytes; raises PayloadTooLarge past 4096 bytes."""
    if len(payload) > PAYLOAD_MAX:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}")
    header: bytes = HEADER.pack(op, req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload))
    return header + payload


class FrameDecoder:
    """Incremental decoder: feed bytes in any chunking, get whole frames. The one frame parser: the client
    protocol, the embedded daemon and the test harness all read frames with it.

    A header announcing more than ``max_payload`` bytes (default 4096) raises :class:`ProtocolError`, and so
    does an unknown op unless ``allow_unknown_ops`` (the daemon answers those with ENOSYS instead). After a
    ProtocolError the decoder refuses further input: the stream's framing is lost.
    """

    __slots__ = ("_allow_unknown", "_broken", "_buf", "_max_payload")

    def __init__(self, *, allow_unknown_ops: bool = False, max_payload: int = PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self._allow_unknown = allow_unknown_ops
        self._max_payload = max_payload
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """The frames completed by ``data``, in order."""
        frames: list[Frame] = []
        append = frames.append

        def collect(op: int, req_id: int, tx_id: int, payload: bytes) -> None:
            append(Frame(op, req_id, tx_id, payload))

        self.feed_each(data, collect)
        return frames

    def feed_each(self, data: bytes | bytearray, handle: Callable[[int, int, int, bytes], None]) -> None:
        """As :meth:`feed`, each frame handed to ``handle(op, req_id, tx_id, payload)`` as it is decoded, no
        :class:`Frame` made (the client protocol takes every watch event this way). A frame is consumed when it
        is handed over: if ``handle`` raises, the frames after it stay buffered."""
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        buf += data
        header = HEADER.size
        if len(buf) < header:
            return
        op, _, _, length = HEADER.unpack_from(buf)
        limit = self._max_payload
        known = self._allow_unknown or op in _KNOWN_OPS
        if len(buf) < header + length and length <= limit and known:
            return  # the first frame is not whole yet: a long one arriving in pieces costs no copies
        view = bytes(buf)  # one copy; slices of it are the payloads
        pos = 0
        size = len(view)
        unpack = HEADER.unpack_from
        allow_unknown = self._allow_unknown
        try:
            while size - pos >= header:
                op, req_id, tx_id, length = unpack(view, pos)
                if length > limit:
                    self._fail(f"frame announces {length} payload bytes (max {limit})")
                if not allow_unknown and op not in _KNOWN_OPS:
                    self._fail(f"unknown op {op}")
                start = pos + header
                end = start + length
                if end > size:
                    break
                pos = end
                handle(op, req_id, tx_id, view[start:end])
        finally:
            del buf[:pos]

    def _fail(self, why: str) -> None:
        self._broken = ProtocolError(why)
        raise self._broken


# -- payloads ------------------------------------------------------------------------------------------------


def join(*parts: bytes | str, terminate: bool = True) -> bytes:
    """NUL-join ``parts``; with ``terminate`` every part ends with NUL (``path\\0token\\0``)."""
    if len(parts) == 1:  # most requests: no list, no comprehension
        (part,) = parts
        out = part.encode() if isinstance(part, str) else part
    else:
        out = b"\0".join([p.encode() if isinstance(p, str) else p for p in parts])
    return out + b"\0" if terminate else out


def split(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload (a missing final NUL is tolerated)."""
    if not payload:
        return []
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return payload.split(b"\0")


def texts(payload: bytes) -> list[str]:
    """The NUL-terminated strings of a payload as text (names, permissions; bytes past UTF-8 kept)."""
    return [part.decode("utf-8", "surrogateescape") for part in split(payload)]


def introduced(payload: bytes) -> bool:
    """IS_DOMAIN_INTRODUCED's answer: ``T`` or ``F`` (ProtocolError for anything else)."""
    reply = payload.rstrip(b"\0")
    if reply not in (b"T", b"F"):
        raise ProtocolError(f"IS_DOMAIN_INTRODUCED: expected T or F, got {reply[:80]!r}")
    return reply == b"T"


# -- validation ----------------------------------------------------------------------------------------------

_PERM_RE: Final = re.compile(rb"[nrwb](0|[1-9][0-9]{0,4})")
_PATH_RE: Final = re.compile(rb"[A-Za-z0-9_/@-]+")
# A node path in one match: "/" alone, or names of those characters joined by single "/", perhaps with a
# leading one (no empty name: no "//", no trailing "/").
_NODE_PATH_RE: Final = re.compile(rb"/|/?[A-Za-z0-9_@-]+(?:/[A-Za-z0-9_@-]+)*")


def _as_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidPath(f"{what} {value!r} is not ASCII") from None
    return bytes(value)


def check_path(path: bytes | str) -> bytes:
    """A node path as the daemons accept it, as bytes; raises InvalidPath.

    Characters ``[A-Za-z0-9_/@-]``, no empty path, no trailing ``/`` (but ``/`` itself), no ``//``;
    absolute paths up to 3072 bytes, relative ones up to 2048 (pyxs 0.4.1 gives both 3072).
    """
    raw = _as_bytes(path, "path")
    # pyxs's check_path, stricter and without its posixpath.abspath (a quarter of a request's cost): its
    # pattern ends in "$", which lets a trailing newline through, and it gives relative paths 3072 bytes.
    if not _NODE_PATH_RE.fullmatch(raw):
        raise InvalidPath(f"invalid path {path!r}")
    limit = ABS_PATH_MAX if raw.startswith(b"/") else REL_PATH_MAX
    if len(raw) > limit:
        raise InvalidPath(f"path of {len(raw)} bytes exceeds {limit}")
    if raw.startswith(b"@"):
        raise InvalidPath(f"special path {path!r} is only valid for watches")
    return raw


# A special event that names its domain (Xen 4.22, a watch of depth 1): ``@releaseDomain/5``.
_SPECIAL_DOMID: Final = re.compile(
    b"(?:%s)/(0|[1-9][0-9]{0,4})" % "|".join(map(re.escape, SPECIAL_PATHS)).encode()
)


def special_domid(path: bytes) -> int | None:
    """The domain a special event names (``@introduceDomain/5``, ``@releaseDomain/5``: 5), or None."""
    match = _SPECIAL_DOMID.fullmatch(path)
    return None if match is None else int(match[1])


def check_watch_path(path: bytes | str) -> bytes:
    """A watch path: a node path, or a special ``@name`` path (``@releaseDomain``, ``@introduceDomain``)."""
    raw = _as_bytes(path, "watch path")
    if raw.startswith(b"@"):
        if len(raw) < 2 or len(raw) > ABS_PATH_MAX or not _PATH_RE.fullmatch(raw):
            raise InvalidPath(f"invalid special path {path!r}")
        if raw.endswith(b"/") or b"//" in raw:
            raise InvalidPath(f"invalid special path {path!r}")
        return raw
    return check_path(raw)


def check_perms(perms: Iterable[bytes | str]) -> list[bytes]:
    """Permission strings ``n0``, ``r5``, ``b7``, ``w3``: the first names the owner. Raises InvalidPermission."""
    out: list[bytes] = []
    for perm in perms:
        raw = perm.encode("ascii", "replace") if isinstance(perm, str) else bytes(perm)
        if not _PERM_RE.fullmatch(raw) or int(raw[1:]) > 0xFFFF:
            raise InvalidPermission(f"invalid permission {perm!r} (want n|r|w|b followed by a domid)")
        out.append(raw)
    if not out:
        raise InvalidPermission("a node needs at least one permission (its owner)")
    return out


def check_domid(domid: int | str, *, guest_only: bool = False) -> int:
    """A domain id as an int; raises InvalidDomid.

    ``guest_only`` accepts 1..32751 (a domU: below DOMID_FIRST_RESERVED), written in canonical decimal if a str.
    """
    if isinstance(domid, str):
        if not re.fullmatch(r"0|[1-9][0-9]{0,4}", domid):
            raise InvalidDomid(f"domid {domid[:40]!r} is not a canonical decimal number")
        value = int(domid)
    elif isinstance(domid, bool) or not isinstance(domid, int):
        raise InvalidDomid(f"domid {domid!r} is not an int")
    else:
        value = domid
    low = 1 if guest_only else 0
    high = DOMID_FIRST_RESERVED - 1 if guest_only else 0xFFFF
    if not low <= value <= high:
        raise InvalidDomid(f"domid {value} out of range {low}..{high}")
    return value
