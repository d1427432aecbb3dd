"""A trio-native XenStore client: one connection, one reader task, requests from any number of tasks.

The protocol (request ids, reply matching, watch dispatch, DIRECTORY_PART) is :class:`~actors.xs.protocol.
ClientProtocol`, sans-IO; the I/O around it is the connection's :class:`~actors.xs.link.Link`, and every request
is made by the :mod:`~actors.xs.builder`. Replies are matched to requests by req_id (they may come in any
order); watch events are handed to their watch's sink by token straight from the reader task, which never
waits on a consumer. A lost connection fails every pending and later request with :class:`ConnectionLost` at
once (its ``__cause__`` says why) and ends every subscription with it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TypedDict, TypeVar, Unpack, overload

import trio
import trio_util

from . import builder
from .capabilities import Capabilities, probe
from .errors import (
    ConflictDeadline,
    ConnectionLost,
    TokenInUse,
    TransactionConflict,
    Unsupported,
    XenStoreError,
)
from .link import Link
from .operations import Operations
from .pipeline import WINDOW, Pipeline
from .protocol import WatchSink
from .subscription import Subscription
from .transport import open_transport
from .wire import Feature, check_watch_path

__all__ = ["ClientOptions", "Transaction", "XenStore", "connect", "open_xenstore"]

T = TypeVar("T")

_CLEANUP_TIMEOUT = 5.0  # an unwatch or an abort in cleanup waits no longer than this
_BACKOFF_MAX = 1.0  # run_transaction's backoff ceiling: 50 tasks at once on one directory need this much room


class ClientOptions(TypedDict, total=False):
    """The connection's settings that :func:`connect` and :func:`open_xenstore` pass on to :class:`XenStore`."""

    request_timeout: float | None
    stall_after: float
    stall_limit: float | None


class Transaction(Operations):
    """Requests inside one XenStore transaction (see :meth:`XenStore.transaction`)."""

    def __init__(self, xs: XenStore, link: Link, tx_id: int) -> None:
        super().__init__(link, tx_id, xs.capabilities)
        self._xs = xs

    @property
    def tx_id(self) -> int:
        return self._tx_id

    @property
    def xs(self) -> XenStore:
        """The connection this transaction runs on."""
        return self._xs


