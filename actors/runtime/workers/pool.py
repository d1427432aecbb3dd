"""The runtime's pool of worker processes for ``isolation="process"`` handlers, on trio-parallel.

trio-parallel (``open_worker_context``) starts, caches and kills the workers: a call cancelled in its cancel
scope SIGKILLs its worker (``kill_on_cancel``), a worker that dies raises ``BrokenWorkerProcessError`` with its
process, and the next call gets a fresh worker. What it does not know is domains, and that is this module:

- fairness: one FIFO :class:`trio.CapacityLimiter` of ``worker_processes`` tokens, taken by a domain's task for
  one call at a time (a domain runs its events one at a time, so it never holds two workers); a domain with a
  deep mailbox queues behind every other domain waiting for a worker after each call.
- the timeout counts from the moment the domain has a worker (waiting for one is not the handler's time);
  past ``timeout + worker_grace`` the worker is killed and the domain charged HandlerTimeout.
- deaths named: ``WorkerDied: SIGSEGV``, ``WorkerDied: exit status 3``; a MemoryError past the worker's
  cap (``worker_memory_limit``) is WorkerMemoryExceeded and the worker retires.
- the log channel (see :mod:`.job`): which worker runs which domain's call, and the handlers' log lines,
  logged here with their domid and the worker's pid.
- nothing started before the first process call; at the runtime's leave every worker is ended (a busy one
  is killed with its call; idle ones are told to exit, then killed past the grace).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import socket
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio
from trio_util import wait_any

from ..._log import logger
from ..domain.calls import HandlerError, HandlerTimeout
from ..domain.context import DomainContext
from . import job
from .context import ProcessContext

if TYPE_CHECKING:
    from ..options import RuntimeOptions

__all__ = [
    "WorkerBusy",
    "WorkerDied",
    "WorkerMemoryExceeded",
    "WorkerPool",
    "WorkerPoolSnapshot",
]


class WorkerDied(HandlerError):
    """A process handler's worker died by itself (a signal, an exit, the kernel's OOM killer); ``reason``
    says how: ``SIGSEGV``, ``SIGKILL``, ``exit status 3``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerDied, (str(self), self.reason))


class WorkerMemoryExceeded(HandlerError):
    """A process handler allocated past ``worker_memory_limit`` (MemoryError in its worker)."""


@dataclass(frozen=True, slots=True)
class WorkerBusy:
    """One domain's call in a worker: the worker's pid (None until the worker said it took the call) and
    since when (trio clock) the domain holds it."""

    pid: int | None
    since: float


@dataclass(frozen=True, slots=True)
class WorkerPoolSnapshot:
    """The pool as ``rt.workers.snapshot()`` shows it: ``size`` (at most this many workers), ``alive``
    (worker processes now), ``busy`` (calls running), ``waiting`` (domains waiting for a worker), ``replaced``
    (workers killed or dead and so replaced: timeouts, deaths, memory), ``domains`` (domid -> its call),
    ``deaths`` ((domid, reason) -> count; reason ``timeout``, ``memory`` or how it died, e.g. ``SIGSEGV``)."""

    size: int
    alive: int
    busy: int
    waiting: int
    replaced: int
    domains: Mapping[int, WorkerBusy] = field(default_factory=dict)
    deaths: Mapping[tuple[int, str], int] = field(default_factory=dict)


@dataclass(slots=True)
class _Call:
    domid: int
    since: float
    limit: float  # seconds the handler may run, counted from the moment its worker took it
    scope: trio.CancelScope
    pid: int | None = None


# How long a worker may take to start and take a call (spawning a fresh worker on a loaded machine) before the
# handler's own time begins; past it (plus the handler's timeout) the worker is killed all the same.
_START_ALLOWANCE = 10.0


