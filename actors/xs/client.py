"""A trio-native XenStore client: one connection, one reader task, requests from any number of tasks.

The protocol (request ids, reply matching, watch dispatch, DIRECTORY_PART) is :class:`~actors.xs.protocol.
ClientProtocol`, sans-IO; this module is the I/O around it. Replies are matched to requests by req_id (they may
come in any order); watch events are handed to their watch's sink by token straight from the reader task, which
never waits on a consumer. A lost connection fails every pending and later request with :class:`ConnectionLost`
at once (its ``__cause__`` says why) and ends every subscription with it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict, Unpack

import trio

from .capabilities import Capabilities, DaemonOperations
from .deadlines import RequestDeadlines
from .errors import ConnectionLost, ConnectionStalled, ProtocolError, RequestTimeout
from .operations import Operations
from .pipeline import WINDOW, Pipeline
from .protocol import ClientProtocol, Request, Waker, WatchSink
from .stall import StallDetector, StallFacade
from .subscription import Subscription
from .transactions import TransactionOperations
from .transport import open_transport
from .watches import WatchOperations
from .wire import Op

__all__ = ["ClientOptions", "Transaction", "XenStore", "connect", "open_xenstore"]

_RECEIVE_SIZE = 65536


class ClientOptions(TypedDict, total=False):
    """The connection's settings that :func:`connect` and :func:`open_xenstore` pass on to :class:`XenStore`."""

    request_timeout: float | None
    stall_after: float
    stall_limit: float | None


class Transaction(Operations):
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


