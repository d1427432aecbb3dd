"""The toolstack half of xenwatch multithreading (the seed's libxl patch), for toolstacks written in Python.

At domain creation, inside the transaction that creates ``/local/domain/<domid>``, the stale mtwatch node is
removed and made anew with permissions ``n0`` (owner dom0; no guest may read or write it). At destruction,
removing the node is the last XenStore operation, in its own transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress

from .runtime.lifecycle.protocol import MTWATCH_ROOT
from .xs.client import Transaction, XenStore
from .xs.errors import ConflictDeadline, NotFound
from .xs.wire import check_domid

__all__ = ["ConflictDeadline", "announce_domain", "mtwatch_path", "retire_domain"]

DEADLINE = 10.0  # seconds a toolstack call keeps redoing its transaction under contention
BACKOFF_FIRST = 0.002


async def _until_committed(
    xs: XenStore, op: str, path: str, body: Callable[[Transaction], Awaitable[None]], deadline: float
) -> None:
    """``xs.run_transaction(body, deadline=...)``, its ConflictDeadline naming ``op`` and ``path``."""
    try:
        await xs.run_transaction(body, backoff=BACKOFF_FIRST, deadline=deadline)
    except ConflictDeadline as exc:
        raise ConflictDeadline(op, path, exc.conflicts, deadline) from None


def mtwatch_path(domid: int, root: str = MTWATCH_ROOT) -> str:
    return f"{root}/{check_domid(domid, guest_only=True)}"


async def announce_domain(
    xs_or_tx: XenStore | Transaction,
    domid: int,
    *,
    identity: bytes | str = b"",
    root: str = MTWATCH_ROOT,
    deadline: float = DEADLINE,
) -> None:
    """Make ``<root>/<domid>`` with value ``identity`` (the domain's UUID, say) and perms ``n0``, removing a
    stale one first. With a connection, in a transaction of its own, redone on conflict until ``deadline``
    seconds have passed (then ConflictDeadline, with the count); with a transaction, inside it, so it can share
    the one that creates ``/local/domain/<domid>`` (the caller redoes that one)."""
    path = mtwatch_path(domid, root)
    value = identity.encode() if isinstance(identity, str) else identity

    async def make(tx: Transaction) -> None:
        with suppress(NotFound):
            await tx.rm(path)
        await tx.write(path, value)
        await tx.set_perms(path, ["n0"])

    if isinstance(xs_or_tx, Transaction):
        await make(xs_or_tx)
    else:
        await _until_committed(xs_or_tx, "announce_domain", path, make, deadline)


async def retire_domain(
    xs_or_tx: XenStore | Transaction, domid: int, *, root: str = MTWATCH_ROOT, deadline: float = DEADLINE
) -> None:
    """Remove ``<root>/<domid>``: meant as the last XenStore operation of a domain's destruction. A node that
    is already gone is fine. Conflicts are redone as for :func:`announce_domain`."""
    path = mtwatch_path(domid, root)

    async def remove(tx: Transaction) -> None:
        with suppress(NotFound):
            await tx.rm(path)

    if isinstance(xs_or_tx, Transaction):
        await remove(xs_or_tx)
    else:
        await _until_committed(xs_or_tx, "retire_domain", path, remove, deadline)
