"""The one exception an op handler raises: it becomes an ERROR reply ``E<NAME>\\0``."""

from __future__ import annotations

from typing import Final

from actors.xs.wire import XSD_ERRORS

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

# The errno names the handlers raise (those of xsd_errors[], wire.XSD_ERRORS, and EBADF, which is not).
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


class Fail(Exception):
    """A request failed with the errno called ``name`` (``"ENOENT"``...)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    @property
    def wire_name(self) -> str:
        """The name as it goes on the wire: C xenstored turns an untranslatable errno into EINVAL."""
        return self.name if self.name in XSD_ERRORS else EINVAL
