"""The node operations (read, write, ls, permissions, ...), shared by a connection and a transaction on it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .capabilities import Capabilities
from .errors import NotFound, QuotaExceeded, Unsupported
from .protocol import DirectoryParts
from .wire import DOMID_ANY, Op, check_path, check_perms, join, texts


class Connection(Protocol):
    """What the node operations need of a connection (the client's :class:`~actors.xs.client.XenStore`)."""

    async def _request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes: ...

    async def capabilities(self) -> Capabilities: ...


__all__ = ["Connection", "Operations"]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Operations:
    """The node operations; every one raises a typed XenStoreError (NotFound, PermissionDenied, ...)."""

    _tx_id: int

    @property
    def _conn(self) -> Connection:
        raise NotImplementedError

    async def _call(self, op: Op, payload: bytes, path: str | None = None) -> bytes:
        return await self._conn._request(op, payload, self._tx_id, path)

    async def read(self, path: str) -> bytes:
        """The node's value (no trailing NUL). NotFound if it does not exist."""
        return await self._call(Op.READ, join(check_path(path)), path)

    async def write(self, path: str, value: bytes | str) -> None:
        """Create or replace the node's value (empty is fine); missing parents are created."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        await self._call(Op.WRITE, join(check_path(path), terminate=False) + b"\0" + data, path)

    async def mkdir(self, path: str) -> None:
        """Create the node with an empty value; an existing node is left as it is."""
        await self._call(Op.MKDIR, join(check_path(path)), path)

    async def rm(self, path: str) -> None:
        """Remove the node and its subtree. A missing node is fine when its parent exists (NotFound otherwise)."""
        await self._call(Op.RM, join(check_path(path)), path)

    async def ls(self, path: str) -> list[str]:
        """The names of the node's children.

        A listing too long for one reply (E2BIG from C xenstored) is fetched with DIRECTORY_PART, within
        bounds (ProtocolError past them); oxenstored sends it whole in one long reply instead.
        """
        raw = check_path(path)
        try:
            reply = await self._call(Op.DIRECTORY, join(raw), path)
        except QuotaExceeded as exc:
            if exc.errno_name != "E2BIG":
                raise
            return await self._ls_parts(raw, path)
        return texts(reply)

    async def _ls_parts(self, raw: bytes, path: str) -> list[str]:
        parts = DirectoryParts(raw, label=path)
        while True:
            names = parts.feed(await self._call(Op.DIRECTORY_PART, parts.next_payload(), path))
            if names is not None:
                return [_text(name) for name in names]

    async def exists(self, path: str) -> bool:
        try:
            await self.read(path)
        except NotFound:
            return False
        return True

    async def get_perms(self, path: str) -> list[str]:
        """Permissions as strings like ``["n0", "r5"]``: the first names the owner and everybody's default."""
        return texts(await self._call(Op.GET_PERMS, join(check_path(path)), path))

    async def set_perms(self, path: str, perms: Iterable[str]) -> None:
        """Set the node's permissions. DOMID_ANY (``r32757``: every domain) needs a daemon with that feature
        (Xen 4.22): Unsupported, with nothing sent, on one without."""
        raw = check_perms(perms)
        if any(int(perm[1:]) == DOMID_ANY for perm in raw):
            caps = await self._conn.capabilities()
            if not caps.features & caps.features.DOMID_ANY:
                raise Unsupported(op="SET_PERMS", path=path, why="the daemon has no DOMID_ANY feature")
        await self._call(Op.SET_PERMS, join(check_path(path), *raw), path)
