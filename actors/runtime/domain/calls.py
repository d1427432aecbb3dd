"""Calling user code (handlers, hooks, per-domain tasks) and turning what it raises into a failure."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import trio

from ...xs.errors import ConnectionLost, RequestTimeout
from ...xs.subscription import WatchEvent
from ..exception_groups import first_leaf
from ..watch_rules import Hook, Watch
from .context import DomainContext

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "HandlerError",
    "HandlerFailed",
    "HandlerTimeout",
    "call_handler",
    "call_hook",
    "excused_since",
    "failure_of",
    "is_connection_loss",
    "log_failure",
    "not_its_doing",
]


class HandlerError(Exception):
    """Raise this (or a subclass) from a handler for an expected failure, e.g. a command that exited non-zero:
    the supervisor treats it like any other, but logs it in one line, without a traceback."""


class HandlerTimeout(HandlerError):
    """A handler ran longer than its watch's ``timeout``."""


class HandlerFailed(Exception):
    """Carries what a handler, hook or per-domain task raised to its actor's supervisor; never leaves the
    actor. ``error`` is the exception itself, ``what`` says who raised it."""

    def __init__(self, error: BaseException, what: str) -> None:
        super().__init__(f"{what}: {error!r}")
        self.error = error
        self.what = what


def is_connection_loss(exc: BaseException) -> bool:
    """Is ``exc`` the daemon's fault, never a guest's: ConnectionLost, RequestTimeout (xenstored did not answer
    in time), or an exception group made of nothing else."""
    if isinstance(exc, (ConnectionLost, RequestTimeout)):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(is_connection_loss(e) for e in exc.exceptions)
    return False


def excused_since(ctx: DomainContext, start: float) -> bool:
    """Was the domain's connection stalled, or the loop blocked by another domain, at some moment since
    ``start``? Then what went wrong meanwhile (a timeout, a RequestTimeout) is not the domain's doing."""
    return bool(ctx._source.excused(ctx.domid, start))


async def not_its_doing(ctx: DomainContext, exc: Exception, start: float) -> bool:
    """The verdict on what user code begun at ``start`` raised (its timeout included): not the domain's
    doing if the connection was lost, stalled or the loop blocked by another domain meanwhile, or if the
    daemon is silent now (requests pending, nothing received) and stays so for ``silent_after``: whatever
    the handler's timeout, a handler cut short while it waits on a daemon that stopped answering is
    interrupted, not failed (a frame before then: the daemon answers, and the failure is the domain's)."""
    return is_connection_loss(exc) or excused_since(ctx, start) or await ctx._source.silenced()


def failure_of(group: BaseExceptionGroup[Exception], what: str) -> HandlerFailed:
    """The first failure in what an actor's nursery raised (a HandlerFailed as it is, anything else - a bug
    in the actor's own code, a task started through ``ctx.nursery`` - wrapped with ``what``)."""
    first = first_leaf(group)
    return first if isinstance(first, HandlerFailed) else HandlerFailed(first, what)


async def call_handler(ctx: DomainContext, watch: Watch, event: WatchEvent, start: float) -> bool:
    """Run one handler (begun at ``start``) under its watch's timeout (no cancel scope when there is none).
    True if it completed, False if it was interrupted by the daemon: the connection was lost (the watch fires
    again after the reconnect), stalled while it ran, or is silent as it ends (its timeout or error is not the
    domain's fault: see :func:`not_its_doing`).
    Raises HandlerFailed."""
    if event.initial and not watch.initial:
        return True
    try:
        if watch.pool is not None:  # isolation="process": the pool kills its worker past the timeout
            what = f"handler of {watch.name!r}"
            await watch.pool.call(
                ctx, watch.handler, event, template=watch.template, timeout=watch.timeout, what=what
            )
        elif watch.timeout is None:
            if watch.threaded:
                await _run(ctx, watch, event)
            else:  # the common case, without a coroutine of _run's own
                await cast("Awaitable[None]", watch.handler(ctx, event))
        else:
            with trio.move_on_after(watch.timeout) as scope:
                await _run(ctx, watch, event)
            if scope.cancelled_caught:
                if watch.threaded:
                    watch.abandoned += 1  # trio cannot stop a thread: it runs on, still holding its pool slot
                raise HandlerTimeout(f"handler of {watch.name!r} overran its timeout of {watch.timeout:g} s")
    except Exception as exc:
        if await not_its_doing(ctx, exc, start):
            return False
        raise HandlerFailed(exc, f"handler of {watch.name!r} for {event.path}") from exc
    return True


async def _run(ctx: DomainContext, watch: Watch, event: WatchEvent) -> None:
    if watch.threaded:
        handler = functools.partial(watch.handler, ctx, event)
        await trio.to_thread.run_sync(handler, abandon_on_cancel=True, limiter=watch.limiter)
    else:
        await cast("Awaitable[None]", watch.handler(ctx, event))


async def call_hook(ctx: DomainContext, hook: Hook, what: str) -> None:
    """Run a hook; a lost or stalled connection is not its failure. Raises HandlerFailed."""
    start = trio.current_time()
    try:
        await hook(ctx)
    except Exception as exc:
        if await not_its_doing(ctx, exc, start):
            return
        raise HandlerFailed(exc, what) from exc


async def run_task(
    ctx: DomainContext, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...], what: str
) -> None:
    """A per-domain task (``ctx.start_soon``) of ``ctx``'s domain (the watchdog finds the domid here): what it
    raises is its domain's failure (HandlerFailed), except the daemon's fault (a lost or stalled connection,
    a request timeout): then the task ends with a warning and nothing is charged."""
    start = trio.current_time()
    try:
        await fn(*args)
    except Exception as exc:
        if await not_its_doing(ctx, exc, start):
            ctx.log.warning("task {} ended by xenstored ({!r}): not the domain's failure", what, exc)
            return
        raise HandlerFailed(exc, f"task {what}") from exc


def log_failure(log: Logger, failure: HandlerFailed, level: str = "ERROR") -> None:
    """A failure with its traceback; an expected one (HandlerError) in one line."""
    if isinstance(failure.error, HandlerError):
        log.log(level, "{} failed: {}", failure.what, failure.error)
    else:
        log.opt(exception=failure.error).log(level, "{} failed", failure.what)
