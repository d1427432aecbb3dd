"""Node permissions as C xenstored keeps and checks them.

A node's permissions are a tuple of ``(bits, domid)`` entries. The first entry names the owner, and its
bits are what every domain not listed later gets. ``IGNORE`` marks an entry that refers to a domain that no
longer exists (XSA-322): such an entry grants nothing but is still listed by GET_PERMS. From 4.22 an entry
for DOMID_ANY (32757) names every domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from .failure import EINVAL, Fail

__all__ = [
    "ALL",
    "IGNORE",
    "NONE",
    "OWNER",
    "READ",
    "WRITE",
    "Perms",
    "Subject",
    "atoi",
    "format_perms",
    "parse_perms",
    "perm_for",
]

# enum xs_perm_type
NONE: Final = 0
READ: Final = 1
WRITE: Final = 2
OWNER: Final = 8
IGNORE: Final = 16
ALL: Final = READ | WRITE | OWNER

Perms = tuple[tuple[int, int], ...]

_LETTER_BITS: Final = {ord("n"): NONE, ord("r"): READ, ord("w"): WRITE, ord("b"): READ | WRITE}
_BITS_LETTER: Final = {NONE: b"n", READ: b"r", WRITE: b"w", READ | WRITE: b"b"}
_SPACE: Final = b" \t\n\v\f\r"


class Subject(Protocol):
    """Who asks: a connection's privilege, domain and SET_TARGET target."""

    @property
    def privileged(self) -> bool: ...

    @property
    def domid(self) -> int: ...

    @property
    def target(self) -> int | None: ...


def perm_for(subject: Subject, perms: Perms, any_domain: int | None = None) -> int:
    """``perm_for_conn()``: the READ/WRITE/OWNER bits ``subject`` has on a node with ``perms``.

    ``perms`` must already carry IGNORE on entries of domains that are gone. ``any_domain`` (4.22: DOMID_ANY)
    is the domid an entry names to match every domain.
    """
    if subject.privileged:
        return ALL
    owner = perms[0][1]
    domid = subject.domid
    target = subject.target
    matches = {domid} if target is None else {domid, target}
    if any_domain is not None:
        matches.add(any_domain)
    if owner in matches:
        return ALL
    for bits, who in perms[1:]:
        if not bits & IGNORE and who in matches:
            return bits & ALL
    return perms[0][0] & ALL


def _strtol(raw: bytes, base: int) -> tuple[int, int]:
    """C ``strtol``: (value, index just past the number); index 0 when nothing was parsed."""
    i = 0
    n = len(raw)
    while i < n and raw[i] in _SPACE:
        i += 1
    neg = False
    if i < n and raw[i] in b"+-":
        neg = raw[i] == ord("-")
        i += 1
    if base == 0:
        if raw[i : i + 2] in (b"0x", b"0X") and i + 2 < n and chr(raw[i + 2]) in "0123456789abcdefABCDEF":
            base, i = 16, i + 2
        elif raw[i : i + 1] == b"0":
            base = 8
        else:
            base = 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    start = i
    value = 0
    while i < n and chr(raw[i]).lower() in digits:
        value = value * base + digits.index(chr(raw[i]).lower())
        i += 1
    if i == start:
        return 0, 0
    value = -value if neg else value
    return max(-(2**63), min(2**63 - 1, value)), i


def atoi(raw: bytes) -> int:
    """C ``atoi`` (glibc: ``(int)strtol(s, NULL, 10)``)."""
    value, _ = _strtol(raw, 10)
    return ((value + 2**31) % 2**32) - 2**31


def parse_perms(strings: Sequence[bytes]) -> Perms:
    """``xs_strings_to_perms()``: ``[nrwb]`` and a number as C ``strtol(p, &end, 0)`` reads it; else EINVAL."""
    out: list[tuple[int, int]] = []
    for raw in strings:
        if not raw or raw[0] not in _LETTER_BITS:
            raise Fail(EINVAL)
        rest = raw[1:]
        value, end = _strtol(rest, 0)
        if not rest or end != len(rest):
            raise Fail(EINVAL)
        out.append((_LETTER_BITS[raw[0]], value & 0xFFFFFFFF))
    return tuple(out)


def format_perms(perms: Perms) -> bytes:
    """GET_PERMS payload: one NUL-terminated ``<letter><domid>`` per entry (IGNORE masked out); the domid
    printed as C's ``%i`` of the 32-bit id (``r-1`` for 0xffffffff)."""
    return b"".join(
        b"%s%d\0" % (_BITS_LETTER[bits & (READ | WRITE)], who - (1 << 32) if who >= 1 << 31 else who)
        for bits, who in perms
    )