class XenStore(
    Operations, DaemonOperations, WatchOperations, TransactionOperations[Transaction], StallFacade
):
    """One connection to a XenStore daemon. Open it with :func:`connect` or :func:`open_xenstore`.

    ``request_timeout`` (seconds, settable, None for none) bounds every request: past it the caller gets
    :class:`RequestTimeout` and the connection is kept. Stall detection (:attr:`stalled`, :attr:`stall_after`,
    :attr:`stall_limit`) is described in :class:`~actors.xs.stall.StallDetector`.

    A watch sink that raises (an ``Exception``) ends its own watch, never the connection: the watch is removed
    (its later events are not delivered, and an UNWATCH goes to the daemon), its error is kept in
    :attr:`watch_errors` (token -> the exception, until the caller removes it), and a :meth:`watch`
    subscription whose sink it was ends by raising that error from its iteration. Every other watch and
    request goes on.
    """

    _tx_id = 0

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        name: str = "stream",
        xenbus: bool = False,
        request_timeout: float | None = None,
        stall_after: float = 2.0,
        stall_limit: float | None = None,
    ) -> None:
        self.name = name
        self.xenbus = xenbus
        self.request_timeout = request_timeout
        self._stream = stream
        self._protocol = ClientProtocol(xenbus=xenbus)
        self._stall = StallDetector(self, stall_after, stall_limit)
        self._deadlines = RequestDeadlines(self._protocol)
        self._subscriptions: dict[str, Subscription] = {}
        self._outbox_ready = trio.Event()
        self._lost: BaseException | None = None
        self._lost_event = trio.Event()
        self._tokens = itertools.count(1)
        self._caps: Capabilities | None = None
        self._caps_lock = trio.Lock()
        self.watch_errors: dict[str, Exception] = {}

    @property
    def _conn(self) -> XenStore:
        return self

    @property
    def _sinks(self) -> dict[str, WatchSink]:
        """The registered watches, token -> sink (a copy; for tests and benchmarks)."""
        return self._protocol.sinks

    def _transaction(self, tx_id: int) -> Transaction:
        return Transaction(self, tx_id)

    @property
    def pending(self) -> int:
        """Requests made on this connection whose answer has not come yet (those whose caller left included)."""
        return self._protocol.pending

    @property
    def unknown_events(self) -> int:
        """Watch events that arrived for a token with no watch (late ones after an unwatch)."""
        return self._protocol.unknown_events

    # -- connection state ----------------------------------------------------------------------------------

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
        for request in self._protocol.drain():
            if request.waiter is not None:
                request.waiter.set()
        for sub in self._subscriptions.values():
            sub.close(why)
        self._subscriptions.clear()
        self._protocol.unwatch_all()
        self._stall.connection_lost()
        self._lost_event.set()
        self._outbox_ready.set()

    def _lost_error(self) -> ConnectionLost:
        cls = ConnectionStalled if isinstance(self._lost, ConnectionStalled) else ConnectionLost
        error = cls(f"connection to xenstored ({self.name}) lost: {self._lost}")
        error.__cause__ = self._lost
        return error

    # -- the reader and the writer -------------------------------------------------------------------------

    async def _reader(self) -> None:
        protocol = self._protocol
        stall = self._stall
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    raise ConnectionLost("closed by xenstored")
                now = trio.current_time()
                stall.frame_received(now)
                for request in protocol.receive_data(data, now):
                    if request.waiter is not None:
                        request.waiter.set()
                if protocol.failed_sinks:
                    self._sinks_failed()
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

    def _sinks_failed(self) -> None:
        for token, sink, error in self._protocol.failed_sinks:
            self.watch_errors[token] = error
            sub = getattr(sink, "__self__", None)
            if isinstance(sub, Subscription):
                if self._subscriptions.get(token) is sub:
                    del self._subscriptions[token]
                sub.close(error, lost=False)
        self._protocol.failed_sinks.clear()
        self._outbox_ready.set()  # the UNWATCHes the protocol queued

    async def _writer(self) -> None:
        try:
            while self._lost is None:
                writes = self._protocol.data_to_send()
                if not writes:
                    self._outbox_ready = trio.Event()
                    await self._outbox_ready.wait()
                    continue
                for data in writes:  # over xenbus, one frame per write: the device takes whole messages
                    await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._mark_lost(exc)

    async def _request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes:
        return await self._wait(self._queue(op, payload, tx_id, path), path)

    def _queue(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> Request:
        self._ready()
        return self._armed(self._protocol.request(op, payload, tx_id, path))

    def _ready(self) -> None:
        """Before a request is queued: ConnectionLost at once on a lost connection; the stall detector told
        when requests begin to be pending."""
        if self._lost is not None:
            raise self._lost_error()
        if not self._protocol.pending:
            self._stall.requests_began()

    def _armed(self, request: Request, waiter: Waker | None = None, now: float | None = None) -> Request:
        """A request just queued, for :meth:`_wait` (or, with ``waiter``, for a pipeline): its waiter, and its
        deadline from ``request_timeout`` (counted from ``now`` if given: the trio clock)."""
        request.waiter = trio.Event() if waiter is None else waiter
        if self.request_timeout is not None:
            self._deadlines.arm(request, self.request_timeout, now)
        return request

    async def _wait(self, request: Request, path: str | None) -> bytes:
        protocol = self._protocol
        done = request.waiter
        assert isinstance(done, trio.Event)  # set when queued: the reply may come before this waits
        self._outbox_ready.set()
        try:
            await done.wait()  # set by the reply, the connection's loss or the request's deadline
        finally:
            # Cancelled or timed out: forget the request, so its late reply is discarded.
            if request.reply is None:
                protocol.abandon(request)
        answer = request.reply
        op_name = _op_name(request.op)
        if answer is None:
            if self._lost is not None:
                raise self._lost_error()
            raise RequestTimeout.of(op_name, path, request.timeout, self.name)
        if answer.op == Op.ERROR:
            error = answer.error(path, op_name)
            assert error is not None
            raise error
        return answer.payload

    def pipeline(self, window: int = WINDOW) -> Pipeline:
        """Requests sent together, up to ``window`` in flight, and waited for together: see
        :class:`~actors.xs.pipeline.Pipeline`."""
        return Pipeline(self, window)

    async def capabilities(self) -> Capabilities:
        """What the daemon answers (features, DIRECTORY_PART, RESET_WATCHES, which daemon): probed with three
        requests every daemon answers the first time, then remembered for the life of the connection."""
        async with self._caps_lock:
            if self._caps is None:
                self._caps = await self._probe()
        return self._caps


def _op_name(op: int) -> str:
    return Op(op).name if op in _OPS else str(op)


_OPS = frozenset(int(op) for op in Op)


@asynccontextmanager
async def open_xenstore(
    stream: trio.abc.Stream,
    *,
    name: str = "stream",
    xenbus: bool = False,
    **options: Unpack[ClientOptions],
) -> AsyncIterator[XenStore]:
    """Run a XenStore client over an already open stream (a socket, the xenbus device, a guest's ring).

    ``xenbus``: the stream is the kernel's xenbus device (one frame per write, replies up to 4096 bytes,
    no watch depth). The other arguments are :class:`XenStore`'s.
    """
    xs = XenStore(stream, name=name, xenbus=xenbus, **options)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(xs._reader)
            nursery.start_soon(xs._writer)
            nursery.start_soon(xs._stall.run)
            nursery.start_soon(xs._deadlines.run)
            try:
                yield xs
            except BaseException as exc:
                # Raised again below, outside the nursery, so the caller sees it unwrapped (the reader, writer
                # and stall watchdog never raise: they turn their errors into a lost connection).
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
async def connect(
    path: str | None = None,
    *,
    xenbus: bool = False,
    **options: Unpack[ClientOptions],
) -> AsyncIterator[XenStore]:
    """``async with actors.connect() as xs:``: connect to xenstored.

    Where: ``path``, else ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket``, else ``/run/xenstored/socket``
    or ``/var/run/xenstored/socket``, whichever exists; with none of them there, ``/dev/xen/xenbus`` (or
    ``/proc/xen/xenbus``) when present (a dom0 whose xenstored runs in a stub domain). ``xenbus=True`` opens the
    device in any case. ``xs.name`` says which transport is in use. XenStoreUnavailable (naming
    what was tried) when nothing answers.
    """
    stream, name, is_xenbus = await open_transport(path, xenbus=xenbus)
    async with open_xenstore(stream, name=name, xenbus=is_xenbus, **options) as xs:
        yield xs
