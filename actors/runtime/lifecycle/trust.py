"""The trust rule for nodes: a node is the toolstack's word only if no guest can have written it (dom0 owns it
and no other domain may write it); read one node, or many pipelined, and judge them."""

from __future__ import annotations

from dataclasses import dataclass

from ...xs.client import XenStore
from ...xs.errors import NotFound, XenStoreError
from ...xs.pipeline import Pipeline
from .requests import SKIPPED, Skipped, gather_bounded, patiently

__all__ = ["Untrusted", "owner_of", "trusted_read", "trusted_reads", "untrusted_because"]


def owner_of(perms: list[str]) -> int | None:
    try:
        return int(perms[0][1:])
    except (IndexError, ValueError):
        return None


def untrusted_because(perms: list[str]) -> str | None:
    """Why a node with these permissions cannot be trusted as the toolstack's word, or None if it can.

    Trusted: dom0 owns it (first entry ``n0`` or ``r0``: what everybody else gets is nothing or read) and no
    later entry grants another domain write (``w``/``b``). A guest that may write a node may forge it.
    """
    if not perms:
        return "no permissions"
    first = perms[0]
    if first[:1] not in ("n", "r") or owner_of(perms) != 0:
        return "not owned by dom0 with n/r for everybody else"
    for entry in perms[1:]:
        letter, domid = entry[:1], entry[1:]
        if letter not in ("n", "r", "w", "b") or not domid.isdigit():
            return f"unreadable entry {entry[:16]!r}"
        if letter in ("w", "b") and int(domid) != 0:
            return f"domain {int(domid)} may write it"
    return None


@dataclass(frozen=True)
class Untrusted:
    """What :func:`trusted_read` returns for a node some guest may have written: why, with its permissions."""

    why: str


async def trusted_read(xs: XenStore, path: str) -> bytes | Skipped | Untrusted:
    """The node's value if it is the toolstack's word (see :func:`untrusted_because`); Untrusted if a guest may
    have written it; SKIPPED if the daemon would not tell (retried, logged: see :func:`patiently`).

    NotFound (the node does not exist) is raised, as are ConnectionLost and ValueError."""
    perms = await patiently(f"GET_PERMS {path}", lambda: xs.get_perms(path))
    value = await patiently(f"READ {path}", lambda: xs.read(path))
    if isinstance(perms, Skipped) or isinstance(value, Skipped):
        return SKIPPED
    return _trusted(perms, value)


def _trusted(perms: list[str], value: bytes) -> bytes | Untrusted:
    why = untrusted_because(perms)
    if why is not None:
        return Untrusted(f"{why} (permissions {' '.join(perms)[:128]})")
    return value


class _TrustedAnswer:
    """A node's GET_PERMS and READ in a pipeline (see :func:`trusted_reads`)."""

    __slots__ = ("_perms", "_value")

    def __init__(self, pipe: Pipeline, path: str) -> None:
        self._perms, self._value = pipe.get_perms(path), pipe.read(path)

    def judge(self) -> bytes | Untrusted | None:
        """Once the pipeline is sent: the answers judged as :func:`trusted_read` does (None: the node does not
        exist); the error of a request the daemon refused (or that timed out) is raised: ask that node again
        the patient way, with :func:`trusted_read`."""
        perms, value = self._perms, self._value
        if isinstance(perms.error, NotFound) or isinstance(value.error, NotFound):
            return None
        return _trusted(perms.result(), value.result())


async def trusted_reads(xs: XenStore, paths: list[str]) -> list[bytes | Skipped | Untrusted | None]:
    """:func:`trusted_read` of many nodes, pipelined (None where a node does not exist); the few the daemon
    refused are asked again one by one, with retries. ConnectionLost and ValueError are raised."""
    pipe = xs.pipeline()
    asked = [_TrustedAnswer(pipe, path) for path in paths]
    await pipe.send()
    results: list[bytes | Skipped | Untrusted | None] = []
    again: list[int] = []
    for index, answer in enumerate(asked):
        try:
            results.append(answer.judge())
        except XenStoreError:
            results.append(SKIPPED)
            again.append(index)

    async def patient(index: int) -> None:
        try:
            results[index] = await trusted_read(xs, paths[index])
        except NotFound:
            results[index] = None

    await gather_bounded(again, patient)
    return results
