"""A scripted XenStore daemon on a real unix socket: each test says frame by frame what the daemon does,
including what no real daemon should (wrong req_ids, replies of another op, half frames, silence).

``scripted(script)`` serves one connection with ``script(peer)`` and yields the socket path.
``answer_as(peer, flavour)`` answers ordinary requests as C xenstored 4.22, C 4.17 or oxenstored 4.17 would
(from ../shared/docs/xenstore-protocol.md), on a small in-memory tree, so that a script can misbehave only
where it means to.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import trio

from actors.xs.wire import HEADER, SPECIAL_PATHS, Frame, FrameDecoder, Op, encode, join, split

__all__ = ["Gate", "Peer", "answer_as", "scripted"]


class Gate:
    """Holds a scripted daemon's answers: closed, it answers nothing (as a SIGSTOPped daemon would: requests
    wait, unread); open, each answer after ``delay`` seconds (a daemon that answers, slowly)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self._open = trio.Event()
        self._open.set()

    def close(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def open(self) -> None:
        self._open.set()

    async def passed(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        if self.delay:
            await trio.sleep(self.delay)


class Peer:
    """The daemon side of one connection: frames in, frames out."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(allow_unknown_ops=True)
        self.queue: list[Frame] = []
        self.received: list[Frame] = []  # every frame the client sent, in order
        self._sending = trio.Lock()  # a test may send events while the script answers

    async def send(self, data: bytes) -> None:
        async with self._sending:
            await self.stream.send_all(data)

    async def receive(self) -> Frame:
        while not self.queue:
            data = await self.stream.receive_some(65536)
            if not data:
                raise trio.EndOfChannel
            self.queue += self.decoder.feed(data)
        frame = self.queue.pop(0)
        self.received.append(frame)
        return frame

    async def answer_everything(self, payload: bytes = b"OK\0") -> None:
        while True:
            await self.reply(await self.receive(), payload)

    async def reply(
        self, request: Frame, payload: bytes, op: int | None = None, req_id: int | None = None
    ) -> None:
        # Packed here, not with wire.encode: a daemon may answer with more than 4096 bytes (oxenstored does).
        op = request.op if op is None else op
        req_id = request.req_id if req_id is None else req_id
        await self.send(HEADER.pack(op, req_id, request.tx_id, len(payload)) + payload)

    async def error(self, request: Frame, name: str) -> None:
        await self.reply(request, name.encode() + b"\0", op=Op.ERROR)

    async def event(self, path: str, token: str) -> None:
        await self.send(encode(Op.WATCH_EVENT, join(path, token)))


@asynccontextmanager
async def scripted(script: Callable[[Peer], Awaitable[None]]) -> AsyncIterator[str]:
    """Serve one connection on a fresh unix socket with ``script``; yields the socket path. The script ends
    the connection by returning."""
    folder = tempfile.mkdtemp(prefix="mtw", dir="/tmp")
    path = os.path.join(folder, "socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))

    async def serve() -> None:
        stream = await trio_listener.accept()
        async with stream:
            with suppress(trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                await script(Peer(stream))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield path
            nursery.cancel_scope.cancel()
    finally:
        await trio_listener.aclose()
        os.unlink(path)
        os.rmdir(folder)


# -- answering as a real daemon does -------------------------------------------------------------------------

C422_FEATURES = 14  # ERROR | WATCHDEPTH | DOMID_ANY, what C 4.22 answers dom0
C422_QUOTAS = ("nodes", "watches", "outstanding", "memory", "soft-memory", "transactions", "transaction-nodes",
               "node-permissions", "path-max", "node-size")  # fmt: skip


async def answer_as(
    peer: Peer, flavour: str, tree: dict[str, bytes] | None = None, gate: Gate | None = None
) -> None:
    """Answer every request as ``flavour`` ("c422", "c417", "oxenstored") does, until the client leaves; each
    only once through ``gate``, when given.

    The tree is flat (path -> value); listings are derived from it. Watches fire their registration event.
    oxenstored leaves RESET_WATCHES unanswered and a frame with an empty payload unread until more bytes
    come, as the real one (Debian's 4.17) does.
    """
    nodes = {"/": b"", **(tree or {})}
    quotas = dict.fromkeys(C422_QUOTAS, 1000)
    unread: list[Frame] = []
    while True:
        request = await peer.receive()
        if gate is not None:
            await gate.passed()
        if flavour == "oxenstored" and not request.payload:
            # oxenstored reads a frame with an empty payload only when more bytes come after it.
            unread.append(request)
            continue
        for frame in [*unread, request]:
            await _answer_one(peer, flavour, frame, nodes, quotas)
        unread.clear()


async def _answer_one(
    peer: Peer, flavour: str, request: Frame, nodes: dict[str, bytes], quotas: dict[str, int]
) -> None:
    args = split(request.payload)
    reply = _answer(flavour, request, args, nodes, quotas)
    if reply is None:
        return
    if isinstance(reply, str):
        await peer.error(request, reply)
    else:
        await peer.reply(request, reply)
    if request.op == Op.WATCH and not isinstance(reply, str):
        await peer.event(args[0].decode(), args[1].decode())


def _children(nodes: dict[str, bytes], path: str) -> list[bytes]:
    prefix = path.rstrip("/") + "/"
    return sorted(
        {p[len(prefix) :].split("/")[0].encode() for p in nodes if p.startswith(prefix) and p != prefix}
    )


def _answer(
    flavour: str, request: Frame, args: list[bytes], nodes: dict[str, bytes], quotas: dict[str, int]
) -> bytes | str | None:
    op = request.op
    if op in (Op.GET_FEATURE, Op.SET_FEATURE, Op.GET_QUOTA, Op.SET_QUOTA):
        return _answer_422(op, args, quotas) if flavour == "c422" else "ENOSYS"
    if op in (Op.DIRECTORY, Op.DIRECTORY_PART):
        return _answer_listing(flavour, op, args, nodes)
    if op == Op.RESET_WATCHES:
        return None if flavour == "oxenstored" else b"OK\0"
    if op == Op.WATCH:
        return "EINVAL" if len(args) > 2 and flavour != "c422" else b"OK\0"
    if op == Op.READ:
        return nodes.get(args[0].decode(), "ENOENT")
    if op == Op.GET_PERMS:  # every node dom0's, as dom0's writes make them
        return b"n0\0" if args[0].decode() in nodes else "ENOENT"
    if op == Op.WRITE:
        path, _, value = request.payload.partition(b"\0")
        nodes[path.decode()] = value
        return b"OK\0"
    if op == Op.TRANSACTION_START:
        return b"1\0"
    if op in (Op.UNWATCH, Op.MKDIR, Op.RM, Op.SET_PERMS, Op.TRANSACTION_END, Op.INTRODUCE, Op.RELEASE):
        return b"OK\0"
    return "ENOSYS"


def _answer_422(op: int, args: list[bytes], quotas: dict[str, int]) -> bytes | str:
    if op == Op.GET_FEATURE:
        return f"{C422_FEATURES}".encode() + b"\0"
    if op == Op.SET_FEATURE:
        return b"OK\0" if len(args) == 2 else "EINVAL"
    if op == Op.GET_QUOTA:
        if not args:
            return " ".join(quotas).encode() + b"\0"
        name = args[-1].decode()
        return f"{quotas[name]}".encode() + b"\0" if name in quotas else "EINVAL"
    name = args[-2].decode()
    if name not in quotas:
        return "EINVAL"
    quotas[name] = int(args[-1])
    return b"OK\0"


def _answer_listing(flavour: str, op: int, args: list[bytes], nodes: dict[str, bytes]) -> bytes | str:
    path = args[0].decode()
    names = _children(nodes, path)
    if op == Op.DIRECTORY_PART:
        if flavour == "oxenstored":
            return "ENOSYS"
        return b"1\0" + b"".join(c + b"\0" for c in names)[int(args[1]) :] + b"\0"
    if flavour == "oxenstored" and path == "/":
        names = [*(special.encode() for special in SPECIAL_PATHS), *names]
    return b"".join(n + b"\0" for n in names)
