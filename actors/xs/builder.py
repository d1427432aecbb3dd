"""The request builder, sans-IO: for each op, the payload it sends (its arguments checked first: a bad path,
domid or permission is refused with nothing sent) and how its answer is read.

One builder for the connection's operations (:class:`~actors.xs.operations.Operations`, the
:class:`~actors.xs.client.XenStore`'s own) and its :class:`~actors.xs.pipeline.Pipeline` alike: a :class:`Call`
is made here, then awaited on the connection or queued in a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, NamedTuple, TypeVar

from .errors import PayloadTooLarge, ProtocolError
from .wire import (
    DOMID_ANY,
    PAYLOAD_MAX,
    Op,
    check_domid,
    check_path,
    check_perms,
    check_watch_path,
    introduced,
    join,
    split,
    texts,
)

__all__ = [
    "Call",
    "control",
    "directory",
    "directory_part",
    "directory_part_payload",
    "get_domain_path",
    "get_feature",
    "get_perms",
    "get_quota",
    "get_quotas",
    "grants_domid_any",
    "introduce",
    "is_domain_introduced",
    "mkdir",
    "nothing",
    "number",
    "read",
    "release",
    "reset_watches",
    "resume",
    "rm",
    "same",
    "set_feature",
    "set_perms",
    "set_quota",
    "set_target",
    "transaction_end",
    "transaction_start",
    "unwatch",
    "unwatch_payload",
    "watch_payload",
    "write",
]

T = TypeVar("T")


class Call(NamedTuple, Generic[T]):
    """One request, ready to go: its op and payload, the path it names (for its error), and ``decode``, which
    reads its answer's payload into the caller's result (or raises ProtocolError for a malformed one)."""

    op: Op
    payload: bytes
    path: str | None
    decode: Callable[[bytes], T]


def nothing(payload: bytes) -> None:
    """The decoder of an answer that carries nothing (``OK``)."""
    return None


def same(payload: bytes) -> bytes:
    """The decoder that gives the answer's payload as it is."""
    return payload


def _text(payload: bytes) -> str:
    return payload.rstrip(b"\0").decode("utf-8", "surrogateescape")


def _domid(domid: int) -> bytes:
    return join(str(check_domid(domid)))


def number(reply: bytes, what: str) -> int:
    """A decimal number answered by the daemon; ProtocolError for anything else."""
    text = reply.rstrip(b"\0")
    if not text.isdigit() or len(text) > 20:
        raise ProtocolError(f"{what}: expected a decimal number, got {reply[:80]!r}")
    return int(text)


# -- nodes ---------------------------------------------------------------------------------------------------


def read(path: str) -> Call[bytes]:
    return Call(Op.READ, join(check_path(path)), path, same)


def write(path: str, value: bytes | str) -> Call[None]:
    data = value.encode() if isinstance(value, str) else bytes(value)
    return Call(Op.WRITE, join(check_path(path), terminate=False) + b"\0" + data, path, nothing)


def mkdir(path: str) -> Call[None]:
    return Call(Op.MKDIR, join(check_path(path)), path, nothing)


def rm(path: str) -> Call[None]:
    return Call(Op.RM, join(check_path(path)), path, nothing)


def directory(path: str) -> Call[list[str]]:
    return Call(Op.DIRECTORY, join(check_path(path)), path, texts)


def directory_part_payload(path: bytes, offset: int) -> bytes:
    """DIRECTORY_PART's payload: a checked path and the offset to list from."""
    return join(path, str(offset))


def directory_part(payload: bytes, path: str) -> Call[bytes]:
    """One DIRECTORY_PART round; ``payload`` from :func:`directory_part_payload` (a listing's next one from
    :meth:`~actors.xs.protocol.DirectoryParts.next_payload`)."""
    return Call(Op.DIRECTORY_PART, payload, path, same)


def get_perms(path: str) -> Call[list[str]]:
    return Call(Op.GET_PERMS, join(check_path(path)), path, texts)


def set_perms(path: str, perms: Iterable[bytes | str]) -> Call[None]:
    return Call(Op.SET_PERMS, join(check_path(path), *check_perms(perms)), path, nothing)


def grants_domid_any(call: Call[None]) -> bool:
    """Does this SET_PERMS name DOMID_ANY (``r32757``: every domain), which needs a daemon with that feature?"""
    return any(int(perm[1:]) == DOMID_ANY for perm in split(call.payload)[1:])


# -- watches and transactions --------------------------------------------------------------------------------


