"""One client connection: its identity, watches and transactions, and its byte stream.

Requests are processed synchronously, one whole frame at a time, in the order they arrive. Replies and
watch events go to an outgoing queue; everything queued is written with one ``send_all``. A client that
does not read stalls only itself: its own requests stop being read once its queue is long (and, for a
guest, once ``outstanding`` replies are unread); watch events to it are deduplicated while queued
(XSA-326), and a connection whose queue still grows past a hard bound is dropped.
"""

from __future__ import annotations

import os
from typing import Final, Protocol

import trio
from loguru import logger

from actors.xs.errors import ProtocolError
from actors.xs.wire import HEADER, PAYLOAD_MAX, Frame, FrameDecoder, Op

from .domains import Quotas
from .transactions import Transaction
from .watches import Watch

__all__ = ["Connection", "ConnectionDaemon"]


class _Domain(Protocol):
    @property
    def features(self) -> int: ...

    @property
    def quotas(self) -> Quotas: ...


class _Domains(Protocol):
    def get(self, domid: int) -> _Domain | None: ...


class ConnectionDaemon(Protocol):
    """What a connection needs of the daemon: which version it answers as, the quotas and domains, and
    running one request."""

    @property
    def v422(self) -> bool: ...

    @property
    def quotas(self) -> Quotas: ...

    @property
    def domains(self) -> _Domains: ...

    def process(self, conn: Connection, frame: Frame) -> None: ...


_RECEIVE_SIZE: Final = 65536
_EVENT: Final = int(Op.WATCH_EVENT)
_SOFT_QUEUE: Final = 256 * 1024  # stop reading a client's requests while this much waits for it
_HARD_QUEUE: Final = 16 * 1024 * 1024  # drop a privileged connection whose queue grows past this


class _Event:
    """A queued watch event: the frame, its dedup key, and (for a guest) when it expires."""

    __slots__ = ("data", "deadline", "key")

    def __init__(self, data: bytes, key: bytes | None, deadline: float | None) -> None:
        self.data = data
        self.key = key
        self.deadline = deadline


