"""Process handlers (``isolation="process"``) for the tests and the bench: module-level, found by import path,
so that a worker process imports them from here. Each misbehaves as its name says, by real means, on a real
write (not on the watch's registration event)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

from actors.runtime.workers.context import ProcessContext


def spin(ctx: ProcessContext, event: Any) -> None:
    if event.initial:
        return  # misbehaves on a real write only
    while True:
        pass


def spin_ignoring_sigterm(ctx: ProcessContext, event: Any) -> None:
    if event.initial:
        return  # misbehaves on a real write only
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def allocate(ctx: ProcessContext, event: Any) -> None:
    """64 MB every 10 ms, the last 16 kept (1 GiB: past a worker's default cap; a thread, which nothing
    stops, stays at that)."""
    if event.initial:
        return  # misbehaves on a real write only
    hoard = []
    while True:
        hoard.append(bytearray(64 << 20))
        del hoard[:-16]
        time.sleep(0.01)


def segfault(ctx: ProcessContext, event: Any) -> None:
    if event.initial:
        return
    ctypes.string_at(0)


def killed(ctx: ProcessContext, event: Any) -> None:
    """What the kernel's OOM killer does to a process: SIGKILL."""
    if event.initial:
        return  # misbehaves on a real write only
    os.kill(os.getpid(), signal.SIGKILL)


def exit3(ctx: ProcessContext, event: Any) -> None:
    if event.initial:
        return  # misbehaves on a real write only
    os._exit(3)


def record(ctx: ProcessContext, event: Any) -> None:
    """Appends the event's value to ``/local/domain/<domid>/seen`` on the worker's own connection, with the
    worker's pid beside it."""
    if not ctx.xs.exists(event.path):
        return  # the registration event before the first write
    value = ctx.xs.read(event.path).decode()
    seen = f"/local/domain/{ctx.domid}/seen"
    before = ctx.xs.read(seen).decode() if ctx.xs.exists(seen) else ""
    ctx.xs.write(seen, f"{before}{value}:{os.getpid()},")


def slow_record(ctx: ProcessContext, event: Any) -> None:
    time.sleep(0.02)
    record(ctx, event)


def noop(ctx: ProcessContext, event: Any) -> None:
    return None


def describe(ctx: ProcessContext, message: Any) -> dict[str, Any]:
    """A message handler: what the worker was given, and a log line."""
    ctx.log.info("worker {} got {!r}", os.getpid(), message)
    return {
        "domid": ctx.domid,
        "name": ctx.name,
        "identity": ctx.identity,
        "template": ctx.template,
        "message": message,
        "pid": os.getpid(),
    }


def spin_message(ctx: ProcessContext, message: Any) -> None:
    while True:
        pass


def in_turn(ctx: ProcessContext, event: Any) -> None:
    """Appends ``<domid>:<the path's last component>`` to ``/local/domain/0/turns``: the order in which the
    pool ran every domain's calls (one worker: no two calls at once)."""
    if event.initial:
        return
    time.sleep(0.005)
    turns = "/local/domain/0/turns"
    before = ctx.xs.read(turns).decode() if ctx.xs.exists(turns) else ""
    ctx.xs.write(turns, f"{before}{ctx.domid}:{event.path.rsplit('/', 1)[1]},")