def watch_payload(path: bytes, token: str, depth: int | None = None) -> bytes:
    """WATCH's payload (``path\0token\0``, then ``depth\0`` with a depth, Xen 4.22) for a checked path: made
    by :meth:`~actors.xs.protocol.ClientProtocol.watch`, which registers the watch's sink with it.
    PayloadTooLarge if it exceeds the limit."""
    payload = join(path, token) if depth is None else join(path, token, str(depth))
    if len(payload) > PAYLOAD_MAX:
        raise PayloadTooLarge("watch path and token exceed the payload limit")
    return payload


def unwatch_payload(path: bytes, token: str) -> bytes:
    """UNWATCH's payload for a checked path (the protocol's own, for a watch whose sink failed)."""
    return join(path, token)


def unwatch(path: str, token: str) -> Call[None]:
    return Call(Op.UNWATCH, unwatch_payload(check_watch_path(path), token), path, nothing)


def reset_watches() -> Call[None]:
    return Call(Op.RESET_WATCHES, b"\0", None, nothing)


def _tx_id(reply: bytes) -> int:
    reply = reply.rstrip(b"\0")
    if not reply.isdigit() or not 0 < int(reply) <= 0xFFFFFFFF:
        raise ProtocolError(f"TRANSACTION_START: the daemon's transaction id {reply[:40]!r} is not valid")
    return int(reply)


def transaction_start() -> Call[int]:
    """TRANSACTION_START: its answer is the transaction's id (ProtocolError if it is not a valid one)."""
    return Call(Op.TRANSACTION_START, b"\0", None, _tx_id)


def transaction_end(commit: bool) -> Call[None]:
    return Call(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", None, nothing)


# -- domains and the daemon ----------------------------------------------------------------------------------


def get_domain_path(domid: int) -> Call[str]:
    return Call(Op.GET_DOMAIN_PATH, _domid(domid), None, _text)


def introduce(domid: int, mfn: int, port: int) -> Call[None]:
    return Call(Op.INTRODUCE, join(str(check_domid(domid)), str(int(mfn)), str(int(port))), None, nothing)


def release(domid: int) -> Call[None]:
    return Call(Op.RELEASE, _domid(domid), None, nothing)


def is_domain_introduced(domid: int) -> Call[bool]:
    return Call(Op.IS_DOMAIN_INTRODUCED, _domid(domid), None, introduced)


def resume(domid: int) -> Call[None]:
    return Call(Op.RESUME, _domid(domid), None, nothing)


def set_target(domid: int, target: int) -> Call[None]:
    return Call(Op.SET_TARGET, join(str(check_domid(domid)), str(check_domid(target))), None, nothing)


def _control_reply(payload: bytes) -> bytes:
    return payload.rstrip(b"\0")


def control(*args: str | bytes) -> Call[bytes]:
    """XS_CONTROL; its answer with the trailing NUL removed."""
    return Call(Op.DEBUG, join(*args) if args else b"\0", None, _control_reply)


def _feature_bits(payload: bytes) -> int:
    return number(payload, "GET_FEATURE")


def get_feature(domid: int | None = None) -> Call[int]:
    """GET_FEATURE: this connection's feature bits, or domain ``domid``'s."""
    return Call(Op.GET_FEATURE, b"" if domid is None else _domid(domid), None, _feature_bits)


def set_feature(domid: int, bits: int) -> Call[None]:
    return Call(Op.SET_FEATURE, join(str(check_domid(domid)), str(int(bits))), None, nothing)


def _quota_names(payload: bytes) -> list[str]:
    return payload.rstrip(b"\0").decode("ascii", "replace").split()


def get_quotas() -> Call[list[str]]:
    """GET_QUOTA without a name: the names of the quotas the daemon has."""
    return Call(Op.GET_QUOTA, b"", None, _quota_names)


def get_quota(name: str, domid: int | None = None) -> Call[int]:
    """GET_QUOTA: the global value of quota ``name``, or domain ``domid``'s."""
    args = [name] if domid is None else [str(check_domid(domid)), name]
    what = f"GET_QUOTA {name}"
    return Call(Op.GET_QUOTA, join(*args), None, lambda payload: number(payload, what))


def set_quota(name: str, value: int, domid: int | None = None) -> Call[None]:
    args = [name, str(int(value))] if domid is None else [str(check_domid(domid)), name, str(int(value))]
    return Call(Op.SET_QUOTA, join(*args), None, nothing)