class _Unlimited:
    """trio-parallel takes any async context manager as its limiter: ours is taken before (see call)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_UNLIMITED = _Unlimited()


_EMITTERS: dict[str, Callable[[Any, str, str, str, int], None]] = {}


def _emitter(module: str) -> Callable[[Any, str, str, str, int], None]:
    """A handler's line logged as if from its own module in the runtime: loguru takes a record's module (what
    ``logger.enable``/``disable`` and filters go by) from the caller's globals, so the call is made from a
    function whose globals name that module; the function and line are the handler's too."""
    emit = _EMITTERS.get(module)
    if emit is None:
        namespace: dict[str, Any] = {"__name__": module}
        exec(
            "def emit(bound, level, text, function, line):\n"
            "    bound.patch(lambda r: r.update(function=function, line=line)).log(level, '{}', text)\n",
            namespace,
        )
        emit = _EMITTERS[module] = namespace["emit"]
    return emit


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


# What every worker imports, imported once in the forkserver instead: a replaced worker (after a crash, a kill)
# starts without importing them again. ``__main__`` is multiprocessing's own default (a script's handlers).
_PRELOAD = ["__main__", "_trio_parallel_workers", "loguru", "actors.runtime.workers.job", "actors.xs.sync"]


def _preload_forkserver() -> None:
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)


