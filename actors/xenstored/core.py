"""The daemon's state (store, domains, connections, watches) and the node operations the op handlers share.

Nothing here reads or writes a socket: the connections do (:mod:`.connection`), and hand each whole request to
:meth:`Core.process`. Everything here runs synchronously inside one request (or one hypervisor notification),
so no request ever sees another half done, as in the single-threaded C daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

import trio
from loguru import logger

from actors.xs.wire import DOMID_ANY, RELEASE_DOMAIN, SPECIAL_PATHS, Frame, Op

from .connection import Connection
from .domains import DomainTable, Quotas
from .failure import EACCES, EINVAL, EIO, ENOENT, ENOSPC, ENOSYS, Fail
from .permissions import ALL, IGNORE, NONE, READ, Perms, perm_for
from .store import Node, Store, basename, child_path, is_valid_nodename, parent_path
from .transactions import Transaction, View
from .watches import WatchIndex, event_path, within_depth

__all__ = ["COMPATS", "Core", "GlobalView", "Handler", "OpTable"]

COMPATS: Final = ("4.17", "4.22")
_ERROR: Final = int(Op.ERROR)

Handler = Callable[["Core", Connection, Frame, "Transaction | None", View], "bytes | None"]


class OpTable(NamedTuple):
    """The ops a daemon version has: op -> handler, the ops only dom0 may use, the ops that ignore tx_id."""

    handlers: Mapping[int, Handler]
    privileged: frozenset[int]
    notid: frozenset[int]


class GlobalView:
    """The store itself, as a request outside any transaction sees and changes it."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store

    def read(self, path: bytes) -> Node | None:
        return self.store.nodes.get(path)

    def write(self, path: bytes, node: Node) -> None:
        self.store.put(path, node)
        if node.owner not in self.core.domains:
            self.core.domains.ensure(node.owner, self.store.generation)

    def delete(self, path: bytes) -> None:
        self.store.delete(path)

    def count(self, domid: int) -> int:
        return self.store.count(domid)

    def fire(
        self, path: bytes, exact: bool, node: Node | None, old_perms: Perms | None, parent: Node | None
    ) -> None:
        self.core.fire_watches(path, exact, node, old_perms, parent)

    def fail(self) -> None:
        pass


