"""Transactions as C xenstored runs them, without copying the store.

A transaction keeps an overlay of the nodes it touched: for each, the node as the transaction sees it and
the generation it had at the first access. The first access reads the global node (a reference: stored
nodes are never changed in place); later accesses see the transaction's own version. Commit checks that
every node the transaction accessed still has the generation it saw (else EAGAIN), then stores the
modified nodes and fires their watches. Watch events of a transaction fire only at commit.
"""

from __future__ import annotations

from typing import Protocol

from .domains import Quotas
from .failure import EAGAIN, ENOMEM, ENOSPC, Fail
from .permissions import Perms
from .store import NO_GENERATION, Node, Store

__all__ = ["Access", "Transaction", "TransactionDaemon", "TransactionPeer", "View"]


class TransactionPeer(Protocol):
    """What a transaction needs of the connection that opened it."""

    @property
    def privileged(self) -> bool: ...

    @property
    def quotas(self) -> Quotas: ...


class _Domains(Protocol):
    def ensure(self, domid: int, generation: int) -> object: ...


class TransactionDaemon(Protocol):
    """What a transaction needs of the daemon: the store, the domains, and firing watches at commit."""

    @property
    def store(self) -> Store: ...

    @property
    def domains(self) -> _Domains: ...

    def fire_watches(
        self, path: bytes, exact: bool, node: Node | None, old_perms: Perms | None, parent: Node | None
    ) -> None: ...


class View(Protocol):
    """The store as one request sees it: the global store, or a transaction's overlay of it."""

    def read(self, path: bytes) -> Node | None: ...

    def write(self, path: bytes, node: Node) -> None: ...

    def delete(self, path: bytes) -> None: ...

    def count(self, domid: int) -> int: ...

    def fire(
        self, path: bytes, exact: bool, node: Node | None, old_perms: Perms | None, parent: Node | None
    ) -> None: ...

    def fail(self) -> None: ...


class Access:
    """A node a transaction accessed (``struct accessed_node``)."""

    __slots__ = ("exact", "fire", "generation", "modified", "node", "old_perms")

    def __init__(self, generation: int | None, node: Node | None) -> None:
        self.generation = generation  # seen at first access; None: written before read, not checked
        self.node = node  # the transaction's version; None: absent
        self.old_perms: Perms | None = None if node is None else node.perms
        self.modified = False
        self.fire = False
        self.exact = False


class Transaction:
    """One open transaction of a connection; it is the :class:`View` of requests carrying its id."""

    def __init__(self, core: TransactionDaemon, conn: TransactionPeer, tx_id: int) -> None:
        self.core = core
        self.conn = conn
        self.id = tx_id
        self.accessed: dict[bytes, Access] = {}
        self.failed = False
        self.node_created = False
        self.delta: dict[int, int] = {}  # owner domid -> nodes created minus nodes removed

    def _access(self, path: bytes) -> Access:
        access = self.accessed.get(path)
        if access is None:
            conn = self.conn
            if not conn.privileged and len(self.accessed) + 1 > conn.quotas.transaction_nodes:
                self.failed = True
                raise Fail(ENOSPC)
            node = self.core.store.get(path)
            access = Access(NO_GENERATION if node is None else node.generation, node)
            self.accessed[path] = access
        return access

    def read(self, path: bytes) -> Node | None:
        access = self.accessed.get(path)
        return access.node if access is not None else self._access(path).node

    def write(self, path: bytes, node: Node) -> None:
        access = self._access(path)
        old = access.node
        core = self.core
        node.generation = core.store.next_generation()
        access.node = node
        access.modified = True
        if old is None:
            self.node_created = True
            self._count(node.owner, 1)
        elif old.owner != node.owner:
            self._count(old.owner, -1)
            self._count(node.owner, 1)
        core.domains.ensure(node.owner, core.store.generation)

    def delete(self, path: bytes) -> None:
        access = self._access(path)
        if access.node is not None:
            self._count(access.node.owner, -1)
        access.node = None
        access.modified = True
        self.core.store.next_generation()

    def count(self, domid: int) -> int:
        """The node count the node quota checks inside a transaction: C 4.17 looks at the committed count
        only; the nodes the transaction adds are checked at commit."""
        return self.core.store.count(domid)

    def fire(
        self, path: bytes, exact: bool, node: Node | None, old_perms: Perms | None, parent: Node | None
    ) -> None:
        """``queue_watches()``: remember to fire at commit; a non-exact event replaces an exact one."""
        access = self.accessed.get(path)
        if access is None:
            self.failed = True
            return
        if not access.fire:
            access.fire = True
            access.exact = exact
        elif not exact:
            access.exact = False

    def fail(self) -> None:
        self.failed = True

    def _count(self, domid: int, delta: int) -> None:
        self.delta[domid] = self.delta.get(domid, 0) + delta

    def commit(self) -> None:
        """Check for conflicts, then store the modified nodes and fire their watches; raises Fail."""
        if self.failed:
            raise Fail(ENOMEM)
        core = self.core
        store = core.store
        if self.node_created and not self.conn.privileged:
            quota = self.conn.quotas.nodes
            for domid, delta in self.delta.items():
                if domid != 0 and store.count(domid) + delta >= quota:
                    raise Fail(ENOSPC)
        nodes = store.nodes
        for path, access in self.accessed.items():
            if access.generation is None:
                continue
            current = nodes.get(path)
            if (NO_GENERATION if current is None else current.generation) != access.generation:
                raise Fail(EAGAIN)
        for path, access in self.accessed.items():
            if access.modified:
                if access.node is None:
                    store.delete(path)
                else:
                    store.put(path, access.node)
            if access.fire:
                core.fire_watches(path, access.exact, None, access.old_perms, None)
