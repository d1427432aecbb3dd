"""The XenStore client protocol, sans-IO (h11-style): requests in, bytes out; bytes in, replies and events out.

:class:`ClientProtocol` owns everything about one connection that is not I/O: request ids (per connection,
32 bits, never 0, never one still in use), matching replies to requests by req_id and checking the reply's op,
handing watch events to their sink by token, the xenbus rule that every write() carries exactly one frame, and
the bound on a reply's size. :class:`DirectoryParts` assembles a DIRECTORY_PART listing within bounds.
No trio, no sockets, no clock: the caller passes the time in. The trio :class:`~actors.xs.client.XenStore`
is the I/O around it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from .builder import directory_part_payload, unwatch_payload, watch_payload
from .errors import ProtocolError, TransactionConflict
from .events import WatchEvent
from .wire import PAYLOAD_MAX, Frame, FrameDecoder, Op, encode, op_name, special_domid

__all__ = [
    "DIRECTORY_MAX_BYTES",
    "SOCKET_REPLY_MAX",
    "ClientProtocol",
    "DirectoryParts",
    "Request",
    "Waker",
    "WatchSink",
]

WatchSink = Callable[[WatchEvent], None]

SOCKET_REPLY_MAX: Final = 1 << 20  # oxenstored answers DIRECTORY on a socket in one reply of any length
DIRECTORY_MAX_BYTES: Final = 1 << 20  # a DIRECTORY_PART listing, all chunks together
_ABANDONED_MAX: Final = 1 << 16  # requests whose callers left before the reply, remembered to discard it
_WATCH_OPS: Final = frozenset((int(Op.WATCH), int(Op.UNWATCH)))
_ERROR: Final = int(Op.ERROR)
_WATCH_EVENT: Final = int(Op.WATCH_EVENT)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Waker(Protocol):
    """What wakes a request's caller: a ``trio.Event``, or a pipeline's countdown."""

    def set(self) -> None: ...


class Request:
    """One request on the wire. ``reply`` is set when its answer (the reply or an ERROR frame) arrived.

    ``waiter``, ``deadline`` and ``timeout`` are the I/O layer's to use (a wake-up handle; when the caller
    stops waiting, on its clock, and the timeout that made it); the protocol never touches them.
    """

    __slots__ = ("deadline", "op", "path", "reply", "req_id", "timeout", "tx_id", "waiter")

    def __init__(self, op: int, req_id: int, tx_id: int, path: str | None) -> None:
        self.op = op
        self.req_id = req_id
        self.tx_id = tx_id
        self.path = path
        self.reply: Frame | None = None
        self.waiter: Waker | None = None
        self.deadline: float | None = None
        self.timeout: float | None = None


class _Watch:
    __slots__ = ("initial", "path", "sink", "token")

    def __init__(self, token: str, sink: WatchSink, path: bytes) -> None:
        self.token = token
        self.sink = sink
        self.path = path
        self.initial: bytes | None = path  # the watched path until its registration event was seen


class ClientProtocol:
    """The client side of one XenStore connection, as a pure state machine.

    Send: :meth:`request` (or :meth:`watch`) queues a frame and returns its :class:`Request`;
    :meth:`data_to_send` gives the bytes to write, as a list of writes (one frame per write with ``xenbus``).
    Receive: :meth:`receive_data` takes bytes in any chunking, hands each watch event to its sink at once, and
    returns the requests whose answer arrived. A broken stream (a frame past the size bound, a reply of the
    wrong op, a reply for no request, req_id 0 on anything but a watch event) raises :class:`ProtocolError`,
    and the protocol refuses all further use: the connection is unusable.

    Replies up to ``max_reply`` bytes are accepted: 4096 over xenbus (the kernel's limit), 1 MiB on a socket
    (oxenstored sends long DIRECTORY replies there).
    """

    def __init__(self, *, xenbus: bool = False, max_reply: int | None = None, first_req_id: int = 1) -> None:
        self.xenbus = xenbus
        self.max_reply = max_reply if max_reply is not None else PAYLOAD_MAX if xenbus else SOCKET_REPLY_MAX
        self.unknown_events = 0  # events for a token with no watch (late ones after an unwatch)
        self.error: ProtocolError | None = None
        self.failed_sinks: list[
            tuple[str, WatchSink, Exception]
        ] = []  # see _frame(); the I/O layer empties it
        self._frames = FrameDecoder(allow_unknown_ops=True, max_payload=self.max_reply)
        self._now = 0.0  # the time receive_data() was given, for the events it hands out
        self._done: list[Request] = []  # the requests answered in the data receive_data() was given
        self._next_id = first_req_id & 0xFFFFFFFF or 1
        self._pending: dict[int, Request] = {}
        self._abandoned: OrderedDict[int, int] = OrderedDict()  # req_id -> op
        self._watches: dict[bytes, _Watch] = {}
        self._out: list[bytes] = []

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests sent whose answer has not come yet, including those whose caller left."""
        return len(self._pending) + len(self._abandoned)

    def waiting(self) -> Iterable[Request]:
        """The requests sent whose caller still waits for the answer (a view: do not queue while iterating)."""
        return self._pending.values()

    @property
    def sinks(self) -> dict[str, WatchSink]:
        """The registered watches: token -> sink (a copy)."""
        return {w.token: w.sink for w in self._watches.values()}

    def has_watch(self, token: str) -> bool:
        return token.encode() in self._watches

    # -- sending -------------------------------------------------------------------------------------------

    def request(self, op: int, payload: bytes, tx_id: int = 0, path: str | None = None) -> Request:
        """Queue a request; raises PayloadTooLarge (nothing queued) past 4096 bytes."""
        self._check()
        req_id = self._allocate()
        frame = encode(op, payload, req_id, tx_id)
        request = Request(op, req_id, tx_id, path)
        self._pending[req_id] = request
        self._out.append(frame)
        return request

    def watch(
        self, path: bytes, token: str, sink: WatchSink, depth: int | None = None, *, label: str | None = None
    ) -> Request:
        """Register ``sink`` for ``token`` and queue the WATCH. The sink is in place before the request goes
        out: the registration event may come before the reply. The caller checks the token is free.
        PayloadTooLarge, nothing registered or queued, if the WATCH exceeds the payload limit."""
        key = token.encode()
        payload = watch_payload(path, token, depth)
        self._watches[key] = _Watch(token, sink, path)
        try:
            return self.request(Op.WATCH, payload, 0, label)
        except BaseException:
            del self._watches[key]
            raise

    def unwatch(self, token: str, sink: WatchSink | None = None) -> None:
        """Forget the watch's sink (only if it is ``sink``, when given): its later events are counted in
        ``unknown_events``, not delivered."""
        key = token.encode()
        watch = self._watches.get(key)
        if watch is not None and (sink is None or watch.sink is sink):
            del self._watches[key]

    def unwatch_all(self) -> None:
        self._watches.clear()

    def abandon(self, request: Request) -> None:
        """The caller of ``request`` left (cancelled, timed out): its reply, when it comes, is discarded."""
        if self._pending.get(request.req_id) is request:
            del self._pending[request.req_id]
            self._abandoned[request.req_id] = request.op
            if len(self._abandoned) > _ABANDONED_MAX:
                self._abandoned.popitem(last=False)

    def drain(self) -> list[Request]:
        """The connection is gone: every pending request, now forgotten (their ``reply`` stays None, but for
        those answered in the data that broke the stream)."""
        requests = list(self._pending.values())
        self._pending.clear()
        self._abandoned.clear()
        self._out.clear()
        return requests

    def data_to_send(self) -> list[bytes]:
        """The queued bytes as the writes to make, in order: one per frame over xenbus (the device takes one
        whole message per write()), else one for everything."""
        out, self._out = self._out, []
        if self.xenbus or len(out) <= 1:
            return out
        return [b"".join(out)]

    def _allocate(self) -> int:
        # 0 is what the xenbus device uses for its own acknowledgements: keep it unambiguous.
        while True:
            req_id = self._next_id
            self._next_id = (req_id + 1) & 0xFFFFFFFF or 1
            if req_id not in self._pending and req_id not in self._abandoned:
                return req_id

    # -- receiving -----------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray, now: float = 0.0) -> list[Request]:
        """Feed received bytes; returns the requests answered by them (``reply`` set), in arrival order.

        Watch events go to their sinks from inside this call, stamped ``received_at=now``.
        """
        self._check()
        self._now = now
        done: list[Request] = []
        self._done = done
        try:
            self._frames.feed_each(data, self._frame)
        except ProtocolError as exc:
            self.error = exc
            # The requests answered before the frame that broke the stream are pending again, so that drain()
            # gives them back with their answer, and their callers are woken with the rest.
            for request in done:
                self._pending[request.req_id] = request
            raise
        return done

    def _frame(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        """One frame from the decoder: a reply for :meth:`receive_data` to return, or a watch event for its
        sink (handled here, not in a method of its own: the cost of a call per event counts)."""
        if op != _WATCH_EVENT:
            request = self._reply(op, req_id, tx_id, payload)
            if request is not None:
                self._done.append(request)
            return
        parts = payload.split(b"\0", 2)
        if len(parts) < 2:
            self._fail(f"malformed watch event {payload[:80]!r}")
        path, key = parts[0], parts[1]
        watch = self._watches.get(key)
        if watch is None:
            self.unknown_events += 1
            return
        initial = False
        if watch.initial is not None and path == watch.initial:
            watch.initial = None
            initial = True
        domid = special_domid(path) if path[:1] == b"@" else None
        try:
            watch.sink(
                WatchEvent(path.decode("utf-8", "surrogateescape"), watch.token, self._now, initial, domid)
            )
        except Exception as exc:
            # The sink broke its promise not to raise: that ends its own watch (here, and an UNWATCH nobody
            # waits for), never the connection; the I/O layer reports it from ``failed_sinks``.
            if self._watches.get(key) is watch:
                del self._watches[key]
                self.abandon(self.request(Op.UNWATCH, unwatch_payload(watch.path, watch.token)))
            self.failed_sinks.append((watch.token, watch.sink, exc))

    def _reply(self, op: int, req_id: int, tx_id: int, payload: bytes) -> Request | None:
        # Checked before it leaves the pending table: on a ProtocolError its caller is woken with the rest.
        request = self._pending.get(req_id)
        if request is None:
            abandoned_op = self._abandoned.get(req_id)
            if abandoned_op is not None:  # checked, then dropped: nobody waits for it
                self._check_op(op, abandoned_op, req_id)
                del self._abandoned[req_id]
                return None
            request = self._unmatched(op, req_id)
        else:
            self._check_op(op, request.op, req_id)
        del self._pending[request.req_id]
        request.reply = Frame(op, req_id, tx_id, payload)
        return request

    def _check_op(self, op: int, request_op: int, req_id: int) -> None:
        if op != request_op and op != _ERROR:
            self._fail(f"a {op_name(op)} reply (req_id {req_id}) answers a {op_name(request_op)} request")

    def _unmatched(self, op: int, req_id: int) -> Request:
        if req_id == 0 and self.xenbus and op in _WATCH_OPS:
            # Old xenbus kernels acknowledge WATCH/UNWATCH with req_id 0 (pyxs PR #18): the oldest such request.
            for request in self._pending.values():
                if request.op == op:
                    return request
        if req_id == 0:
            self._fail(f"a {op_name(op)} frame with req_id 0 that is not a watch event")
        self._fail(f"a {op_name(op)} reply with req_id {req_id}, which no request has")
        raise AssertionError("unreachable")

    # -- failure -------------------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _fail(self, why: str) -> None:
        self.error = ProtocolError(why)
        raise self.error


class DirectoryParts:
    """Assemble a listing from DIRECTORY_PART replies (``generation\\0name\\0...``, an extra NUL after the
    last name of the last chunk), within bounds.

    Use: send :meth:`next_payload`, feed the reply to :meth:`feed`, until it returns the names. A changed
    generation restarts the listing (the directory changed meanwhile), at most ``max_restarts`` times
    (then TransactionConflict); a listing past ``max_bytes``, a pass past ``max_rounds`` requests, or a reply
    that is malformed or makes no progress raises ProtocolError.
    """

    def __init__(
        self,
        path: bytes,
        *,
        label: str | None = None,
        max_bytes: int = DIRECTORY_MAX_BYTES,
        max_rounds: int = 1024,
        max_restarts: int = 16,
    ) -> None:
        self.path = path
        self.label = label if label is not None else _text(path)
        self.max_bytes = max_bytes
        self.max_rounds = max_rounds
        self.max_restarts = max_restarts
        self.restarts = 0
        self._names: list[bytes] = []
        self._offset = 0
        self._rounds = 0
        self._generation: bytes | None = None

    def next_payload(self) -> bytes:
        return directory_part_payload(self.path, self._offset)

    def feed(self, reply: bytes) -> list[bytes] | None:
        """The names when the listing is complete, else None (send :meth:`next_payload` again)."""
        generation, sep, rest = reply.partition(b"\0")
        if not sep or not generation.isdigit() or not rest.endswith(b"\0"):
            raise ProtocolError(f"malformed DIRECTORY_PART reply for {self.label!r}: {reply[:80]!r}")
        if self._generation is None:
            self._generation = generation
        elif generation != self._generation:
            self._restart()
            return None
        self._rounds += 1
        last = rest == b"\0" or rest.endswith(b"\0\0")
        chunk = rest[:-1] if last else rest
        if not chunk and not last:
            raise ProtocolError(f"DIRECTORY_PART of {self.label!r} made no progress at offset {self._offset}")
        self._offset += len(chunk)
        if self._offset > self.max_bytes:
            raise ProtocolError(f"listing of {self.label!r} exceeds {self.max_bytes} bytes")
        if chunk:
            self._names.extend(chunk[:-1].split(b"\0"))
        if last:
            return self._names
        if self._rounds >= self.max_rounds:
            raise ProtocolError(
                f"listing of {self.label!r} takes more than {self.max_rounds} DIRECTORY_PART rounds"
            )
        return None

    def _restart(self) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise TransactionConflict("EAGAIN", "DIRECTORY_PART", self.label)
        self._names = []
        self._offset = 0
        self._rounds = 0
        self._generation = None
