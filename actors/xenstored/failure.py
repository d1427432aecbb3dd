"""The one exception an op handler raises: it becomes an ERROR reply ``E<NAME>\\0``."""

from __future__ import annotations

from typing import Final

__all__ = [
    "E2BIG",
    "EACCES",
    "EAGAIN",
    "EBADF",
    "EBUSY",
    "EEXIST",
    "EINVAL",
    "EIO",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "ENOSYS",
    "EPERM",
    "Fail",
]

# The errno names of xsd_errors[] (xs_wire.h); C xenstored sends EINVAL for anything untranslatable.
EINVAL: Final = "EINVAL"
EACCES: Final = "EACCES"
EEXIST: Final = "EEXIST"
EIO: Final = "EIO"
ENOENT: Final = "ENOENT"
ENOMEM: Final = "ENOMEM"
ENOSPC: Final = "ENOSPC"
ENOSYS: Final = "ENOSYS"
EBUSY: Final = "EBUSY"
EAGAIN: Final = "EAGAIN"
E2BIG: Final = "E2BIG"
EPERM: Final = "EPERM"
EBADF: Final = "EBADF"  # not in xsd_errors: sent as EINVAL, like the C daemon

_WIRE_NAMES: Final = frozenset(
    {
        "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY",
        "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
    }
)  # fmt: skip


class Fail(Exception):
    """A request failed with the errno called ``name`` (``"ENOENT"``...)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    @property
    def wire_name(self) -> str:
        """The name as it goes on the wire: C xenstored turns an untranslatable errno into EINVAL."""
        return self.name if self.name in _WIRE_NAMES else EINVAL
