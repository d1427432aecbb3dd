"""Many requests sent together and waited for together: :class:`Pipeline`, from :meth:`XenStore.pipeline`.

A request made with ``await xs.read(path)`` costs its caller a trio event, a park and a wake-up; 32,000 of them
(a registry listing the domains of a large host, or the watches of 32,000 starting actors) cost more than the
wire does. A pipeline queues up to ``window`` requests at once, lets one countdown stand for all their waiters,
and wakes its caller once per half window. Each request is still its own on the wire (its own req_id, its own
answer, its own deadline: the connection's ``request_timeout``), and its answer is its own: an error reply is
that request's, raised by :meth:`Answer.result`, never the pipeline's.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

from . import builder
from .builder import Call
from .errors import RequestTimeout, TokenInUse
from .link import Link
from .protocol import Request, WatchSink
from .wire import Op, check_watch_path

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

    __slots__ = ("_decode", "_error", "_op", "_path", "_payload", "_request", "_sink", "_token", "_watched")

    def __init__(self, call: Call[T], watch: tuple[bytes, str, WatchSink] | None = None) -> None:
        self._op, self._payload, self._path, self._decode = call
        self._request: Request | None = None
        self._error: Exception | None = None
        self._watched: bytes | None = None  # a WATCH's path, checked
        self._token: str | None = None
        self._sink: WatchSink | None = None
        if watch is not None:
            self._watched, self._token, self._sink = watch

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


class Pipeline:
    """Requests added with :meth:`read`, :meth:`write`, :meth:`get_perms`, :meth:`is_domain_introduced`,
    :meth:`watch`, :meth:`unwatch`, :meth:`call` and :meth:`request` (each returns its :class:`Answer`, nothing sent yet), then sent with
    ``await pipeline.send()``.

    ``send`` returns once every request has its answer (or its RequestTimeout); it raises ConnectionLost if
    the connection is lost first (the requests not answered then have ConnectionLost as their error too).
    Cancelled, it abandons the requests still in flight (their late answers are discarded; a watch whose WATCH
    was not answered is forgotten, and may stay registered at the daemon until the connection closes, as with
    a cancelled :meth:`~actors.xs.client.XenStore.add_watch`).
    """

    def __init__(self, link: Link, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._link = link
        self._window = window
        self._answers: list[Answer[object]] = []

    def __len__(self) -> int:
        return len(self._answers)

    def _add(self, answer: Answer[T]) -> Answer[T]:
        self._answers.append(answer)  # type: ignore[arg-type]
        return answer

    def read(self, path: str) -> Answer[bytes]:
        return self._add(Answer(builder.read(path)))

    def write(self, path: str, value: bytes | str) -> Answer[None]:
        return self._add(Answer(builder.write(path, value)))

    def get_perms(self, path: str) -> Answer[list[str]]:
        return self._add(Answer(builder.get_perms(path)))

    def is_domain_introduced(self, domid: int) -> Answer[bool]:
        return self._add(Answer(builder.is_domain_introduced(domid)))

    def call(self, call: Call[T]) -> Answer[T]:
        """Any request the :mod:`~actors.xs.builder` makes (the capabilities probe's, say)."""
        return self._add(Answer(call))

    def request(self, op: Op, payload: bytes, path: str | None = None) -> Answer[bytes]:
        """Any request, its payload already made: the answer's payload as it is."""
        return self._add(Answer(Call(op, payload, path, builder.same)))

    def watch(self, path: str, token: str, sink: WatchSink) -> Answer[None]:
        """A WATCH (no depth) whose events go to ``sink`` once sent, as :meth:`~actors.xs.client.XenStore.
        add_watch` does; an error reply (or TokenInUse, with nothing sent) leaves no watch behind."""
        raw = check_watch_path(path)
        call = Call(Op.WATCH, builder.watch_payload(raw, token), path, builder.nothing)  # PayloadTooLarge now
        return self._add(Answer(call, (raw, token, sink)))

    def unwatch(self, path: str, token: str) -> Answer[None]:
        """An UNWATCH; the watch's sink gets no further events from now on, as with :meth:`~actors.xs.client.
        XenStore.remove_watch` (NotFound as the answer's error if the daemon does not know it)."""
        call = builder.unwatch(path, token)
        self._link.protocol.unwatch(token)
        return self._add(Answer(call))

    async def send(self) -> None:
        link = self._link
        answers, self._answers = self._answers, []
        countdown = Countdown()
        window, half = self._window, self._window // 2
        sent = 0
        now = 0.0
        try:
            while sent < len(answers) or countdown.remaining:
                if sent < len(answers) and countdown.remaining < window:
                    link.ready()  # once per window: lost? the stall detector told requests begin
                    now = trio.current_time()
                while sent < len(answers) and countdown.remaining < window:
                    self._queue(link, answers[sent], countdown, now)
                    sent += 1
                link.wake_writer()
                countdown.low = half if sent < len(answers) else 0
                if countdown.remaining > countdown.low:
                    countdown.event = trio.Event()
                    await countdown.event.wait()
                if link.is_lost:
                    break
            await trio.lowlevel.checkpoint()  # a checkpoint even when nothing was waited for
        finally:
            self._settle(link, answers[:sent])
            if link.is_lost:
                for answer in answers[sent:]:  # never sent: the connection went first
                    answer._error = answer._error or link.lost_error()
        if link.is_lost and any(a._request is not None and a._request.reply is None for a in answers[:sent]):
            raise link.lost_error()

    @staticmethod
    def _queue(link: Link, answer: Answer[object], countdown: Countdown, now: float) -> None:
        protocol = link.protocol
        token, sink = answer._token, answer._sink
        if token is not None and protocol.has_watch(token):
            answer._error = TokenInUse(path=answer._path)
            return
        if token is not None:
            assert sink is not None and answer._watched is not None
            request = protocol.watch(answer._watched, token, sink, label=answer._path)
        else:
            request = protocol.request(answer._op, answer._payload, 0, answer._path)
        answer._request = link.armed(request, countdown, now)
        countdown.remaining += 1

    @staticmethod
    def _settle(link: Link, answers: list[Answer[object]]) -> None:
        """Abandon what was not answered; give it its error; undo the watches that did not take."""
        protocol = link.protocol
        for answer in answers:
            request = answer._request
            if request is None:
                continue
            if request.reply is None:
                protocol.abandon(request)
                if link.is_lost:
                    answer._error = link.lost_error()
                else:
                    answer._error = RequestTimeout.of(
                        answer._op.name, answer._path, request.timeout, link.name
                    )
            if answer._token is not None and answer.error is not None:
                protocol.unwatch(answer._token, answer._sink)