class Core:
    """Store, domains, connections and watches; ``process()`` runs one request.

    ``compat`` is the C xenstored version answered as: "4.22" (features, quotas per domain, watch depth,
    domid-carrying special events, DOMID_ANY) or "4.17" (none of it: ENOSYS for ops 23-26).
    """

    def __init__(self, ops: OpTable, quotas: Quotas | None = None, compat: str = "4.22") -> None:
        if compat not in COMPATS:
            raise ValueError(f"compat must be one of {', '.join(COMPATS)}, not {compat!r}")
        self.compat = compat
        self.v422 = compat == "4.22"
        self.any_domain = DOMID_ANY if self.v422 else None  # the domid of "every domain" in permissions
        self.quotas = quotas if quotas is not None else Quotas()
        self.store = Store()
        self.domains: DomainTable[Connection] = DomainTable(lambda: self.quotas)
        self.watches: WatchIndex[Connection] = WatchIndex()
        self.connections: dict[int, Connection] = {}
        self.special_perms: dict[bytes, Perms] = {path.encode(): ((NONE, 0),) for path in SPECIAL_PATHS}
        if self.v422:  # setup_structure(): every domain may watch @releaseDomain
            self.special_perms[RELEASE_DOMAIN.encode()] = ((NONE, 0), (READ, DOMID_ANY))
        self.view = GlobalView(self)
        self.internal_errors = 0  # requests that hit a bug (answered EIO)
        self._conn_seq = 0
        self._handlers = ops.handlers
        self._notid = ops.notid
        self._privileged = ops.privileged

    # -- connections -----------------------------------------------------------------------------------

    def connect(self, stream: trio.abc.Stream | None, domid: int) -> Connection:
        self._conn_seq += 1
        conn = Connection(self, stream, domid, self._conn_seq)
        self.connections[conn.seq] = conn
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection's watches and transactions (``destroy_conn()``)."""
        conn.closed = True
        conn.cancel_scope.cancel()
        self.reset_connection(conn)
        self.connections.pop(conn.seq, None)

    def reset_connection(self, conn: Connection) -> None:
        """``domain_conn_reset()``: drop all watches, transactions and queued output."""
        for watch in conn.watches.values():
            self.watches.remove(watch)
        conn.watches.clear()
        conn.transactions.clear()
        conn.discard_output()

    # -- requests --------------------------------------------------------------------------------------

    def process(self, conn: Connection, frame: Frame) -> None:
        """``process_message()``: run one request and queue its reply."""
        op = frame.op
        handler = self._handlers.get(op)
        try:
            if handler is None:
                raise Fail(ENOSYS)
            if op in self._privileged and not conn.privileged:
                raise Fail(EACCES)
            tx: Transaction | None = None
            if frame.tx_id and op not in self._notid:
                tx = conn.transactions.get(frame.tx_id)
                if tx is None:
                    raise Fail(ENOENT)
            payload = handler(self, conn, frame, tx, tx if tx is not None else self.view)
        except Fail as exc:
            conn.reply(_ERROR, frame.req_id, frame.tx_id, exc.wire_name.encode() + b"\0")
            return
        except Exception:  # a bug: answer, log, and keep serving everybody else
            self.internal_errors += 1
            logger.exception("{} from {!r} failed", frame.op_name, conn)
            conn.reply(_ERROR, frame.req_id, frame.tx_id, b"EIO\0")
            return
        if payload is not None:
            conn.reply(op, frame.req_id, frame.tx_id, payload)

    # -- permissions -----------------------------------------------------------------------------------

    def adjusted(self, perms: Perms, generation: int) -> Perms:
        """``domain_adjust_node_perms()``: IGNORE entries of domains gone or younger than the node."""
        if len(perms) == 1:
            return perms
        domains = self.domains
        out = [perms[0]]
        changed = False
        for bits, domid in perms[1:]:
            if not bits & IGNORE and domid != self.any_domain:
                domain = domains.get(domid)
                if domain is None or domain.generation > generation:
                    bits |= IGNORE
                    changed = True
            out.append((bits, domid))
        return tuple(out) if changed else perms

    def perm(self, conn: Connection, node: Node) -> int:
        if conn.privileged:
            return ALL
        return perm_for(conn, self.adjusted(node.perms, node.generation), self.any_domain)

    def canonical(self, conn: Connection, name: bytes | None) -> bytes | None:
        """``canonicalize()``: a relative path is relative to the connection's /local/domain/<domid>."""
        if name is None or name.startswith((b"/", b"@")):
            return name
        return conn.implicit + b"/" + name

    def get_node(self, view: View, conn: Connection, path: bytes | None, perm: int) -> Node:
        """``get_node()``: the node if ``conn`` has ``perm`` on it; else ENOENT or EACCES, as C decides."""
        if path is None or not is_valid_nodename(path, conn.quotas.path_length):
            raise Fail(EINVAL)
        node = view.read(path)
        if node is not None:
            if conn.privileged or (self.perm(conn, node) & perm) == perm:
                return node
            error = EACCES
        else:
            error = ENOENT
        # errno_from_parents(): do not tell about nodes below a parent the connection may not access.
        if self._ask_parents(view, conn, path) & perm:
            raise Fail(error)
        raise Fail(EACCES)

    def _ask_parents(self, view: View, conn: Connection, path: bytes) -> int:
        while path != b"/":
            path = parent_path(path)
            node = view.read(path)
            if node is not None:
                return self.perm(conn, node)
        return NONE

    # -- changing the tree -----------------------------------------------------------------------------

    def check_size(self, view: View, conn: Connection, node: Node) -> None:
        if not conn.privileged and node.size() >= conn.quotas.node_size:
            view.fail()
            raise Fail(ENOSPC)

    def create_node(self, view: View, conn: Connection, path: bytes, value: bytes) -> Node:
        """``create_node()``: make ``path`` and any missing parents; new nodes inherit the parent's
        permissions, and one created by a guest is owned by that guest."""
        missing = [path]
        parent_name = parent_path(path)
        parent = view.read(parent_name)
        while parent is None:
            if parent_name == b"/":
                raise Fail(ENOENT)
            missing.append(parent_name)
            parent_name = parent_path(parent_name)
            parent = view.read(parent_name)
        if not conn.privileged:
            have = view.count(conn.domid)
            if have + len(missing) > conn.quotas.nodes:
                if have < conn.quotas.nodes:  # C fails the transaction once it has undone a new node
                    view.fail()
                raise Fail(ENOSPC)
        perms = self.adjusted(parent.perms, parent.generation)
        if not conn.privileged:
            perms = ((perms[0][0], conn.domid), *perms[1:])
        missing.reverse()
        new_parent = parent.with_child(basename(missing[0]))
        created: list[tuple[bytes, Node]] = []
        for i, name in enumerate(missing):
            if i + 1 < len(missing):
                child = basename(missing[i + 1])
                node = Node(b"", perms, {child: None}, len(child) + 1)
            else:
                node = Node(value, perms)
            created.append((name, node))
        for _, node in reversed(created):
            self.check_size(view, conn, node)
        self.check_size(view, conn, new_parent)
        for name, node in reversed(created):
            view.write(name, self.persisted(node))
        view.write(parent_name, self.persisted(new_parent, parent.generation))
        return created[-1][1]

    def persisted(self, node: Node, generation: int | None = None) -> Node:
        """``write_node_raw()``: a node is stored with IGNORE on the entries of domains that are gone (or,
        for a node read at ``generation``, younger than it), so a later domain with the same id never
        inherits them (XSA-322)."""
        perms = node.perms
        if len(perms) > 1:
            if generation is not None:
                perms = self.adjusted(perms, generation)
            domains = self.domains
            known = self.any_domain
            if any(not bits & IGNORE and d not in domains and d != known for bits, d in perms[1:]):
                perms = (
                    perms[0],
                    *((bits if d in domains or d == known else bits | IGNORE, d) for bits, d in perms[1:]),
                )
            node.perms = perms
        return node

    def rm_node(self, view: View, path: bytes, parent: Node) -> None:
        """``rm_node()``: remove ``path`` and everything below it, firing watches for each removed node
        (deepest first; the removed path itself also fires the watches on its ancestors)."""
        root = view.read(path)
        if root is None:
            return
        # Post-order walk without recursion (paths can be ~1000 levels deep); children in creation order.
        stack: list[tuple[bytes, Node, Node, list[bytes]]] = [
            (path, root, parent, list(reversed(root.children)))
        ]
        while stack:
            name, node, above, children = stack[-1]
            if children:
                child_name = child_path(name, children.pop())
                try:
                    child = view.read(child_name)
                except Fail:  # e.g. the transaction-nodes quota: C's tree walk stops with EIO
                    raise Fail(EIO) from None
                if child is None:  # a transaction's stale view: C's tree walk stops with EIO
                    raise Fail(EIO)
                stack.append((child_name, child, node, list(reversed(child.children))))
                continue
            stack.pop()
            view.delete(name)
            view.fire(name, name != path, node, None, above)
        view.write(parent_path(path), self.persisted(parent.without_child(basename(path)), parent.generation))

    # -- watches ---------------------------------------------------------------------------------------

    def watch_permitted(
        self, conn: Connection, path: bytes, node: Node | None, old_perms: Perms | None, parent: Node | None
    ) -> bool:
        """XSA-115: an event goes only to a connection that may read the node (before or after the change)
        or its parent."""
        if conn.privileged:
            return True
        if old_perms is not None and perm_for(conn, old_perms, self.any_domain) & READ:
            return True
        if node is None:
            node = self.store.get(path)
            if node is None:
                return False
        if self.perm(conn, node) & READ:
            return True
        if parent is None:
            parent = self.store.get(parent_path(path))
            if parent is None:
                return False
        return bool(self.perm(conn, parent) & READ)

    def fire_watches(
        self, path: bytes, exact: bool, node: Node | None, old_perms: Perms | None, parent: Node | None
    ) -> None:
        """``fire_watches()``: queue an event for every watch on ``path`` (and, unless ``exact``, on its
        ancestors) whose connection may see it."""
        watches = self.watches.match(path, exact)
        if not watches:
            return
        allowed: dict[int, bool] = {}
        for watch in watches:
            if not exact and watch.depth is not None and not within_depth(path, watch.path, watch.depth):
                continue
            conn = watch.conn
            ok = allowed.get(conn.seq)
            if ok is None:
                ok = allowed[conn.seq] = self.watch_permitted(conn, path, node, old_perms, parent)
            if ok:
                conn.send_event(event_path(watch, path), watch.token)
