"""Watch rules as runtime handlers: ``run`` (a process per event) and ``call`` (an async Python function, or with
``isolation = "process"`` a plain one run in a worker process).

A ``run`` rule starts ``argv`` (``{domid}`` and ``{path}`` filled in; no shell) once per event, in a process
group of its own, with the agent's environment plus ``XS_DOMID`` (0 for a global event no domain owns),
``XS_PATH``, ``XS_TOKEN``, ``XS_IDENTITY`` (the domain's mtwatch node value), ``XS_INITIAL=1`` for the
registration event (unset for a change) and ``XS_VALUE`` (the node's value when dispatched, cut at a NUL byte;
unset when the node is gone or for an ``@`` path). Its output lines are logged with the domid. A non-zero exit,
a signal or overrunning ``timeout`` is a handler failure; cancelled, the handler SIGKILLs the process group.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ..xs.errors import NotFound
from .schema import WatchRule

if TYPE_CHECKING:
    from ..runtime.domain.context import DomainContext
    from ..runtime.runtime import Runtime
    from ..runtime.watch_rules import Watch
    from ..xs.subscription import WatchEvent

from ..runtime.domain.calls import HandlerError

__all__ = ["CommandFailed", "RuleSet", "RunHandler", "handler_for"]

MAX_LINE = 4096  # longer output lines are logged in pieces of this many bytes
_DRAIN_GRACE = 1.0  # after the command exits, how long its output may stay open (background children)
_FIELDS = re.compile(r"\{(domid|path)\}")


class CommandFailed(HandlerError):
    """A rule's command could not be started, exited non-zero or was killed by a signal (an expected failure:
    the runtime logs it in one line). ``status`` is its exit status (negative: the signal's number; None: it
    could not be started)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def kill_process_group(proc: trio.Process) -> None:
    """``deliver_cancel`` for :func:`trio.run_process`: SIGKILL the command's whole process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group leader changed its credentials: kill what we still can
        proc.kill()


def _env_bytes(value: bytes) -> bytes:
    return value.split(b"\0", 1)[0]


class RunHandler:
    """The handler of a ``run = [...]`` rule; see the module docstring."""

    def __init__(self, argv: tuple[str, ...], name: str) -> None:
        self.argv = argv
        self.name = name
        self.program = os.path.basename(argv[0]) or argv[0]

    def command(self, domid: int, path: str) -> list[str]:
        fill = {"domid": str(domid), "path": path}
        return [_FIELDS.sub(lambda m: fill[m.group(1)], arg) for arg in self.argv]

    async def environment(self, ctx: DomainContext, event: WatchEvent) -> dict[bytes, bytes]:
        env = {k: v for k, v in os.environb.items() if k not in (b"XS_INITIAL", b"XS_VALUE")}
        env[b"XS_DOMID"] = str(ctx.domid).encode()
        env[b"XS_PATH"] = os.fsencode(event.path)
        env[b"XS_TOKEN"] = os.fsencode(event.token)
        env[b"XS_IDENTITY"] = _env_bytes(ctx.identity)
        if event.initial:
            env[b"XS_INITIAL"] = b"1"
        if not event.path.startswith("@"):
            with suppress(NotFound):
                env[b"XS_VALUE"] = _env_bytes(await ctx.xs.read(event.path))
        return env

    async def __call__(self, ctx: DomainContext, event: WatchEvent) -> None:
        env = await self.environment(ctx, event)
        argv = self.command(ctx.domid, event.path)
        log = ctx.log.bind(rule=self.name)
        spawn_error: OSError | None = None
        proc: trio.Process | None = None
        async with trio.open_nursery() as nursery:
            try:
                proc = await nursery.start(
                    partial(
                        trio.run_process,
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=env,
                        start_new_session=True,
                        check=False,
                        deliver_cancel=kill_process_group,
                    )
                )
            except OSError as exc:
                spawn_error = exc
            else:
                assert proc is not None and proc.stdout is not None and proc.stderr is not None
                log.debug("{}: started {} (pid {}) for {}", self.name, argv, proc.pid, event.path)
                streams = [proc.stdout, proc.stderr]
                proc.stdout = proc.stderr = None
                await self._supervise(proc, streams, log, nursery)
        if spawn_error is not None:
            reason = spawn_error.strerror or errno.errorcode.get(spawn_error.errno or 0, str(spawn_error))
            raise CommandFailed(f"cannot run {argv[0]!r}: {reason}") from None
        assert proc is not None
        code = proc.returncode
        if code:
            if code < 0:
                try:
                    how = f"was killed by {signal.Signals(-code).name}"
                except ValueError:
                    how = f"was killed by signal {-code}"
            else:
                how = f"exited with status {code}"
            raise CommandFailed(f"{self.program} (pid {proc.pid}) {how}", code)
        log.debug("{}: pid {} exited 0", self.name, proc.pid)

    async def _supervise(
        self, proc: trio.Process, streams: list[trio.abc.ReceiveStream], log: Any, nursery: trio.Nursery
    ) -> None:
        pumps_done = [trio.Event() for _ in streams]
        for stream, label, done in zip(streams, ("stdout", "stderr"), pumps_done, strict=True):
            nursery.start_soon(self._pump, stream, label, proc.pid, log, done)
        await proc.wait()
        for attempt in range(2):
            with trio.move_on_after(_DRAIN_GRACE):
                for done in pumps_done:
                    await done.wait()
                return
            if attempt == 0:  # the command is gone, but something it started still holds its output open
                log.warning(
                    "{}: pid {} exited, but processes it left behind still hold its output: killing its"
                    " process group",
                    self.name,
                    proc.pid,
                )
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        nursery.cancel_scope.cancel()  # escaped into a session of their own: stop reading

    async def _pump(
        self, stream: trio.abc.ReceiveStream, label: str, pid: int, log: Any, done: trio.Event
    ) -> None:
        buffer = bytearray()

        def emit(line: bytes) -> None:
            text = line.decode("utf-8", "replace").rstrip("\r")
            log.bind(stream=label, pid=pid).info("{}[{}] {}: {}", self.program, pid, label, text)

        try:
            async with stream:
                async for chunk in stream:
                    buffer += chunk
                    while True:
                        end = buffer.find(b"\n", 0, MAX_LINE + 1)
                        if end >= 0:
                            emit(bytes(buffer[:end]))
                            del buffer[: end + 1]
                        elif len(buffer) >= MAX_LINE:
                            emit(bytes(buffer[:MAX_LINE]))  # an overlong line, in pieces
                            del buffer[:MAX_LINE]
                        else:
                            break
            if buffer:
                emit(bytes(buffer))
        finally:
            done.set()


Handler = Callable[["DomainContext", "WatchEvent"], Awaitable[None]]


def handler_for(rule: WatchRule) -> Handler:
    """The runtime handler of a validated rule; with ``initial = false`` it skips the registration event."""
    handler: Handler
    if rule.isolation == "process":  # a plain def the worker imports (the runtime skips the initial event)
        assert rule.handler is not None
        return rule.handler
    if rule.run is not None:
        handler = RunHandler(rule.run, rule.label)
    else:
        assert rule.handler is not None
        handler = rule.handler
    if rule.initial:
        return handler

    async def skip_initial(ctx: DomainContext, event: WatchEvent) -> None:
        if not event.initial:
            await handler(ctx, event)

    return skip_initial


class RuleSet:
    """The rules in force on a runtime. :meth:`apply` adds and removes watches so that the runtime has exactly
    the given rules; rules that did not change keep their watches (their domains are not touched)."""

    def __init__(self, rt: Runtime, wrap: Callable[[WatchRule, Handler], Handler] | None = None) -> None:
        self.rt = rt
        self.active: list[tuple[WatchRule, Watch]] = []
        self.wrap = wrap  # around each rule's handler (the dry run's recorder)

    def _through_worker(self, rule: WatchRule, fn: Handler) -> Handler:
        """A process rule's handler as an async one that runs it in a worker (for a wrapper around it)."""
        rt = self.rt

        async def through_worker(ctx: DomainContext, event: WatchEvent) -> None:
            await rt.run_in_worker(ctx, fn, event, timeout=rule.timeout, template=rule.path)

        return through_worker

    def apply(
        self, rules: tuple[WatchRule, ...] | list[WatchRule]
    ) -> tuple[list[WatchRule], list[WatchRule]]:
        """Make ``rules`` the rule set; returns (added, removed)."""
        remaining = list(self.active)
        kept: list[tuple[WatchRule, Watch]] = []
        new: list[WatchRule] = []
        for rule in rules:
            match = next((i for i, (old, _) in enumerate(remaining) if old.key == rule.key), None)
            if match is None:
                new.append(rule)
            else:
                kept.append((rule, remaining.pop(match)[1]))
        for _, watch in remaining:
            self.rt.unwatch(watch)
        for rule in new:
            handler = handler_for(rule)
            isolation = rule.isolation
            timeout: float | None = rule.timeout
            if self.wrap is not None:
                if isolation == "process":  # the wrapper is async: it calls the worker through the runtime,
                    handler = self._through_worker(rule, handler)  # which kills it past the rule's timeout
                    isolation, timeout = None, None
                handler = self.wrap(rule, handler)
            watch = self.rt.watch(
                rule.path,
                handler,
                timeout=timeout,
                route=rule.route_fn,
                name=rule.label,
                isolation=isolation,
                initial=rule.initial or isolation != "process",
            )
            kept.append((rule, watch))
        self.active = kept
        return new, [old for old, _ in remaining]