class Connection:
    """A connection as domain ``domid``: dom0 (privileged) for sockets, or a guest domain."""

    def __init__(self, core: ConnectionDaemon, stream: trio.abc.Stream | None, domid: int, seq: int) -> None:
        self.core = core
        self.stream = stream
        self.domid = domid
        self.privileged = domid == 0
        self.target: int | None = None
        self.seq = seq
        self.implicit = b"/local/domain/%d" % domid
        self.watches: dict[tuple[bytes, bytes], Watch[Connection]] = {}  # by (path, token), in order
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.closed = False
        self.broken = False  # the client broke the framing (C: ignore_connection())
        self.cancel_scope = trio.CancelScope()
        self._out: list[bytes | _Event] = []
        self._out_bytes = 0
        self._queued_events: set[bytes] = set()
        self._replies = 0  # replies queued or being written (C: outstanding requests)
        self._sending = False
        self._in_batch = False
        self._wakeup = trio.Event()
        self._drained = trio.lowlevel.ParkingLot()
        self._pending = memoryview(b"")  # taken from the queue, not yet written
        self._pending_replies = 0
        # A socket is read and written directly (one scheduler round per request instead of several).
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    def __repr__(self) -> str:
        return f"<Connection {self.seq} dom{self.domid}{' closed' if self.closed else ''}>"

    @property
    def outstanding(self) -> int:
        """Requests answered whose replies the peer has not read yet (C: ``nboutstanding``)."""
        return self._replies

    @property
    def quotas(self) -> Quotas:
        """The quotas that bind this connection: its domain's own (4.22), else the global ones (4.17)."""
        core = self.core
        if core.v422:
            domain = core.domains.get(self.domid)
            if domain is not None:
                return domain.quotas
        return core.quotas

    @property
    def features(self) -> int:
        """The XENSTORE_SERVER_FEATURE_* bits this connection's domain may use (none before 4.22)."""
        domain = self.core.domains.get(self.domid)
        return domain.features if domain is not None and self.core.v422 else 0

    @property
    def queued_bytes(self) -> int:
        return self._out_bytes

    # -- outgoing --------------------------------------------------------------------------------------

    def reply(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if self.stream is None or self.closed:
            return
        if len(payload) > PAYLOAD_MAX:
            op, payload = int(Op.ERROR), b"E2BIG\0"
        data = HEADER.pack(op, req_id, tx_id, len(payload)) + payload
        self._out.append(data)
        self._out_bytes += len(data)
        self._replies += 1
        self._wake()

    def send_event(self, path: bytes, token: bytes) -> None:
        """``send_event()``: queue ``path\\0token\\0``, unless an identical event is still queued."""
        if self.stream is None or self.closed:
            return
        size = len(path) + len(token) + 2
        if size > PAYLOAD_MAX:
            return
        payload = path + b"\0" + token + b"\0"
        key: bytes | None = None
        if not path.startswith(b"@"):
            if payload in self._queued_events:
                return
            key = payload
        deadline: float | None = None
        if not self.privileged:
            if self._out_bytes + size + HEADER.size >= self.quotas.memory:
                return
            deadline = trio.current_time() + self.quotas.watch_event_timeout
        elif self._out_bytes > _HARD_QUEUE:
            logger.warning("dropping {!r}: {} bytes queued and not read", self, self._out_bytes)
            self.close()
            return
        data = HEADER.pack(_EVENT, 0, 0, size) + payload
        if key is not None:
            self._queued_events.add(key)
        self._out.append(_Event(data, key, deadline))
        self._out_bytes += len(data)
        self._wake()

    def _wake(self) -> None:
        if not self._in_batch and not self._sending:
            self._wakeup.set()

    def _take(self) -> tuple[bytes, int]:
        items = self._out
        self._out = []
        self._out_bytes = 0
        parts: list[bytes] = []
        now: float | None = None
        for item in items:
            if isinstance(item, bytes):
                parts.append(item)
                continue
            if item.key is not None:
                self._queued_events.discard(item.key)
            if item.deadline is not None:
                if now is None:
                    now = trio.current_time()
                if item.deadline < now:
                    continue
            parts.append(item.data)
        replies = self._replies
        return b"".join(parts), replies

    async def flush(self) -> None:
        """Write everything queued; returns at once if another task is writing (it writes it all)."""
        if self._sending or self.stream is None:
            return
        self._sending = True
        try:
            while (self._out or self._pending) and not self.closed:
                if not self._pending:
                    data, self._pending_replies = self._take()
                    self._pending = memoryview(data)
                if self._fd >= 0:
                    await self._write_fd()
                elif self._pending:
                    await self.stream.send_all(self._pending)
                    self._pending = memoryview(b"")
                if not self._pending:
                    self._replies -= self._pending_replies
                    self._pending_replies = 0
                    self._drained.unpark_all()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close()
        finally:
            self._sending = False
            self._drained.unpark_all()

    async def _write_fd(self) -> None:
        """Write ``_pending`` to the socket: straight away while it takes it, else when it is writable."""
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            written = 0
        self._pending = self._pending[written:]
        if self._pending:
            await trio.lowlevel.wait_writable(self._fd)

    async def _receive(self) -> bytes:
        """The next bytes from the client; b"" at its end."""
        if self._fd < 0:
            assert self.stream is not None
            try:
                return bytes(await self.stream.receive_some(_RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        while True:
            # Always wait (a checkpoint) first: a client that never stops sending must not starve others.
            await trio.lowlevel.wait_readable(self._fd)
            try:
                return os.read(self._fd, _RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    def discard_output(self) -> None:
        """Forget everything queued (``conn_free_buffered_data()``)."""
        self._out = []
        self._out_bytes = 0
        self._queued_events.clear()
        self._replies = self._pending_replies  # only those being written are still outstanding
        self._drained.unpark_all()

    # -- lifecycle -------------------------------------------------------------------------------------

    def detach_stream(self) -> None:
        """Go on without a stream: watches and transactions stay, output is dropped."""
        self.stream = None
        self._fd = -1
        self._pending = memoryview(b"")
        self._pending_replies = 0
        self.discard_output()
        self.cancel_scope = trio.CancelScope()  # the old one ended with the stream's tasks

    def close(self) -> None:
        """Drop the connection: its tasks end and :meth:`Core.disconnect` cleans up after it."""
        self.closed = True
        self.cancel_scope.cancel()
        self._drained.unpark_all()

    async def _writer(self) -> None:
        while not self.closed:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.flush()

    async def _wait_writable(self) -> None:
        """Hold back reading requests while this client has too much unread (or, a guest, unanswered)."""
        outstanding = self.quotas.outstanding
        while not self.closed and (
            self._out_bytes > _SOFT_QUEUE or (not self.privileged and self._replies >= outstanding)
        ):
            if (self._out or self._pending) and not self._sending:
                await self.flush()
            else:
                await self._drained.park()

    async def serve(self) -> None:
        """Read and process requests until the client goes away or breaks the framing."""
        assert self.stream is not None
        decoder = FrameDecoder(allow_unknown_ops=True)
        process = self.core.process
        privileged = self.privileged
        outstanding = self.quotas.outstanding
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                try:
                    while not self.closed:
                        await self._wait_writable()
                        data = await self._receive()
                        if not data:
                            break
                        try:
                            frames = decoder.feed(data)
                        except ProtocolError as exc:
                            logger.info("dropping {!r}: {}", self, exc)
                            self.broken = True
                            break
                        for frame in frames:
                            if not privileged and self._replies >= outstanding:
                                await self._wait_writable()
                            self._in_batch = True
                            try:
                                process(self, frame)
                            finally:
                                self._in_batch = False
                            if self.closed:
                                break
                        await self.flush()
                finally:
                    nursery.cancel_scope.cancel()
