"""The node operations (read, write, ls, permissions, ...), shared by a connection and a transaction on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from . import builder
from .capabilities import Capabilities
from .errors import NotFound, QuotaExceeded, Unsupported
from .link import Link
from .protocol import DirectoryParts

__all__ = ["Operations"]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Operations:
    """The node operations on ``link``, in transaction ``tx_id`` (0: none); every one raises a typed
    XenStoreError (NotFound, PermissionDenied, ...). ``capabilities`` is the connection's
    :meth:`~actors.xs.client.XenStore.capabilities` (asked before a request that needs a feature)."""

    def __init__(self, link: Link, tx_id: int, capabilities: Callable[[], Awaitable[Capabilities]]) -> None:
        self._link = link
        self._tx_id = tx_id
        self._capabilities = capabilities

    async def read(self, path: str) -> bytes:
        """The node's value (no trailing NUL). NotFound if it does not exist."""
        return await self._link.call(builder.read(path), self._tx_id)

    async def write(self, path: str, value: bytes | str) -> None:
        """Create or replace the node's value (empty is fine); missing parents are created."""
        await self._link.call(builder.write(path, value), self._tx_id)

    async def mkdir(self, path: str) -> None:
        """Create the node with an empty value; an existing node is left as it is."""
        await self._link.call(builder.mkdir(path), self._tx_id)

    async def rm(self, path: str) -> None:
        """Remove the node and its subtree. A missing node is fine when its parent exists (NotFound otherwise)."""
        await self._link.call(builder.rm(path), self._tx_id)

    async def ls(self, path: str) -> list[str]:
        """The names of the node's children.

        A listing too long for one reply (E2BIG from C xenstored) is fetched with DIRECTORY_PART, within
        bounds (ProtocolError past them); oxenstored sends it whole in one long reply instead.
        """
        call = builder.directory(path)
        try:
            return await self._link.call(call, self._tx_id)
        except QuotaExceeded as exc:
            if exc.errno_name != "E2BIG":
                raise
        parts = DirectoryParts(call.payload[:-1], label=path)
        while True:
            reply = await self._link.call(builder.directory_part(parts.next_payload(), path), self._tx_id)
            names = parts.feed(reply)
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
        return await self._link.call(builder.get_perms(path), self._tx_id)

    async def set_perms(self, path: str, perms: Iterable[str]) -> None:
        """Set the node's permissions. DOMID_ANY (``r32757``: every domain) needs a daemon with that feature
        (Xen 4.22): Unsupported, with nothing sent, on one without."""
        call = builder.set_perms(path, perms)
        if builder.grants_domid_any(call):
            caps = await self._capabilities()
            if not caps.features & caps.features.DOMID_ANY:
                raise Unsupported(op="SET_PERMS", path=path, why="the daemon has no DOMID_ANY feature")
        await self._link.call(call, self._tx_id)
