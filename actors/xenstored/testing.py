"""A raw-frame XenStore client for tests: it sends exactly the bytes it is told to and hands back the
frames it gets, with no checks of its own: unknown ops and replies longer than 4096 bytes (oxenstored sends
those) come through. (It is not the project's client, :mod:`actors.xs.client`.)"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import trio

from actors.xs.errors import ProtocolError
from actors.xs.wire import Frame, FrameDecoder, Op, encode, join, op_name

from .domains import Quotas
from .server import XenStored, open_xenstored
from .sockets import connect_unix

__all__ = ["RawClient", "XsError", "serving"]


@asynccontextmanager
async def serving(quotas: Quotas | None = None, compat: str = "4.22") -> AsyncIterator[tuple[XenStored, str]]:
    """A server on a fresh socket under /tmp (short enough for AF_UNIX): yields (server, socket path)."""
    directory = tempfile.mkdtemp(prefix="xsd-", dir="/tmp")
    path = os.path.join(directory, "socket")
    try:
        async with open_xenstored(path, quotas=quotas, compat=compat) as server:
            yield server, path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class XsError(Exception):
    """An ERROR reply; ``name`` is the errno name (``"ENOENT"``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


LONG_FRAME_MAX = 1 << 20  # a header announcing more is garbage: end the connection rather than wait for it


class RawClient:
    """One connection: ``request()`` sends a frame and returns its reply; watch events queue up."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        # Any op, and up to LONG_FRAME_MAX payload bytes: past that the stream is garbage.
        self._decoder = FrameDecoder(allow_unknown_ops=True, max_payload=LONG_FRAME_MAX)
        self._frames: deque[Frame] = deque()
        self.events: deque[tuple[bytes, bytes]] = deque()
        self._req_id = 0

    @classmethod
    async def connect(cls, path: str) -> RawClient:
        """Connect to the unix socket ``path`` (waiting for room in a full listen backlog)."""
        return cls(await connect_unix(path))

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    @staticmethod
    def frame(op: int, payload: bytes, tx_id: int = 0, req_id: int = 0) -> bytes:
        """The bytes of one frame (to send several at once with :meth:`send_raw`)."""
        return encode(op, payload, req_id, tx_id)

    def next_req_id(self) -> int:
        self._req_id += 1
        return self._req_id

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, op: int, payload: bytes, tx_id: int = 0, req_id: int | None = None) -> int:
        rid = self.next_req_id() if req_id is None else req_id
        await self.stream.send_all(encode(op, payload, rid, tx_id))
        return rid

    async def recv_frame(self) -> Frame:
        """The next frame of any kind; raises EOFError when the server closed the connection."""
        while not self._frames:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed by the server")
            try:
                self._frames.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                raise EOFError(f"{exc}: the stream is garbage") from exc
        return self._frames.popleft()

    async def reply(self, req_id: int) -> Frame:
        """The reply to ``req_id``; watch events read meanwhile go to :attr:`events`."""
        while True:
            frame = await self.recv_frame()
            if frame.op == Op.WATCH_EVENT:
                path, token = frame.payload.split(b"\0")[:2]
                self.events.append((path, token))
                continue
            if frame.req_id == req_id:
                return frame

    async def request(self, op: int, payload: bytes, tx_id: int = 0) -> Frame:
        return await self.reply(await self.send(op, payload, tx_id))

    async def error(self, op: int, payload: bytes, tx_id: int = 0) -> str:
        """The error name of a request that must fail (AssertionError if it succeeds)."""
        try:
            reply = await self.call(op, payload, tx_id)
        except XsError as exc:
            return exc.name
        raise AssertionError(f"{op_name(op)} succeeded: {reply!r}")

    async def call(self, op: int, payload: bytes, tx_id: int = 0) -> bytes:
        """The reply payload; raises :class:`XsError` for an ERROR reply."""
        frame = await self.request(op, payload, tx_id)
        if frame.op == Op.ERROR:
            raise XsError(frame.payload.rstrip(b"\0").decode())
        return frame.payload

    async def event(self) -> tuple[bytes, bytes]:
        """The next watch event (path, token)."""
        while not self.events:
            frame = await self.recv_frame()
            if frame.op == Op.WATCH_EVENT:
                path, token = frame.payload.split(b"\0")[:2]
                self.events.append((path, token))
        return self.events.popleft()

    async def no_event(self, wait: float = 0.05) -> None:
        """Assert that no watch event arrives within ``wait`` seconds."""
        with trio.move_on_after(wait):
            event = await self.event()
            raise AssertionError(f"unexpected watch event {event!r}")

    # -- conveniences (payloads as the C library builds them) -----------------------------------------

    async def read(self, path: str, tx: int = 0) -> bytes:
        return await self.call(Op.READ, join(path), tx)

    async def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        await self.call(Op.WRITE, join(path, value, terminate=False), tx)

    async def mkdir(self, path: str, tx: int = 0) -> None:
        await self.call(Op.MKDIR, join(path), tx)

    async def rm(self, path: str, tx: int = 0) -> None:
        await self.call(Op.RM, join(path), tx)

    async def ls(self, path: str, tx: int = 0) -> list[bytes]:
        return (await self.call(Op.DIRECTORY, join(path), tx)).split(b"\0")[:-1]

    async def get_perms(self, path: str, tx: int = 0) -> list[bytes]:
        return (await self.call(Op.GET_PERMS, join(path), tx)).split(b"\0")[:-1]

    async def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        await self.call(Op.SET_PERMS, join(path, *perms), tx)

    async def watch(self, path: str, token: str) -> None:
        await self.call(Op.WATCH, join(path, token))

    async def unwatch(self, path: str, token: str) -> None:
        await self.call(Op.UNWATCH, join(path, token))

    async def start(self) -> int:
        return int((await self.call(Op.TRANSACTION_START, b"\0")).rstrip(b"\0"))

    async def end(self, tx: int, commit: bool = True) -> None:
        await self.call(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
