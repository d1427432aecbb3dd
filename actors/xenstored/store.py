"""The tree: one flat table of nodes keyed by absolute path, as C xenstored keeps it in its TDB.

A :class:`Node` is never changed once it is in the store: a write stores a new node object. That makes a
transaction's copy of a node (taken at its first access) a plain reference, with no deep copy.
"""

from __future__ import annotations

import re
from typing import Final

from .permissions import NONE, Perms

__all__ = [
    "NO_GENERATION",
    "Node",
    "Store",
    "basename",
    "child_path",
    "is_valid_nodename",
    "parent_path",
]

NO_GENERATION: Final = -1  # the generation of a node that does not exist
_HEADER_SIZE: Final = 24  # sizeof(struct xs_tdb_record_hdr)
_PERM_SIZE: Final = 8  # sizeof(struct xs_permissions)
_VALID: Final = re.compile(rb"[A-Za-z0-9/_@-]*")
_LOCAL: Final = re.compile(rb"/local/domain/(?:-[0-9]{1,4}|[0-9]{1,5})/")


class Node:
    """One node: value, permissions, children in creation order, generation of its last change."""

    __slots__ = ("_listing", "childlen", "children", "generation", "perms", "value")

    def __init__(
        self,
        value: bytes,
        perms: Perms,
        children: dict[bytes, None] | None = None,
        childlen: int = 0,
        listing: bytes | None = None,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children: dict[bytes, None] = {} if children is None else children
        self.childlen = childlen  # bytes of the NUL-terminated children list
        self.generation = NO_GENERATION
        self._listing = listing

    @property
    def owner(self) -> int:
        return self.perms[0][1]

    def listing(self) -> bytes:
        """The children as the DIRECTORY reply carries them: each name NUL-terminated."""
        if self._listing is None:
            self._listing = b"".join(name + b"\0" for name in self.children)
        return self._listing

    def size(self) -> int:
        """The size of the node's TDB record in C xenstored, which the node-size quota limits."""
        return _HEADER_SIZE + _PERM_SIZE * len(self.perms) + len(self.value) + self.childlen

    def with_value(self, value: bytes) -> Node:
        return Node(value, self.perms, self.children, self.childlen, self._listing)

    def with_perms(self, perms: Perms) -> Node:
        return Node(self.value, perms, self.children, self.childlen, self._listing)

    def with_child(self, name: bytes) -> Node:
        children = dict(self.children)
        children[name] = None
        listing = None if self._listing is None else self._listing + name + b"\0"
        return Node(self.value, self.perms, children, self.childlen + len(name) + 1, listing)

    def without_child(self, name: bytes) -> Node:
        if name not in self.children:
            return self.with_value(self.value)
        children = dict(self.children)
        del children[name]
        return Node(self.value, self.perms, children, self.childlen - len(name) - 1)


class Store:
    """Path -> node, the global generation counter, and how many nodes (and bytes of them) each domain owns."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, Node] = {}
        self.generation = 0
        self.owned: dict[int, int] = {}
        self.owned_bytes: dict[int, int] = {}  # records and paths: CONTROL quota's memory, without a scan
        # setup_structure(): "/", "/tool" and "/tool/xenstored", owned by dom0 with no access for others.
        perms: Perms = ((NONE, 0),)
        xenstored = Node(b"", perms)
        tool = Node(b"", perms).with_child(b"xenstored")
        root = Node(b"", perms).with_child(b"tool")
        for path, node in ((b"/", root), (b"/tool", tool), (b"/tool/xenstored", xenstored)):
            self.put(path, node)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, path: object) -> bool:
        return path in self.nodes

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def get(self, path: bytes) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: bytes, node: Node) -> None:
        """Store ``node`` at ``path`` with a new generation."""
        node.generation = self.next_generation()
        old = self.nodes.get(path)
        self.nodes[path] = node
        if old is None:
            self._count(node.owner, 1)
        else:
            self._weigh(old.owner, -(old.size() + len(path)))
            if old.owner != node.owner:
                self._count(old.owner, -1)
                self._count(node.owner, 1)
        self._weigh(node.owner, node.size() + len(path))

    def delete(self, path: bytes) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.next_generation()
            self._count(old.owner, -1)
            self._weigh(old.owner, -(old.size() + len(path)))

    def count(self, domid: int) -> int:
        return self.owned.get(domid, 0)

    def memory(self, domid: int) -> int:
        """Bytes of the node records (and their paths) ``domid`` owns."""
        return self.owned_bytes.get(domid, 0)

    def _weigh(self, domid: int, delta: int) -> None:
        value = self.owned_bytes.get(domid, 0) + delta
        if value:
            self.owned_bytes[domid] = value
        else:
            self.owned_bytes.pop(domid, None)

    def _count(self, domid: int, delta: int) -> None:
        value = self.owned.get(domid, 0) + delta
        if value:
            self.owned[domid] = value
        else:
            self.owned.pop(domid, None)


def parent_path(path: bytes) -> bytes:
    """``get_parent()``: ``/a/b`` -> ``/a``, ``/a`` -> ``/``."""
    slash = path.rfind(b"/", 1)
    return path[:slash] if slash > 0 else b"/"


def basename(path: bytes) -> bytes:
    return path[path.rfind(b"/") + 1 :]


def child_path(parent: bytes, name: bytes) -> bytes:
    return b"/" + name if parent == b"/" else parent + b"/" + name


def is_valid_nodename(path: bytes, path_max: int) -> bool:
    """``is_valid_nodename()`` of C xenstored 4.17 for a canonical path.

    It starts with ``/``, does not end with ``/`` (but ``/`` itself), has no ``//``, only
    ``[A-Za-z0-9/_@-]``, and at most ``path_max`` bytes once a leading ``/local/domain/<n>/`` is removed.
    """
    if not path.startswith(b"/"):
        return False
    if path.endswith(b"/") and path != b"/":
        return False
    if b"//" in path:
        return False
    local = _LOCAL.match(path)
    if len(path) > (local.end() if local else 0) + path_max:
        return False
    return _VALID.fullmatch(path) is not None