class XenStore(Operations):
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
        link = Link(
            stream,
            name=name,
            xenbus=xenbus,
            request_timeout=request_timeout,
            stall_after=stall_after,
            stall_limit=stall_limit,
        )
        super().__init__(link, 0, self.capabilities)
        self._tokens = itertools.count(1)
        self._caps: Capabilities | None = None
        self._caps_lock = trio.Lock()

    # -- the connection ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Which transport is in use (the socket's path, the xenbus device, ...)."""
        return self._link.name

    @property
    def xenbus(self) -> bool:
        """Is the stream the kernel's xenbus device (one frame per write, no watch depth)?"""
        return self._link.xenbus

    @property
    def request_timeout(self) -> float | None:
        return self._link.request_timeout

    @request_timeout.setter
    def request_timeout(self, value: float | None) -> None:
        self._link.request_timeout = value

    @property
    def watch_errors(self) -> dict[str, Exception]:
        """What a watch's sink raised, by token (see the class); the caller removes what it has seen."""
        return self._link.watch_errors

    @property
    def pending(self) -> int:
        """Requests made on this connection whose answer has not come yet (those whose caller left included)."""
        return self._link.protocol.pending

    @property
    def unknown_events(self) -> int:
        """Watch events that arrived for a token with no watch (late ones after an unwatch)."""
        return self._link.protocol.unknown_events

    @property
    def _sinks(self) -> dict[str, WatchSink]:
        """The registered watches, token -> sink (a copy; for tests and benchmarks)."""
        return self._link.protocol.sinks

    @property
    def is_lost(self) -> bool:
        return self._link.is_lost

    async def wait_lost(self) -> BaseException:
        """Wait until the connection is gone; returns why."""
        return await self._link.wait_lost()

    def pipeline(self, window: int = WINDOW) -> Pipeline:
        """Requests sent together, up to ``window`` in flight, and waited for together: see
        :class:`~actors.xs.pipeline.Pipeline`."""
        return Pipeline(self._link, window)

    async def capabilities(self) -> Capabilities:
        """What the daemon answers (features, DIRECTORY_PART, RESET_WATCHES, which daemon): probed with three
        requests every daemon answers the first time, then remembered for the life of the connection."""
        async with self._caps_lock:
            if self._caps is None:
                self._caps = await probe(self.pipeline())
        return self._caps

    # -- stalls (the link's StallDetector) -----------------------------------------------------------------

    @property
    def stall_after(self) -> float:
        return self._link.stall.stall_after

    @stall_after.setter
    def stall_after(self, value: float) -> None:
        self._link.stall.configure(value, self._link.stall.stall_limit)

    @property
    def stall_limit(self) -> float | None:
        return self._link.stall.stall_limit

    @stall_limit.setter
    def stall_limit(self, value: float | None) -> None:
        self._link.stall.configure(self._link.stall.stall_after, value)

    @property
    def stalled(self) -> trio_util.AsyncBool:
        """True while requests are pending and no frame arrived for ``stall_after`` seconds."""
        return self._link.stall.stalled

    @property
    def stalls(self) -> int:
        """How many stalls began on this connection."""
        return self._link.stall.count

    def stalled_during(self, start: float, end: float) -> bool:
        """Was the connection stalled at any moment of [start, end] (trio clock)? A stall counts from the start
        of its silence (the last frame before it, or when requests began to wait) to the frame that ended it."""
        return self._link.stall.during(start, end)

    def silent_since(self) -> float | None:
        """While requests are pending and the daemon sent nothing since: when that silence began (trio clock);
        None when nothing is pending or a frame came since. A silence becomes a stall at ``stall_after``."""
        return self._link.stall.silent_since()

    async def silent_for(self, seconds: float) -> bool:
        """Does the daemon stay silent (requests pending, nothing received) until the silence is ``seconds``
        long? Returns at once when it already is (True) or nothing is pending (False); False as soon as a frame
        arrives; True if the connection is lost meanwhile. For a verdict that must not blame a wait on a
        daemon that stopped answering on whoever waited, without waiting for ``stall_after``."""
        return await self._link.stall.silent_for(seconds)

    async def next_frame(self) -> None:
        """Wait until the daemon sends its next frame, or the connection is lost."""
        await self._link.stall.next_frame()

    # -- watches -------------------------------------------------------------------------------------------

    def new_token(self, prefix: str = "mtw") -> str:
        return f"{prefix}{next(self._tokens)}"

    async def add_watch(self, path: str, token: str, sink: WatchSink, *, depth: int | None = None) -> None:
        """Register a watch whose events the reader task hands to ``sink`` (which must not block; one that
        raises ends its own watch, kept in ``watch_errors``: see :class:`XenStore`).

        The sink is in place before WATCH is sent, so the registration event (``initial``), which may arrive
        before the reply, is not missed. TokenInUse if this connection already has ``token``, with nothing
        sent. ``depth`` (0: the node, 1: and its children, None: the whole subtree) needs a daemon with the
        WATCHDEPTH feature (Xen 4.22): Unsupported otherwise, and always over xenbus, whose kernel drops it.
        """
        link = self._link
        raw = check_watch_path(path)
        if link.protocol.has_watch(token):
            raise TokenInUse(path=path)
        if depth is not None:
            await self._check_depth(path, depth)
        builder.watch_payload(raw, token, depth)  # PayloadTooLarge before the token is looked at again
        if link.protocol.has_watch(token):  # taken while the capabilities were probed
            raise TokenInUse(path=path)
        link.ready()
        request = link.armed(link.protocol.watch(raw, token, sink, depth, label=path))
        try:
            await link.wait(request, path)
        except BaseException:
            link.protocol.unwatch(token, sink)
            raise

    async def _check_depth(self, path: str, depth: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"watch depth {depth!r} is not a non-negative int")
        if self.xenbus:
            raise Unsupported(
                op="WATCH", path=path, why="the xenbus device drops a watch's depth; use the socket"
            )
        caps = await self.capabilities()
        if not caps.features & caps.features.WATCHDEPTH:
            raise Unsupported(op="WATCH", path=path, why="the daemon has no WATCHDEPTH feature")

    def mute_watch(self, token: str) -> None:
        """Deliver no more events of the watch ``token``, at once and without a round trip (for a decision
        taken on the reader's path, e.g. in a sink); the daemon still sends them until :meth:`remove_watch`,
        and they are counted in ``unknown_events``, at the cost of a lookup each."""
        self._link.protocol.unwatch(token)

    async def remove_watch(self, path: str, token: str) -> None:
        """Unregister a watch; its sink gets no further events. NotFound if the daemon does not know it."""
        self._link.protocol.unwatch(token)
        await self._link.call(builder.unwatch(path, token))

    @asynccontextmanager
    async def watch(
        self, path: str, token: str | None = None, *, depth: int | None = None, capacity: int = 1024
    ) -> AsyncIterator[Subscription]:
        """``async with xs.watch(path) as events: async for event in events:``

        The registration event is delivered (``initial`` True). Leaving the block unwatches, also when
        cancelled. A slow consumer costs bounded memory (see :class:`Subscription`); when the connection is
        lost, iteration raises ConnectionLost. ``depth`` as for :meth:`add_watch`.
        """
        link = self._link
        token = token if token is not None else self.new_token()
        sub = Subscription(path, token, capacity)
        await self.add_watch(path, token, sub.deliver, depth=depth)
        link.subscriptions[token] = sub
        if link.lost is not None:  # lost after the reply, before this task resumed: mark_lost() missed sub
            sub.close(link.lost)
        try:
            yield sub
        finally:
            link.subscriptions.pop(token, None)
            sub.close()
            if link.lost is None:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(_CLEANUP_TIMEOUT),
                    suppress(XenStoreError),
                ):
                    await self.remove_watch(path, token)

    async def reset_watches(self) -> None:
        """Drop every watch and transaction of this connection, on the daemon and here.

        Unsupported, with nothing sent, on a daemon that never answers RESET_WATCHES (oxenstored)."""
        caps = await self.capabilities()
        if not caps.reset_watches:
            raise Unsupported(op="RESET_WATCHES", why=f"{caps.daemon} never answers it; nothing was sent")
        link = self._link
        await link.call(builder.reset_watches())
        for sub in link.subscriptions.values():
            sub.close()
        link.subscriptions.clear()
        link.protocol.unwatch_all()

    # -- transactions --------------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``async with xs.transaction() as tx:``: a clean exit commits (TransactionConflict if a concurrent
        change got in first), an exception or cancellation aborts. ProtocolError if the daemon's transaction
        id is not a number."""
        link = self._link
        tx_id = await link.call(builder.transaction_start())
        try:
            yield Transaction(self, link, tx_id)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT), suppress(XenStoreError):
                await link.call(builder.transaction_end(commit=False), tx_id)
            raise
        await link.call(builder.transaction_end(commit=True), tx_id)

    async def run_transaction(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        *,
        attempts: int = 16,
        backoff: float = 0.001,
        deadline: float | None = None,
    ) -> T:
        """Run ``fn(tx)`` in a transaction, redone whole on conflict (EAGAIN) after a randomized backoff (full
        jitter, from ``backoff`` doubling up to 1 s, so that many tasks contending for one directory spread out).

        Without ``deadline``: at most ``attempts`` tries, then the last TransactionConflict. With ``deadline``
        (seconds; ``attempts`` is then ignored): tries until that much time has passed, then
        :class:`~actors.xs.errors.ConflictDeadline` (a TransactionConflict) with the count of conflicts.
        """
        give_up = None if deadline is None else trio.current_time() + deadline
        for attempt in itertools.count():
            try:
                async with self.transaction() as tx:
                    result = await fn(tx)
                return result
            except TransactionConflict:
                if give_up is None and attempt + 1 >= attempts:
                    raise
            left = float("inf") if give_up is None else give_up - trio.current_time()
            if left <= 0:
                assert deadline is not None
                raise ConflictDeadline("run_transaction", None, attempt + 1, deadline)
            ceiling = min(_BACKOFF_MAX, backoff * 2 ** min(attempt, 16))
            await trio.sleep(min(left, random.uniform(0, ceiling)))
        raise AssertionError("unreachable")

    # -- domains and the daemon: INTRODUCE, RELEASE, ..., CONTROL ------------------------------------------

    async def get_domain_path(self, domid: int) -> str:
        return await self._link.call(builder.get_domain_path(domid))

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        """Tell xenstored about a new domain's ring page (``mfn``) and event channel (``port``)."""
        await self._link.call(builder.introduce(domid, mfn, port))

    async def release(self, domid: int) -> None:
        await self._link.call(builder.release(domid))

    async def is_domain_introduced(self, domid: int) -> bool:
        return await self._link.call(builder.is_domain_introduced(domid))

    async def resume(self, domid: int) -> None:
        await self._link.call(builder.resume(domid))

    async def set_target(self, domid: int, target: int) -> None:
        await self._link.call(builder.set_target(domid, target))

    async def control(self, *args: str | bytes) -> bytes:
        """XS_CONTROL (``check``, ``quota``, ``help``, ...): the daemon's reply, trailing NUL removed."""
        return await self._link.call(builder.control(*args))

    # -- Xen 4.21/4.22: features and quotas ----------------------------------------------------------------

    async def _feature_ops(self, op: str) -> None:
        """Unsupported, with nothing sent, where the probe found no GET_FEATURE (a daemon before Xen 4.21, or
        oxenstored, which would also leave an empty-payload request unread)."""
        if not (await self.capabilities()).feature_ops:
            raise Unsupported(op=op, why="the daemon has no Xen 4.21 feature and quota ops (probed)")

    async def features(self, domid: int | None = None) -> Feature:
        """This connection's features, or domain ``domid``'s (dom0 only). Unsupported before Xen 4.21."""
        call = builder.get_feature(domid)
        await self._feature_ops("GET_FEATURE")
        return Feature(await self._link.call(call))

    async def set_features(self, domid: int, bits: int) -> None:
        """Set a domain's features, before it is introduced (EBUSY after). Unsupported before Xen 4.21."""
        await self._feature_ops("SET_FEATURE")
        await self._link.call(builder.set_feature(domid, bits))

    @overload
    async def quota(self, name: None = None, domid: None = None) -> list[str]: ...

    @overload
    async def quota(self, name: str, domid: int | None = None) -> int: ...

    async def quota(self, name: str | None = None, domid: int | None = None) -> int | list[str]:
        """Without ``name``: the quota names the daemon has. With it: the global value, or domain ``domid``'s.
        InvalidArgument for a name the daemon lacks; Unsupported before Xen 4.21."""
        if name is None and domid is not None:
            raise ValueError("a domain's quota needs the quota's name")
        await self._feature_ops("GET_QUOTA")
        if name is None:
            return await self._link.call(builder.get_quotas())
        return await self._link.call(builder.get_quota(name, domid))

    async def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        """Set a quota globally, or for domain ``domid``. Unsupported before Xen 4.21."""
        call = builder.set_quota(name, value, domid)
        await self._feature_ops("SET_QUOTA")
        await self._link.call(call)


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
            link = xs._link
            nursery.start_soon(link.reader)
            nursery.start_soon(link.writer)
            nursery.start_soon(link.stall.run)
            nursery.start_soon(link.deadlines.run)
            try:
                yield xs
            except BaseException as exc:
                # Raised again below, outside the nursery, so the caller sees it unwrapped (the reader, writer
                # and stall watchdog never raise: they turn their errors into a lost connection).
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        xs._link.mark_lost(ConnectionLost("connection closed"))
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
