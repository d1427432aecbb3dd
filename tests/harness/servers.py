"""The daemons a test runs against, as the conformance suite sees them: the embedded xenstored or a real one
(:class:`Server`), and what each answers where the real daemons differ (:func:`answer`)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

import trio

from actors.xenstored import XenStored

__all__ = ["Embedded", "Server", "answer"]


class Server(Protocol):
    """What the conformance suite needs of a daemon, embedded or real."""

    name: str  # "embedded", "cxenstored" or "oxenstored"
    socket_path: str

    def guest(self, domid: int) -> AbstractAsyncContextManager[trio.abc.Stream]: ...

    def domain_died(self, domid: int) -> None: ...


T = TypeVar("T")


def answer(server: Server, default: T, **by_daemon: T) -> T:
    """What ``server`` answers: ``default``, unless ``by_daemon`` names this daemon (where the real daemons
    differ: ``answer(server, "ENOENT", oxenstored="EIO")``)."""
    unknown = set(by_daemon) - {"embedded", "cxenstored", "oxenstored"}
    if unknown:
        raise ValueError(f"no such daemon: {sorted(unknown)}")
    return by_daemon.get(server.name, default)


class Embedded:
    """The embedded xenstored with the face the conformance suite expects."""

    name = "embedded"

    def __init__(self, server: XenStored, socket_path: str) -> None:
        self.server = server
        self.socket_path = socket_path

    def guest(self, domid: int) -> AbstractAsyncContextManager[trio.abc.Stream]:
        return self.server.guest(domid)

    def domain_died(self, domid: int) -> None:
        self.server.domain_died(domid)
