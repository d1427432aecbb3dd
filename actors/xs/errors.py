"""One exception hierarchy for everything XenStore, rooted at :class:`XenStoreError`.

Error replies from a daemon (``E<NAME>\\0`` payloads) map to subclasses by errno name; each carries the errno
name, the op and the path of the request that failed. Local validation errors (bad path, bad permission, bad
domid, payload too large) are ``ValueError`` too, so they can be caught either way.
"""

from __future__ import annotations

import errno as _errno

from pyxs.exceptions import PyXSError

__all__ = [
    "AlreadyExists",
    "ConflictDeadline",
    "ConnectionLost",
    "ConnectionStalled",
    "InvalidArgument",
    "InvalidDomid",
    "InvalidPath",
    "InvalidPermission",
    "NotFound",
    "OperationFailed",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProtocolError",
    "QuotaExceeded",
    "RequestTimeout",
    "TokenInUse",
    "TransactionConflict",
    "Unsupported",
    "XenStoreError",
    "XenStoreUnavailable",
    "error_from_name",
]


class XenStoreError(PyXSError):  # type: ignore[misc]  # pyxs is untyped
    """Base class of every error this package raises about XenStore."""


class ErrorReply(XenStoreError):
    """The daemon answered a request with an ERROR frame."""

    errno_names: tuple[str, ...] = ()

    def __init__(self, errno_name: str, op: str | None = None, path: str | None = None) -> None:
        self.errno_name = errno_name
        self.op = op
        self.path = path
        self.errno: int | None = getattr(_errno, errno_name, None)
        where = f" on {path!r}" if path is not None else ""
        what = f"{op}" if op is not None else "request"
        super().__init__(f"{what}{where}: {errno_name}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.errno_name, self.op, self.path))


class NotFound(ErrorReply):
    """ENOENT: the node (or transaction, or watch) does not exist."""

    errno_names = ("ENOENT",)


class PermissionDenied(ErrorReply):
    """EACCES: the connection may not do this to that node."""

    errno_names = ("EACCES",)


class AlreadyExists(ErrorReply):
    """EEXIST: e.g. a duplicate (path, token) watch."""

    errno_names = ("EEXIST",)


class InvalidArgument(ErrorReply):
    """EINVAL: the daemon found the request malformed."""

    errno_names = ("EINVAL",)


class TransactionConflict(ErrorReply):
    """EAGAIN: the transaction conflicted with a concurrent change; redo it whole."""

    errno_names = ("EAGAIN",)


class ConflictDeadline(TransactionConflict):
    """Every try of a transaction conflicted (EAGAIN) until its deadline (``deadline`` seconds, see
    :meth:`~actors.xs.client.XenStore.run_transaction`); ``conflicts`` counts them."""

    def __init__(self, op: str, path: str | None, conflicts: int, deadline: float) -> None:
        super().__init__("EAGAIN", op, path)
        self.conflicts = conflicts
        self.deadline = deadline
        where = f"{op} on {path!r}" if path is not None else op
        self.args = (f"{where}: {conflicts} transaction conflicts (EAGAIN) within {deadline:g} s",)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.op, self.path, self.conflicts, self.deadline))


class QuotaExceeded(ErrorReply):
    """ENOSPC, E2BIG or EQUOTA: a per-domain quota or size limit was hit."""

    errno_names = ("ENOSPC", "E2BIG", "EQUOTA")


class OperationFailed(ErrorReply):
    """Any other error name (EIO, EISDIR, ENOTEMPTY, EROFS, EBUSY, EISCONN, EPERM, ENOMEM, ...)."""


class Unsupported(OperationFailed):
    """The daemon lacks the op or feature: it answered ENOSYS, or it is known not to answer at all (then
    nothing was sent, and ``why`` says so)."""

    errno_names = ("ENOSYS",)

    def __init__(
        self,
        errno_name: str = "ENOSYS",
        op: str | None = None,
        path: str | None = None,
        why: str | None = None,
    ) -> None:
        super().__init__(errno_name, op, path)
        self.why = why
        if why is not None:
            self.args: tuple[object, ...] = (f"{self.args[0]} ({why})",)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.errno_name, self.op, self.path, self.why))


class TokenInUse(AlreadyExists):
    """``add_watch`` with a token this connection already has a watch for; nothing was sent."""

    def __init__(self, errno_name: str = "EEXIST", op: str | None = "WATCH", path: str | None = None) -> None:
        super().__init__(errno_name, op, path)


_BY_NAME: dict[str, type[ErrorReply]] = {
    name: cls
    for cls in (
        NotFound,
        PermissionDenied,
        AlreadyExists,
        InvalidArgument,
        TransactionConflict,
        QuotaExceeded,
        Unsupported,
    )
    for name in cls.errno_names
}


def error_from_name(errno_name: str, op: str | None = None, path: str | None = None) -> ErrorReply:
    """The exception for an error reply named ``errno_name`` (``"ENOENT"``, ...)."""
    return _BY_NAME.get(errno_name, OperationFailed)(errno_name, op, path)


class ProtocolError(XenStoreError):
    """The daemon broke the protocol: a frame past the size bound, a reply of the wrong type or for no request,
    a malformed payload. Where the framing or the matching of replies is lost, the connection ends and every
    pending caller gets :class:`ConnectionLost` caused by this error; a bad listing (DIRECTORY_PART past its
    bounds) fails only its own call."""


class ConnectionLost(XenStoreError):
    """The connection to the daemon is gone; the request's outcome is unknown. ``__cause__`` says why."""


class ConnectionStalled(ConnectionLost):
    """The daemon sent nothing for longer than the connection's ``stall_limit`` while requests were pending:
    the connection was ended as lost."""


class RequestTimeout(XenStoreError):
    """The request's deadline (``XenStore.request_timeout``) passed before its reply came; the connection is
    kept and a late reply is discarded. The request may or may not have taken effect."""

    @classmethod
    def of(cls, op: str, path: str | None, timeout: float | None, daemon: str) -> RequestTimeout:
        """``READ on '/x': no reply within 30 s from xenstored (/run/xenstored/socket)``."""
        where = f" on {path!r}" if path is not None else ""
        return cls(f"{op}{where}: no reply within {timeout} s from xenstored ({daemon})")


class XenStoreUnavailable(XenStoreError, OSError):
    """No daemon could be reached at the path tried (missing socket, refused connection, no device)."""


class InvalidPath(XenStoreError, ValueError):
    """A path that no XenStore daemon would accept; nothing was sent."""


class InvalidPermission(XenStoreError, ValueError):
    """A permission string that is not ``[nrwb]<domid>``; nothing was sent."""


class InvalidDomid(XenStoreError, ValueError):
    """A domain id out of range or not a decimal number; nothing was sent."""


class PayloadTooLarge(XenStoreError, ValueError):
    """A request whose payload would exceed XENSTORE_PAYLOAD_MAX (4096 bytes); nothing was sent."""