async def _stop_forkserver() -> None:
    """The workers fork from multiprocessing's forkserver (cheap to replace a killed worker: no new interpreter
    to start and import into); the runtime that started it stops it at its end, leaving no process behind
    (multiprocessing starts it again if anything else needs it)."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is None or _forkserver_pid() is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        await trio.to_thread.run_sync(stop, abandon_on_cancel=True)


def how_it_died(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


class WorkerPool:
    """See the module docstring. Made by the runtime; :meth:`run` is its task in the root nursery."""

    def __init__(
        self,
        options: RuntimeOptions,
        name_of: Callable[[int], str | None],
        address_of: Callable[[], tuple[str | None, bool]],
    ) -> None:
        self.size = options.worker_processes
        self.memory_limit = options.worker_memory_limit
        self.grace = options.worker_grace
        self.nice = options.worker_nice
        self.shutdown_grace = min(1.0, options.stop_deadline / 4)
        self.limiter = trio.CapacityLimiter(self.size)
        self.replaced = 0
        self.deaths: Counter[tuple[int, str]] = Counter()
        self.pids: set[int] = set()  # every worker that took a call, while alive as far as we know
        self._name_of = name_of
        self._address_of = address_of
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._wanted = trio.Event()  # a process handler ran: start the machinery
        self._ready = trio.Event()
        self._closed = trio.Event()
        self._done = trio.Event()
        self._context: Any = None  # the trio_parallel.WorkerContext new calls go to
        self._generations: list[Any] = []  # every context still open (a renewed one finishing its calls)
        self._renew: trio.Event | None = None
        self._error: Exception | None = None  # why the pool could not start
        self._channel: socket.socket | None = None  # the log channel (the receiving end)
        self._broken: type[BaseException] | None = None  # trio_parallel.BrokenWorkerError

    @property
    def started(self) -> bool:
        """Has a process handler run (and so the pool started)?"""
        return self._wanted.is_set()

    def snapshot(self) -> WorkerPoolSnapshot:
        alive = 0
        for context in self._generations:
            stats = context.statistics()
            alive += stats.idle_workers + stats.running_workers
        return WorkerPoolSnapshot(
            size=self.size,
            alive=alive,
            busy=len(self._calls),
            waiting=self.limiter.statistics().tasks_waiting,
            replaced=self.replaced,
            domains={c.domid: WorkerBusy(c.pid, c.since) for c in self._calls.values()},
            deaths=dict(self.deaths),
        )

    # -- the pool's life -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wait for the first process call, then keep the workers and the log channel until :meth:`close`
        (or cancellation): then every worker is ended before this returns. Whatever keeps the pool from
        starting is logged and raised to every process call (their domains' failure), never the runtime's."""
        task_status.started()
        folder: str | None = None
        try:
            await self._wanted.wait()
            try:
                import trio_parallel

                started_forkserver = _forkserver_pid() is None  # then it is ours to stop at the end
                if started_forkserver:
                    _preload_forkserver()
                self._broken = trio_parallel.BrokenWorkerError
                folder = tempfile.mkdtemp(prefix="mtwatch-workers-")
                address = os.path.join(folder, "log")
                raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                raw.setblocking(False)
                raw.bind(address)
                self._channel = raw
                channel = trio.socket.from_stdlib_socket(raw)
            except Exception as exc:
                logger.opt(exception=exc).error("the pool of worker processes cannot start")
                self._error = exc
                self._ready.set()
                return
            with channel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._receive, channel)
                    try:
                        await self._serve(trio_parallel, address)
                    finally:
                        if started_forkserver:
                            await _stop_forkserver()
                    nursery.cancel_scope.cancel()
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            self._closed.set()
            self._ready.set()  # a call waiting for a renewal learns the pool is closed
            self._done.set()

    async def _serve(self, trio_parallel: Any, address: str) -> None:
        """Worker contexts, one generation after another (see :meth:`renew`), until closed."""
        init = partial(job.init, address, self.memory_limit, self.nice)
        open_context = partial(
            trio_parallel.open_worker_context,
            init=init,
            retire=job.retire,
            grace_period=self.shutdown_grace,
            worker_type=trio_parallel.WorkerType.FORKSERVER,
        )
        async with trio.open_nursery() as generations:
            retire: trio.Event | None = None
            while not self._closed.is_set():
                renewed = trio.Event()
                self._context = await generations.start(self._generation, open_context, renewed)
                if retire is not None:
                    retire.set()  # its running calls finish in their workers; its idle workers end
                retire = renewed
                self._ready.set()
                self._renew = trio.Event()
                await wait_any(self._renew.wait, self._closed.wait)
            if retire is not None:
                retire.set()
        self._context = None

    async def _generation(
        self, open_context: Callable[[], Any], retire: trio.Event, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        try:
            async with open_context() as context:
                self._generations.append(context)
                try:
                    task_status.started(context)
                    await retire.wait()
                finally:
                    self._generations.remove(context)
        except Exception as exc:  # trio_parallel.BrokenWorkerError: idle workers that had to be killed
            logger.warning("worker processes did not exit in time and were killed: {}", exc)

    def renew(self) -> None:
        """New calls go to fresh workers from now on (which import the handlers' modules anew: the agent's
        reload); the current workers finish their calls, then end."""
        if self._renew is not None and self._context is not None:
            self._context = None  # calls wait for the next generation
            self._ready = trio.Event()
            self._renew.set()

    async def close(self) -> None:
        """End every worker (running calls must have been cancelled first: their workers are killed then);
        returns when they are gone, within the grace of the stop."""
        self._closed.set()
        if self._wanted.is_set():
            with trio.move_on_after(self.shutdown_grace + 1.0):
                await self._done.wait()

    # -- a call ------------------------------------------------------------------------------------------

    async def call(
        self,
        ctx: DomainContext,
        handler: Callable[..., Any],
        payload: Any,
        *,
        template: str | None,
        timeout: float | None,  # noqa: ASYNC109 (the watch's own timeout, with the kill past it)
        what: str,
    ) -> Any:
        """``handler(process_context, payload)`` in a worker, for ``ctx``'s domain; returns what it returns or
        raises what it raised (HandlerTimeout past ``timeout`` plus the grace, WorkerDied,
        WorkerMemoryExceeded). Cancelled, it kills the worker."""
        if self._closed.is_set():
            raise RuntimeError("the runtime's worker pool is closed")
        self._wanted.set()
        await self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"the pool of worker processes cannot start: {self._error!r}")
        path, xenbus = self._address_of()
        pctx = ProcessContext(ctx.domid, ctx.identity, self._name_of(ctx.domid), template, path, xenbus)
        call_id = next(self._ids)
        async with self.limiter:  # FIFO across domains: the fairness
            while (context := self._context) is None and not self._closed.is_set():
                await self._ready.wait()  # a renewal under way
            if context is None or self._closed.is_set():
                raise RuntimeError("the runtime's worker pool is closed")
            now = trio.current_time()
            limit = math.inf if timeout is None else timeout + self.grace
            scope = trio.CancelScope(deadline=now + limit + _START_ALLOWANCE)
            record = self._calls[call_id] = _Call(ctx.domid, now, limit, scope)
            try:
                with scope:
                    result = await context.run_sync(
                        job.run, call_id, handler, pctx, payload, kill_on_cancel=True, limiter=_UNLIMITED
                    )
            except MemoryError as exc:
                self._lost(record, "memory", "retired after MemoryError")
                raise WorkerMemoryExceeded(
                    f"{what}: worker memory limit of {self._limit_text()} reached"
                ) from exc
            except BaseException as exc:
                if self._broken is not None and isinstance(exc, self._broken):
                    process = exc.args[-1] if exc.args else None
                    reason = how_it_died(getattr(process, "exitcode", None))
                    pid = record.pid or getattr(process, "pid", None)
                    self._lost(record, reason, "died")
                    raise WorkerDied(f"worker process {pid or '?'} died: {reason}", reason) from None
                if isinstance(exc, trio.Cancelled):
                    self._lost(record, None, "killed: its domain's call was cancelled")
                raise
            finally:
                self._drain()
                del self._calls[call_id]
            if scope.cancelled_caught:
                self._lost(record, "timeout", "killed past its timeout")
                assert timeout is not None
                raise HandlerTimeout(f"{what} overran its timeout of {timeout:g} s: its worker was killed")
            return result

    def _limit_text(self) -> str:
        return "none" if self.memory_limit is None else f"{self.memory_limit / 2**20:g} MiB"

    def _lost(self, record: _Call, reason: str | None, how: str) -> None:
        """A worker that will not come back (killed, dead, retired): counted, and charged to the domain."""
        self.replaced += 1
        if reason is not None:
            self.deaths[(record.domid, reason)] += 1
        if record.pid is not None:
            self.pids.discard(record.pid)
        logger.bind(domid=record.domid).log(
            "DEBUG" if reason is None else "WARNING", "worker process {} {}", record.pid or "?", how
        )

    # -- the log channel -------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Whatever the workers sent and this task has not read yet, now: a worker sends its call's log lines
        before its answer, so after the answer they are all here (in the log before the call ends)."""
        channel = self._channel
        while channel is not None:
            try:
                data = channel.recv(job.MAX_DATAGRAM, socket.MSG_DONTWAIT)
            except OSError:  # BlockingIOError: nothing more
                return
            try:
                self._datagram(json.loads(data))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                continue

    async def _receive(self, channel: trio.socket.SocketType) -> None:
        while True:
            try:
                data = await channel.recv(job.MAX_DATAGRAM)
            except OSError as exc:  # nothing the workers send is worth the runtime: log lines stop
                logger.error("the workers' log channel failed: {!r}", exc)
                return
            try:
                self._datagram(json.loads(data))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                continue  # not what a worker of ours sends

    def _datagram(self, item: list[Any]) -> None:
        kind = item[0]
        if kind == "start":
            _, call_id, pid = item
            record = self._calls.get(call_id)
            if record is not None:
                record.pid = pid
                record.scope.deadline = trio.current_time() + record.limit  # its own time begins
            self.pids.add(int(pid))
        elif kind == "log":
            _, call_id, pid, level, text, extra, (name, function, line) = item
            record = self._calls.get(call_id) if call_id is not None else None
            domid = extra.pop("domid", record.domid if record is not None else 0)
            try:
                logger.level(level)
            except ValueError:
                level = "INFO"
            bound = logger.bind(**extra, domid=domid, pid=pid)
            _emitter(str(name))(bound, level, text, str(function), int(line))
