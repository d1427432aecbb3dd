"""One connection's I/O: the reader and writer tasks around the sans-IO :class:`~actors.xs.protocol.
ClientProtocol`, a request's wait for its answer, and the connection's loss.

A :class:`Link` makes the requests of everything built on the connection: the
:class:`~actors.xs.client.XenStore` and its transactions (:meth:`Link.call`) and its pipelines
(:meth:`Link.ready`, :meth:`Link.armed`, :meth:`Link.wake_writer`). It owns the protocol, the request
deadlines (:class:`~actors.xs.deadlines.RequestDeadlines`), the stall detector
(:class:`~actors.xs.stall.StallDetector`) and the watch subscriptions it ends when the connection is lost.
"""

from __future__ import annotations

from typing import TypeVar

import trio

from .builder import Call
from .deadlines import RequestDeadlines
from .errors import ConnectionLost, ConnectionStalled, ProtocolError, RequestTimeout
from .protocol import ClientProtocol, Request, Waker
from .stall import StallDetector
from .subscription import Subscription
from .wire import Op, op_name

__all__ = ["Link"]

T = TypeVar("T")

_RECEIVE_SIZE = 65536


class Link:
    """The I/O of one connection over ``stream``; :func:`~actors.xs.client.open_xenstore` runs its tasks
    (:meth:`reader`, :meth:`writer`, the stall detector's and the deadlines' ``run``).

    ``request_timeout`` (seconds, None for none) bounds every request made from now on. A lost connection
    fails every pending and later request with :class:`ConnectionLost` at once (its ``__cause__`` says why) and
    ends every subscription with it.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        name: str,
        xenbus: bool,
        request_timeout: float | None,
        stall_after: float,
        stall_limit: float | None,
    ) -> None:
        self.name = name
        self.xenbus = xenbus
        self.request_timeout = request_timeout
        self.stream = stream
        self.protocol = ClientProtocol(xenbus=xenbus)
        self.stall = StallDetector(self.protocol, self.mark_lost, stall_after, stall_limit)
        self.deadlines = RequestDeadlines(self.protocol)
        self.subscriptions: dict[str, Subscription] = {}  # token -> the watch() subscription it feeds
        self.watch_errors: dict[str, Exception] = {}  # token -> what its sink raised (see XenStore)
        self.lost: BaseException | None = None  # why the connection is gone
        self._lost_event = trio.Event()
        self._outbox_ready = trio.Event()

    # -- the connection's loss -----------------------------------------------------------------------------

    @property
    def is_lost(self) -> bool:
        return self.lost is not None

    async def wait_lost(self) -> BaseException:
        await self._lost_event.wait()
        assert self.lost is not None
        return self.lost

    def mark_lost(self, why: BaseException) -> None:
        """The connection is gone (the first reason is kept): wake every waiting caller, end the subscriptions."""
        if self.lost is not None:
            return
        self.lost = why
        for request in self.protocol.drain():
            if request.waiter is not None:
                request.waiter.set()
        for sub in self.subscriptions.values():
            sub.close(why)
        self.subscriptions.clear()
        self.protocol.unwatch_all()
        self.stall.connection_lost()
        self._lost_event.set()
        self._outbox_ready.set()

    def lost_error(self) -> ConnectionLost:
        """The error a caller gets on the lost connection: ConnectionStalled if a stall ended it."""
        cls = ConnectionStalled if isinstance(self.lost, ConnectionStalled) else ConnectionLost
        error = cls(f"connection to xenstored ({self.name}) lost: {self.lost}")
        error.__cause__ = self.lost
        return error

    # -- the reader and the writer -------------------------------------------------------------------------

    async def reader(self) -> None:
        protocol = self.protocol
        stall = self.stall
        try:
            while True:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
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
            self.mark_lost(exc)
        except trio.Cancelled:
            # The connection is being closed around us: no reply can arrive any more, so nobody may wait for
            # one (a shielded UNWATCH in some cleanup, say) until its own deadline.
            self.mark_lost(ConnectionLost("connection closed"))
            raise

    def _sinks_failed(self) -> None:
        for token, sink, error in self.protocol.failed_sinks:
            self.watch_errors[token] = error
            sub = getattr(sink, "__self__", None)
            if isinstance(sub, Subscription):
                if self.subscriptions.get(token) is sub:
                    del self.subscriptions[token]
                sub.close(error, lost=False)
        self.protocol.failed_sinks.clear()
        self._outbox_ready.set()  # the UNWATCHes the protocol queued

    async def writer(self) -> None:
        try:
            while self.lost is None:
                writes = self.protocol.data_to_send()
                if not writes:
                    self._outbox_ready = trio.Event()
                    await self._outbox_ready.wait()
                    continue
                for data in writes:  # over xenbus, one frame per write: the device takes whole messages
                    await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.mark_lost(exc)

    def wake_writer(self) -> None:
        """Requests were queued: the writer sends them."""
        self._outbox_ready.set()

    # -- requests ------------------------------------------------------------------------------------------

    async def call(self, call: Call[T], tx_id: int = 0) -> T:
        """Make the request ``call`` (in transaction ``tx_id``) and wait for its answer, decoded; its error
        reply raised as a typed XenStoreError, RequestTimeout past ``request_timeout``, ConnectionLost."""
        op, payload, path, decode = call
        return decode(await self.wait(self.armed(self.queued(op, payload, tx_id, path)), path))

    async def request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes:
        """Any request, its payload already made: the answer's payload as it is."""
        return await self.wait(self.armed(self.queued(op, payload, tx_id, path)), path)

    def queued(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> Request:
        self.ready()
        return self.protocol.request(op, payload, tx_id, path)

    def ready(self) -> None:
        """Before a request is queued: ConnectionLost at once on a lost connection; the stall detector told
        when requests begin to be pending."""
        if self.lost is not None:
            raise self.lost_error()
        if not self.protocol.pending:
            self.stall.requests_began()

    def armed(self, request: Request, waiter: Waker | None = None, now: float | None = None) -> Request:
        """A request just queued, for :meth:`wait` (or, with ``waiter``, for a pipeline): its waiter, and its
        deadline from ``request_timeout`` (counted from ``now`` if given: the trio clock)."""
        request.waiter = trio.Event() if waiter is None else waiter
        if self.request_timeout is not None:
            self.deadlines.arm(request, self.request_timeout, now)
        return request

    async def wait(self, request: Request, path: str | None) -> bytes:
        """Wait for the answer of an :meth:`armed` request: its payload, or its error raised."""
        done = request.waiter
        assert isinstance(done, trio.Event)  # set when queued: the reply may come before this waits
        self._outbox_ready.set()
        try:
            await done.wait()  # set by the reply, the connection's loss or the request's deadline
        finally:
            # Cancelled or timed out: forget the request, so its late reply is discarded.
            if request.reply is None:
                self.protocol.abandon(request)
        answer = request.reply
        if answer is None:
            if self.lost is not None:
                raise self.lost_error()
            raise RequestTimeout.of(op_name(request.op), path, request.timeout, self.name)
        if answer.op == Op.ERROR:
            error = answer.error(path, op_name(request.op))
            assert error is not None
            raise error
        return answer.payload
