"""Transactions on a connection: :meth:`transaction` (one try) and :meth:`run_transaction` (redone whole on
conflict, for a number of tries or until a deadline)."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Generic, TypeVar

import trio

from .errors import ConflictDeadline, ProtocolError, TransactionConflict, XenStoreError
from .wire import Op

__all__ = ["TransactionOperations"]

T = TypeVar("T")
TxT = TypeVar("TxT")

_CLEANUP_TIMEOUT = 5.0  # an abort in cleanup waits no longer than this
_BACKOFF_MAX = 1.0  # the backoff's ceiling: 50 tasks at once on one directory need up to this much room


class TransactionOperations(Generic[TxT]):
    """Mixed into :class:`~actors.xs.client.XenStore`; ``TxT`` is its :class:`~actors.xs.client.Transaction`."""

    async def _request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes:
        raise NotImplementedError

    def _transaction(self, tx_id: int) -> TxT:
        raise NotImplementedError

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TxT]:
        """``async with xs.transaction() as tx:``: a clean exit commits (TransactionConflict if a concurrent
        change got in first), an exception or cancellation aborts. ProtocolError if the daemon's transaction
        id is not a number."""
        reply = (await self._request(Op.TRANSACTION_START, b"\0")).rstrip(b"\0")
        if not reply.isdigit() or not 0 < int(reply) <= 0xFFFFFFFF:
            raise ProtocolError(f"TRANSACTION_START: the daemon's transaction id {reply[:40]!r} is not valid")
        tx_id = int(reply)
        try:
            yield self._transaction(tx_id)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT), suppress(XenStoreError):
                await self._request(Op.TRANSACTION_END, b"F\0", tx_id)
            raise
        await self._request(Op.TRANSACTION_END, b"T\0", tx_id)

    async def run_transaction(
        self,
        fn: Callable[[TxT], Awaitable[T]],
        *,
        attempts: int = 16,
        backoff: float = 0.001,
        deadline: float | None = None,
    ) -> T:
        """Run ``fn(tx)`` in a transaction, redone whole on conflict (EAGAIN) after a randomized backoff (full
        jitter, from ``backoff`` doubling up to 1 s, so that many tasks contending for one directory spread out).

        Without ``deadline``: at most ``attempts`` tries, then the last TransactionConflict. With ``deadline``
        (seconds; ``attempts`` is then ignored): tries until that much time has passed, then
        :class:`~actors.xs.errors.ConflictDeadline` (a TransactionConflict) with the count of conflicts.
        """
        give_up = None if deadline is None else trio.current_time() + deadline
        for attempt in itertools.count():
            try:
                async with self.transaction() as tx:
                    result = await fn(tx)
                return result
            except TransactionConflict:
                if give_up is None and attempt + 1 >= attempts:
                    raise
            left = float("inf") if give_up is None else give_up - trio.current_time()
            if left <= 0:
                assert deadline is not None
                raise ConflictDeadline("run_transaction", None, attempt + 1, deadline)
            ceiling = min(_BACKOFF_MAX, backoff * 2 ** min(attempt, 16))
            await trio.sleep(min(left, random.uniform(0, ceiling)))
        raise AssertionError("unreachable")
