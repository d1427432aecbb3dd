"""Hang forensics: where each task of a domain waits now (``rt.stacks(domid)``), read without stopping
anything, and the one way a task's await stack is rendered (the stop watch's warnings use it too).

trio's ``Task.iter_await_frames()`` walks a suspended task's coroutine chain (no dependency; it works on
every Python trio supports). stackscope renders whole task trees more richly, but reads bytecode, stops its CI
at 3.12 and warns on first use under 3.13 (a failure where warnings are errors): one domain's tasks need only
their frames. What a task runs (a handler, a hook, a per-domain task) and since when are read from the
locals of the runtime's own frames on its stack (``call_handler``'s ``watch``, ``event`` and ``start``, ...).

A task waits in an await; code that blocks the loop instead is the watchdog's to name (it reads the loop
thread's stack from its own thread): nothing scheduled on the loop can run while it is blocked.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Protocol

import trio

from .actor import DomainActor
from .calls import call_handler, call_hook, run_task
from .context import State
from .serving import Inbox

__all__ = ["DomainStacks", "TaskStack", "domain_stacks", "domain_tasks", "task_stack"]


def task_stack(task: trio.lowlevel.Task) -> str:
    """Where a trio task is now, innermost call last (``File "...", line N, in fn`` and the source line)."""
    return "".join(traceback.StackSummary.extract(task.iter_await_frames()).format())


@dataclass(frozen=True, slots=True)
class TaskStack:
    """One task of a domain: ``task`` (trio's name), ``what`` it runs (``handler of 'data' for /local/...``,
    ``on_start hook``, ``task heartbeat``, ``waiting for events``, ...), ``since`` when (trio clock; None when
    not known), ``waited`` seconds (now - since), the running watch's ``timeout`` (handlers only) and its await
    ``stack`` (innermost call last)."""

    task: str
    what: str
    since: float | None
    waited: float | None
    timeout: float | None
    stack: str


@dataclass(frozen=True, slots=True)
class DomainStacks:
    """``rt.stacks(domid)``: the domain's state and each of its tasks (the actor's own first); where a handler
    of the domain runs in a worker process now (``isolation="process"``), that worker's ``worker_pid`` (None
    until the worker said it took the call) and since when the domain holds it (``worker_since``, trio clock):
    the handler's own stack is in that process, not in the runtime's."""

    domid: int
    state: State
    tasks: list[TaskStack]
    worker_pid: int | None = None
    worker_since: float | None = None


class Tasks(Protocol):
    """What :func:`domain_tasks` reads of a domain actor (the stop watch's view of one is enough)."""

    @property
    def task(self) -> trio.lowlevel.Task | None: ...

    @property
    def nursery(self) -> trio.Nursery | None: ...


def domain_tasks(actor: Tasks) -> list[trio.lowlevel.Task]:
    """The actor's own task (handlers and hooks run in it), then the tasks of its incarnation's nursery."""
    tasks = [] if actor.nursery is None else list(actor.nursery.child_tasks)
    if actor.task is not None:
        tasks.insert(0, actor.task)
    return tasks


_HANDLER: CodeType = call_handler.__code__
_HOOK: CodeType = call_hook.__code__
_TASK: CodeType = run_task.__code__
_MESSAGE: CodeType = Inbox._handle_message.__code__
_BACKOFF: CodeType = DomainActor._back_off.__code__
_SERVE: CodeType = Inbox.serve.__code__
_STOP: CodeType = DomainActor._stop.__code__


def _frames(task: trio.lowlevel.Task) -> Iterator[FrameType]:
    for frame, _ in task.iter_await_frames():
        yield frame


def _doing(actor: DomainActor, frames: list[FrameType]) -> tuple[str, float | None, float | None]:
    """(what, since, timeout) from the innermost frame of the runtime's that says what the task runs."""
    for frame in reversed(frames):
        code, seen = frame.f_code, frame.f_locals
        if code is _HANDLER:
            watch, event = seen.get("watch"), seen.get("event")
            name, path = getattr(watch, "name", "?"), getattr(event, "path", "?")
            return f"handler of {name!r} for {path}", seen.get("start"), getattr(watch, "timeout", None)
        if code is _HOOK:
            return str(seen.get("what", "hook")), seen.get("start"), None
        if code is _TASK:
            return f"task {seen.get('what', '?')}", seen.get("start"), None
        if code is _MESSAGE:
            return "message handler", actor.inbox.busy_since, None
        if code is _STOP:
            return "stopping (on_stop hooks)", actor.stopping_since, None
        if code is _BACKOFF:
            return f"{actor.state.value}: waiting to restart or to be reset", None, None
        if code is _SERVE:
            return "waiting for events", None, None
    return "starting" if actor.state is State.STARTING else "-", None, None


def domain_stacks(actor: DomainActor) -> DomainStacks:
    """Every task of ``actor`` with what it runs, since when and its await stack. Reads, never stops."""
    now = trio.current_time()
    out = []
    for task in domain_tasks(actor):
        frames = list(_frames(task))
        what, since, timeout = _doing(actor, frames)
        waited = None if since is None else round(max(0.0, now - since), 3)
        out.append(TaskStack(task.name, what, since, waited, timeout, task_stack(task)))
    return DomainStacks(actor.domid, actor.state, out)
