"""The ``call=`` handlers of ``mtwatch demo``'s rule set (run inside the agent process).

Every domain gets every rule; what a guest writes decides which handler misbehaves for it:

- ``ping``: the well-behaved one. The guest writes ``time.monotonic()`` to a node under ``data/ping`` (a new
  one each time, in turn); the handler reads the event's node and records two latencies: guest write ->
  handler (end to end) and the agent's own share (reader task -> handler, ``trio.current_time() -
  event.received_at``).
- ``hang``: a write to ``data/hang`` makes the handler wait forever (the rule's timeout is longer than the demo).
- ``crash``: a write to ``data/crash`` makes the handler raise, now and after every restart (the watch fires
  once when it is registered again, and the node is still there).
- ``slow``: events under ``data/flood`` take a while each, so a flooding guest outruns its own mailbox.
- ``native``: a plain ``def`` run in a worker process (``isolation = "process"``), standing for a parser in a C
  extension: ``segv`` in ``data/native`` makes it segfault, ``spin`` loop forever. Its worker dies or is killed
  past the timeout; the agent's own process never notices.

The latencies go to the file named by ``$MTWATCH_DEMO_RECORD``, one ``domid end_to_end agent`` line per event
(``time.monotonic()`` is CLOCK_MONOTONIC, shared by the guest and the agent processes; trio's clock is not: it
adds a random offset, so it serves only within the agent).
"""

from __future__ import annotations

import ctypes
import os
import time

import trio

from .. import DomainContext, NotFound, ProcessContext, WatchEvent

__all__ = ["RECORD_ENV", "SLOW_SECONDS", "crash", "hang", "native", "ping", "slow"]

RECORD_ENV = "MTWATCH_DEMO_RECORD"
SLOW_SECONDS = 0.02


class PoisonedValue(Exception):
    """What the crashing guest's data does to its handler."""


def _record(line: str) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a", encoding="ascii") as out:
            out.write(line)


async def _value(ctx: DomainContext, path: str) -> bytes | None:
    try:
        return await ctx.xs.read(path)
    except NotFound:
        return None


async def ping(ctx: DomainContext, event: WatchEvent) -> None:
    agent = trio.current_time() - event.received_at
    value = await _value(ctx, event.path)
    now = time.monotonic()
    if not value:
        return  # the watch's own node: the initial event of a new watch
    try:
        written = float(value)
    except ValueError:
        ctx.log.warning("{}: not a timestamp: {!r}", event.path, value)
        return
    _record(f"{ctx.domid} {now - written:.6f} {agent:.6f}\n")


async def hang(ctx: DomainContext, event: WatchEvent) -> None:
    if await _value(ctx, event.path):
        ctx.log.warning("{} written: this handler now hangs", event.path)
        await trio.sleep_forever()


async def crash(ctx: DomainContext, event: WatchEvent) -> None:
    value = await _value(ctx, event.path)
    if value:
        raise PoisonedValue(f"{event.path} = {value!r}")


async def slow(ctx: DomainContext, event: WatchEvent) -> None:
    await trio.sleep(SLOW_SECONDS)


def native(ctx: ProcessContext, event: WatchEvent) -> None:
    value = ctx.xs.read(event.path) if ctx.xs.exists(event.path) else b""
    if value == b"segv":
        ctx.log.warning("{} = segv: this worker now segfaults", event.path)
        ctypes.string_at(0)
    elif value == b"spin":
        ctx.log.warning("{} = spin: this worker now loops forever", event.path)
        while True:
            pass
