"""A trio-native XenStore client: one connection, one reader task, requests from any number of tasks.

Replies are matched to requests by req_id (they may come in any order); watch events are handed to their
watch's sink by token straight from the reader task, which never waits on a consumer. A lost connection fails
every pending and later request with :class:`ConnectionLost` at once and ends every subscription with it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import trio

from .errors import (
    ConnectionLost,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    TransactionConflict,
    XenStoreError,
)
from .subscription import Subscription, WatchEvent
from .transport import open_transport
from .wire import (
    PAYLOAD_MAX,
    Frame,
    FrameDecoder,
    Op,
    check_domid,
    check_path,
    check_perms,
    check_watch_path,
    encode,
    join,
    split,
)

__all__ = ["Transaction", "XenStore", "connect", "open_xenstore"]

T = TypeVar("T")
WatchSink = Callable[[WatchEvent], None]

_RECEIVE_SIZE = 65536


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Reply:
    __slots__ = ("done", "frame", "op")

    def __init__(self, op: int) -> None:
        self.op = op
        self.done = trio.Event()
        self.frame: Frame | None = None


class _Operations:
    """The node operations, shared by the connection itself and a transaction on it."""

    _tx_id: int

    @property
    def _conn(self) -> XenStore:
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
        """The names of the node's children. Listings over 4096 bytes are fetched with DIRECTORY_PART."""
        raw = check_path(path)
        try:
            reply = await self._call(Op.DIRECTORY, join(raw), path)
        except QuotaExceeded as exc:
            if exc.errno_name != "E2BIG":
                raise
            return await self._ls_parts(raw, path)
        return [_text(name) for name in split(reply)]

    async def _ls_parts(self, raw: bytes, path: str) -> list[str]:
        # A changed generation between chunks means the directory changed under us: start over.
        while True:
            names: list[bytes] = []
            offset = 0
            generation: bytes | None = None
            while True:
                reply = await self._call(Op.DIRECTORY_PART, join(raw, str(offset)), path)
                gen, _, rest = reply.partition(b"\0")
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break
                last = rest == b"\0" or rest.endswith(b"\0\0") or not rest
                chunk = rest[:-1] if last and rest else rest
                names.extend(split(chunk))
                offset += len(chunk)
                if last:
                    return [_text(name) for name in names]

    async def exists(self, path: str) -> bool:
        try:
            await self.read(path)
        except NotFound:
            return False
        return True

    async def get_perms(self, path: str) -> list[str]:
        """Permissions as strings like ``["n0", "r5"]``: the first names the owner and everybody's default."""
        return [_text(p) for p in split(await self._call(Op.GET_PERMS, join(check_path(path)), path))]

    async def set_perms(self, path: str, perms: Iterable[str]) -> None:
        await self._call(Op.SET_PERMS, join(check_path(path), *check_perms(perms)), path)


class Transaction(_Operations):
    """Requests inside one XenStore transaction (see :meth:`XenStore.transaction`)."""

    def __init__(self, conn: XenStore, tx_id: int) -> None:
        self._xs = conn
        self._tx_id = tx_id

    @property
    def _conn(self) -> XenStore:
        return self._xs

    @property
    def tx_id(self) -> int:
        return self._tx_id

    @property
    def xs(self) -> XenStore:
        """The connection this transaction runs on."""
        return self._xs


