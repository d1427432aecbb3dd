"""Many requests sent together and waited for together: :class:`Pipeline`, from :meth:`XenStore.pipeline`.

A request made with ``await xs.read(path)`` costs its caller a trio event, a park and a wake-up; 32,000 of them
(a registry listing the domains of a large host, or the watches of 32,000 starting actors) cost more than the
wire does. A pipeline queues up to ``window`` requests at once, lets one countdown stand for all their waiters,
and wakes its caller once per half window. Each request is still its own on the wire (its own req_id, its own
answer, its own deadline: the connection's ``request_timeout``), and its answer is its own: an error reply is
that request's, raised by :meth:`Answer.result`, never the pipeline's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

from .errors import PayloadTooLarge, RequestTimeout, TokenInUse
from .protocol import ClientProtocol, Request, Waker, WatchSink
from .wire import PAYLOAD_MAX, Op, check_domid, check_path, check_watch_path, introduced, texts


class Connection(Protocol):
    """What a pipeline needs of its connection (the client's :class:`~actors.xs.client.XenStore`)."""

    name: str
    _protocol: ClientProtocol
    _outbox_ready: trio.Event

    @property
    def is_lost(self) -> bool: ...

    def _lost_error(self) -> Exception: ...

    def _ready(self) -> None: ...

    def _armed(self, request: Request, waiter: Waker | None = None, now: float | None = None) -> Request: ...


__all__ = ["Answer", "Pipeline"]

T = TypeVar("T")

WINDOW = 512  # requests in flight at once by default


class Countdown:
    """The waiter of every request of one window: the reader (an answer), the connection's loss and the
    request's deadline each call :meth:`set` once per request; the caller is woken when no more than ``low``
    are left. (A deadline first abandons its request, so its late answer does not count it down again.)"""

    __slots__ = ("event", "low", "remaining")

    def __init__(self) -> None:
        self.remaining = 0
        self.low = 0
        self.event = trio.Event()

    def set(self) -> None:
        self.remaining -= 1
        if self.remaining <= self.low:
            self.event.set()


class Answer(Generic[T]):
    """One request's answer, once :meth:`Pipeline.send` returned: :meth:`result` gives it or raises its error."""

    __slots__ = ("_decode", "_error", "_op", "_path", "_payload", "_request", "_sink", "_token")

    def __init__(
        self,
        op: Op,
        payload: bytes,
        path: str | None,
        decode: Callable[[bytes], T],
        watch: tuple[str, WatchSink] | None = None,
    ) -> None:
        self._op = op
        self._payload = payload
        self._path = path
        self._decode = decode
        self._request: Request | None = None
        self._error: Exception | None = None
        self._token: str | None = None
        self._sink: WatchSink | None = None
        if watch is not None:
            self._token, self._sink = watch

    @property
    def failed(self) -> bool:
        """Did the request fail (cheaper than :attr:`error`: no exception is made)?"""
        request = self._request
        return (
            self._error is not None
            or request is None
            or request.reply is None
            or request.reply.op == Op.ERROR
        )

    @property
    def error(self) -> Exception | None:
        """The request's error (an error reply's typed XenStoreError, RequestTimeout, ...), or None."""
        request = self._request
        if self._error is None and request is not None and request.reply is not None:
            reply = request.reply
            if reply.op == Op.ERROR:
                self._error = reply.error(self._path, self._op.name)
        return self._error

    def result(self) -> T:
        """The decoded answer; raises the request's error (NotFound, PermissionDenied, RequestTimeout, ...)."""
        error = self.error
        if error is not None:
            raise error
        request = self._request
        assert request is not None and request.reply is not None, "result() before the pipeline was sent"
        return self._decode(request.reply.payload)


def _nothing(payload: bytes) -> None:
    return None


def _same(payload: bytes) -> bytes:
    return payload


class Pipeline:
    """Requests added with :meth:`read`, :meth:`write`, :meth:`get_perms`, :meth:`is_domain_introduced`,
    :meth:`watch` and :meth:`request` (each returns its :class:`Answer`, nothing sent yet), then sent with
    ``await pipeline.send()``.

    ``send`` returns once every request has its answer (or its RequestTimeout); it raises ConnectionLost if
    the connection is lost first (the requests not answered then have ConnectionLost as their error too).
    Cancelled, it abandons the requests still in flight (their late answers are discarded; a watch whose WATCH
    was not answered is forgotten, and may stay registered at the daemon until the connection closes, as with
    a cancelled :meth:`~actors.xs.client.XenStore.add_watch`).
    """

    def __init__(self, xs: Connection, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._xs = xs
        self._window = window
        self._answers: list[Answer[object]] = []

    def __len__(self) -> int:
        return len(self._answers)

    def _add(self, answer: Answer[T]) -> Answer[T]:
        self._answers.append(answer)  # type: ignore[arg-type]
        return answer

    def read(self, path: str) -> Answer[bytes]:
        return self._add(Answer(Op.READ, check_path(path) + b"\0", path, _same))

    def write(self, path: str, value: bytes | str) -> Answer[None]:
        data = value.encode() if isinstance(value, str) else bytes(value)
        return self._add(Answer(Op.WRITE, check_path(path) + b"\0" + data, path, _nothing))

    def get_perms(self, path: str) -> Answer[list[str]]:
        return self._add(Answer(Op.GET_PERMS, check_path(path) + b"\0", path, texts))

    def is_domain_introduced(self, domid: int) -> Answer[bool]:
        return self._add(Answer(Op.IS_DOMAIN_INTRODUCED, b"%d\0" % check_domid(domid), None, introduced))

    def request(self, op: Op, payload: bytes, path: str | None = None) -> Answer[bytes]:
        """Any request, its payload already made (the capabilities probe's, say): the answer's payload as it is."""
        return self._add(Answer(op, payload, path, _same))

    def watch(self, path: str, token: str, sink: WatchSink) -> Answer[None]:
        """A WATCH (no depth) whose events go to ``sink`` once sent, as :meth:`~actors.xs.client.XenStore.
        add_watch` does; an error reply (or TokenInUse, with nothing sent) leaves no watch behind."""
        raw = check_watch_path(path)
        if len(raw) + len(token.encode()) + 2 > PAYLOAD_MAX:
            raise PayloadTooLarge("watch path and token exceed the payload limit")
        return self._add(Answer(Op.WATCH, raw, path, _nothing, (token, sink)))

    async def send(self) -> None:
        xs = self._xs
        answers, self._answers = self._answers, []
        countdown = Countdown()
        window, half = self._window, self._window // 2
        sent = 0
        now = 0.0
        try:
            while sent < len(answers) or countdown.remaining:
                if sent < len(answers) and countdown.remaining < window:
                    xs._ready()  # once per window: lost? the stall detector told requests begin
                    now = trio.current_time()
                while sent < len(answers) and countdown.remaining < window:
                    self._queue(xs, answers[sent], countdown, now)
                    sent += 1
                xs._outbox_ready.set()
                countdown.low = half if sent < len(answers) else 0
                if countdown.remaining > countdown.low:
                    countdown.event = trio.Event()
                    await countdown.event.wait()
                if xs.is_lost:
                    break
            await trio.lowlevel.checkpoint()  # a checkpoint even when nothing was waited for
        finally:
            self._settle(xs, answers[:sent])
            if xs.is_lost:
                for answer in answers[sent:]:  # never sent: the connection went first
                    answer._error = answer._error or xs._lost_error()
        if xs.is_lost and any(a._request is not None and a._request.reply is None for a in answers[:sent]):
            raise xs._lost_error()

    @staticmethod
    def _queue(xs: Connection, answer: Answer[object], countdown: Countdown, now: float) -> None:
        protocol = xs._protocol
        token, sink = answer._token, answer._sink
        if token is not None and protocol.has_watch(token):
            answer._error = TokenInUse(path=answer._path)
            return
        if token is not None:
            assert sink is not None
            request = protocol.watch(answer._payload, token, sink, label=answer._path)
        else:
            request = protocol.request(answer._op, answer._payload, 0, answer._path)
        answer._request = xs._armed(request, countdown, now)
        countdown.remaining += 1

    @staticmethod
    def _settle(xs: Connection, answers: list[Answer[object]]) -> None:
        """Abandon what was not answered; give it its error; undo the watches that did not take."""
        protocol = xs._protocol
        for answer in answers:
            request = answer._request
            if request is None:
                continue
            if request.reply is None:
                protocol.abandon(request)
                if xs.is_lost:
                    answer._error = xs._lost_error()
                else:
                    answer._error = RequestTimeout.of(answer._op.name, answer._path, request.timeout, xs.name)
            if answer._token is not None and answer.error is not None:
                protocol.unwatch(answer._token, answer._sink)
