"""Watches: registration per connection, and an index by watched path so that finding the watches a
change fires costs the depth of the changed path, not the number of watches."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["Watch", "WatchIndex", "Watcher", "event_path", "within_depth"]


class Watcher(Protocol):
    """A connection, as watches know it: ``seq`` orders connections as C's connection list does."""

    @property
    def seq(self) -> int: ...


C = TypeVar("C", bound=Watcher)


class Watch(Generic[C]):
    __slots__ = ("conn", "depth", "path", "relative", "seq", "token")

    def __init__(
        self, conn: C, path: bytes, token: bytes, relative: bytes | None, seq: int, depth: int | None
    ) -> None:
        self.conn = conn
        self.path = path  # canonical (absolute) path, or a special "@..." path
        self.token = token
        self.relative = relative  # the implicit prefix stripped from event paths, for a relative watch
        self.seq = seq
        self.depth = depth  # 4.22: levels below ``path`` that fire (0: the node only); None: all


def within_depth(path: bytes, watched: bytes, depth: int) -> bool:
    """``is_child()`` with a depth: is ``path`` (the watched path or below it) at most ``depth`` levels
    below ``watched``?"""
    below = path[len(watched) :]
    levels = below.count(b"/") + (1 if watched == b"/" and below else 0)
    return levels <= depth


def event_path(watch: Watch[C], path: bytes) -> bytes:
    """``get_watch_path()``: the path as the watcher named it (relative for a relative watch)."""
    if watch.relative is None:
        return path
    rest = path[len(watch.relative) :]
    return rest[1:] if rest.startswith(b"/") else rest


class WatchIndex(Generic[C]):
    """Watched path -> watches on it, in registration order."""

    def __init__(self) -> None:
        self._by_path: dict[bytes, list[Watch[C]]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return sum(len(ws) for ws in self._by_path.values())

    def add(
        self, conn: C, path: bytes, token: bytes, relative: bytes | None, depth: int | None = None
    ) -> Watch[C]:
        self._seq += 1
        watch = Watch(conn, path, token, relative, self._seq, depth)
        self._by_path.setdefault(path, []).append(watch)
        return watch

    def remove(self, watch: Watch[C]) -> None:
        watches = self._by_path.get(watch.path)
        if watches is None:
            return
        try:
            watches.remove(watch)
        except ValueError:
            return
        if not watches:
            del self._by_path[watch.path]

    def match(self, path: bytes, exact: bool) -> list[Watch[C]]:
        """The watches a change of ``path`` fires, in C's order (by connection, then registration).

        ``exact``: only watches on ``path`` itself; else also those on every ancestor (``is_child()``).
        """
        by_path = self._by_path
        if not by_path:
            return []
        if exact or path[:1] != b"/":
            found = list(by_path.get(path, ()))
        else:
            found = list(by_path.get(b"/", ()))
            if path != b"/":
                pos = path.find(b"/", 1)
                while pos != -1:
                    found.extend(by_path.get(path[:pos], ()))
                    pos = path.find(b"/", pos + 1)
                found.extend(by_path.get(path, ()))
        if len(found) > 1:
            found.sort(key=lambda w: (w.conn.seq, w.seq))
        return found