class XenStore(_Operations):
    """One connection to a XenStore daemon. Open it with :func:`connect` or :func:`open_xenstore`."""

    _tx_id = 0

    def __init__(
        self, stream: trio.abc.Stream, *, name: str = "stream", frame_per_write: bool = False
    ) -> None:
        self.name = name
        self._stream = stream
        self._frame_per_write = frame_per_write  # the xenbus device takes one whole message per write()
        self._decoder = FrameDecoder()
        self._req_ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._sinks: dict[str, WatchSink] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._outbox: list[bytes] = []
        self._outbox_ready = trio.Event()
        self._lost: BaseException | None = None
        self._lost_event = trio.Event()
        self._tokens = itertools.count(1)
        self.unknown_events = 0

    @property
    def _conn(self) -> XenStore:
        return self

    # -- connection state --------------------------------------------------------------------------------

    @property
    def is_lost(self) -> bool:
        return self._lost is not None

    async def wait_lost(self) -> BaseException:
        """Wait until the connection is gone; returns why."""
        await self._lost_event.wait()
        assert self._lost is not None
        return self._lost

    def _mark_lost(self, why: BaseException) -> None:
        if self._lost is not None:
            return
        self._lost = why
        for reply in self._pending.values():
            reply.done.set()
        self._pending.clear()
        for sub in self._subscriptions.values():
            sub.close(why)
        self._subscriptions.clear()
        self._sinks.clear()
        self._lost_event.set()
        self._outbox_ready.set()

    def _lost_error(self) -> ConnectionLost:
        return ConnectionLost(f"connection to xenstored ({self.name}) lost: {self._lost}")

    # -- the reader and the writer -----------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    raise ConnectionLost("closed by xenstored")
                now = trio.current_time()
                for frame in self._decoder.feed(bytes(data)):
                    self._dispatch(frame, now)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            ProtocolError,
            ConnectionLost,
        ) as exc:
            self._mark_lost(exc)
        except trio.Cancelled:
            # The connection is being closed around us: no reply can arrive any more, so nobody may wait for
            # one (a shielded UNWATCH in some cleanup, say) until its own deadline.
            self._mark_lost(ConnectionLost("connection closed"))
            raise

    def _dispatch(self, frame: Frame, now: float) -> None:
        if frame.op == Op.WATCH_EVENT:
            parts = split(frame.payload)
            if len(parts) < 2:
                raise ProtocolError(f"malformed watch event {frame.payload[:80]!r}")
            token = _text(parts[1])
            sink = self._sinks.get(token)
            if sink is None:
                self.unknown_events += 1
                return
            sink(WatchEvent(_text(parts[0]), token, now))
            return
        reply = self._pending.pop(frame.req_id, None)
        if reply is None and frame.req_id == 0:
            # Watch acknowledgements through the xenbus device have been seen with req_id 0 (pyxs PR #18).
            reply = self._oldest_pending((Op.WATCH, Op.UNWATCH))
        if reply is None:
            return  # the late reply of a cancelled request
        reply.frame = frame
        reply.done.set()

    def _oldest_pending(self, ops: tuple[Op, ...]) -> _Reply | None:
        for req_id, reply in self._pending.items():
            if reply.op in ops:
                del self._pending[req_id]
                return reply
        return None

    async def _writer(self) -> None:
        try:
            while self._lost is None:
                if not self._outbox:
                    self._outbox_ready = trio.Event()
                    await self._outbox_ready.wait()
                    continue
                if self._frame_per_write:
                    await self._stream.send_all(self._outbox.pop(0))
                else:
                    batch, self._outbox = b"".join(self._outbox), []
                    await self._stream.send_all(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._mark_lost(exc)

    def _next_req_id(self) -> int:
        while True:
            req_id = next(self._req_ids) & 0xFFFFFFFF
            if req_id == 0:  # 0 is what xenbus uses for its own acknowledgements: keep it unambiguous
                continue
            if req_id not in self._pending:
                return req_id

    async def _request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes:
        if self._lost is not None:
            raise self._lost_error()
        req_id = self._next_req_id()
        frame = encode(op, payload, req_id, tx_id)  # PayloadTooLarge before anything is queued
        reply = _Reply(op)
        self._pending[req_id] = reply
        self._outbox.append(frame)
        self._outbox_ready.set()
        try:
            await reply.done.wait()
        finally:
            # Cancelled: forget the slot, so its late reply is discarded.
            if self._pending.get(req_id) is reply:
                del self._pending[req_id]
        answer = reply.frame
        if answer is None:
            raise self._lost_error()
        if answer.op == Op.ERROR:
            error = answer.error(path, op.name)
            assert error is not None
            raise error
        return answer.payload

    # -- domains and the daemon --------------------------------------------------------------------------

    async def get_domain_path(self, domid: int) -> str:
        reply = await self._request(Op.GET_DOMAIN_PATH, join(str(check_domid(domid))))
        return _text(reply.rstrip(b"\0"))

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        """Tell xenstored about a new domain's ring page (``mfn``) and event channel (``port``)."""
        await self._request(Op.INTRODUCE, join(str(check_domid(domid)), str(int(mfn)), str(int(port))))

    async def release(self, domid: int) -> None:
        await self._request(Op.RELEASE, join(str(check_domid(domid))))

    async def is_domain_introduced(self, domid: int) -> bool:
        reply = await self._request(Op.IS_DOMAIN_INTRODUCED, join(str(check_domid(domid))))
        return reply.rstrip(b"\0") == b"T"

    async def resume(self, domid: int) -> None:
        await self._request(Op.RESUME, join(str(check_domid(domid))))

    async def set_target(self, domid: int, target: int) -> None:
        await self._request(Op.SET_TARGET, join(str(check_domid(domid)), str(check_domid(target))))

    async def control(self, *args: str | bytes) -> bytes:
        """XS_CONTROL (``check``, ``quota``, ``help``, ...): the daemon's reply, trailing NUL removed."""
        return (await self._request(Op.DEBUG, join(*args) if args else b"\0")).rstrip(b"\0")

    async def reset_watches(self) -> None:
        """Drop every watch and transaction of this connection, on the daemon and here."""
        await self._request(Op.RESET_WATCHES, b"\0")
        for sub in self._subscriptions.values():
            sub.close()
        self._subscriptions.clear()
        self._sinks.clear()

    # -- transactions ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``async with xs.transaction() as tx:``: a clean exit commits (TransactionConflict if a concurrent
        change got in first), an exception or cancellation aborts."""
        reply = await self._request(Op.TRANSACTION_START, b"\0")
        tx = Transaction(self, int(reply.rstrip(b"\0")))
        try:
            yield tx
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(5), suppress(XenStoreError):
                await self._request(Op.TRANSACTION_END, b"F\0", tx.tx_id)
            raise
        await self._request(Op.TRANSACTION_END, b"T\0", tx.tx_id)

    async def run_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], *, attempts: int = 16, backoff: float = 0.001
    ) -> T:
        """Run ``fn(tx)`` in a transaction, redoing it whole on conflict with a short randomized backoff.

        Raises the last TransactionConflict after ``attempts`` tries.
        """
        for attempt in itertools.count():
            try:
                async with self.transaction() as tx:
                    result = await fn(tx)
                return result
            except TransactionConflict:
                if attempt + 1 >= attempts:
                    raise
                await trio.sleep(random.uniform(0, backoff * 2 ** min(attempt, 10)))
        raise AssertionError("unreachable")

    # -- watches -----------------------------------------------------------------------------------------

    def new_token(self, prefix: str = "mtw") -> str:
        return f"{prefix}{next(self._tokens)}"

    async def add_watch(self, path: str, token: str, sink: WatchSink) -> None:
        """Register a watch whose events the reader task hands to ``sink`` (which must not block or raise).

        The sink is in place before WATCH is sent, so the initial event, which may arrive before the reply,
        is not missed. AlreadyExists if this connection already has ``token``.
        """
        raw = check_watch_path(path)
        if token in self._sinks:
            raise ValueError(f"token {token!r} is already in use on this connection")
        payload = join(raw, token)
        if len(payload) > PAYLOAD_MAX:
            raise ValueError("watch path and token exceed the payload limit")
        self._sinks[token] = sink
        try:
            await self._request(Op.WATCH, payload, 0, path)
        except BaseException:
            if self._sinks.get(token) is sink:
                del self._sinks[token]
            raise

    async def remove_watch(self, path: str, token: str) -> None:
        """Unregister a watch; its sink gets no further events. NotFound if the daemon does not know it."""
        self._sinks.pop(token, None)
        await self._request(Op.UNWATCH, join(check_watch_path(path), token), 0, path)

    @asynccontextmanager
    async def watch(
        self, path: str, token: str | None = None, *, capacity: int = 1024
    ) -> AsyncIterator[Subscription]:
        """``async with xs.watch(path) as events: async for event in events:``

        The initial event is delivered. Leaving the block unwatches, also when cancelled. A slow consumer costs
        bounded memory (see :class:`Subscription`); when the connection is lost, iteration raises ConnectionLost.
        """
        token = token if token is not None else self.new_token()
        sub = Subscription(path, token, capacity)
        await self.add_watch(path, token, sub.deliver)
        self._subscriptions[token] = sub
        try:
            yield sub
        finally:
            self._subscriptions.pop(token, None)
            sub.close()
            if self._lost is None:
                with trio.CancelScope(shield=True), trio.move_on_after(5), suppress(XenStoreError):
                    await self.remove_watch(path, token)


@asynccontextmanager
async def open_xenstore(
    stream: trio.abc.Stream, *, name: str = "stream", frame_per_write: bool = False
) -> AsyncIterator[XenStore]:
    """Run a XenStore client over an already open stream (a socket, the xenbus device, a guest's ring)."""
    xs = XenStore(stream, name=name, frame_per_write=frame_per_write)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(xs._reader)
            nursery.start_soon(xs._writer)
            try:
                yield xs
            except BaseException as exc:
                # Raised again below, outside the nursery, so the caller sees it unwrapped (the reader and
                # writer never raise: they turn their errors into a lost connection).
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        xs._mark_lost(ConnectionLost("connection closed"))
        with trio.CancelScope(shield=True):
            await stream.aclose()
    if body_error is not None:
        raise body_error


@asynccontextmanager
async def connect(path: str | None = None, *, xenbus: bool = False) -> AsyncIterator[XenStore]:
    """``async with actors.connect() as xs:``: connect to xenstored.

    Where: ``path``, else ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket``, else ``/run/xenstored/socket``,
    else ``/var/run/xenstored/socket``; ``xenbus=True`` opens ``/dev/xen/xenbus`` (or ``/proc/xen/xenbus``).
    XenStoreUnavailable (naming the path) when nothing answers there.
    """
    stream, name = await open_transport(path, xenbus=xenbus)
    async with open_xenstore(stream, name=name, frame_per_write=xenbus) as xs:
        yield xs
