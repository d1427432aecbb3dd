"""What the op handlers share: reading a request's arguments as C xenstored does.

``onearg()`` wants exactly one string ending at the payload's end, other ops count NUL-terminated strings
(``get_strings()``), numbers are read with ``atoi()``.
"""

from __future__ import annotations

from typing import Final

from ..permissions import atoi

__all__ = ["OK", "REL_PATH_MAX", "domid_arg", "onearg", "strings"]

OK: Final = b"OK\0"
REL_PATH_MAX: Final = 2048


def onearg(payload: bytes) -> bytes | None:
    """The single argument: the payload must contain exactly one NUL, at its end."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload (``get_strings()``); bytes after the last NUL are ignored."""
    return payload.split(b"\0")[:-1]


def domid_arg(raw: bytes) -> int:
    """A domid as C reads it: ``atoi()``, as an unsigned 32-bit number."""
    return atoi(raw) & 0xFFFFFFFF
