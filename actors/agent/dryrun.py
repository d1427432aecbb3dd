"""The agent's dry runs: ``mtwatch agent --config FILE --check`` (is the file valid, and which rules would run)
and ``mtwatch rules test`` (run the rules a write fires once, in a sandbox, and say what ran).

``rules test`` runs the rules as the agent does: the same :class:`~.rules.RuleSet` on a runtime with the
file's options, against :func:`actors.testing.sandbox` with the domain made as the toolstack makes it; the
write goes to the daemon (as the guest for its own nodes, as dom0 elsewhere), and the daemon's watch events
reach the rules' real commands or handlers with the environment they get in the agent. Only the registration
events (``XS_INITIAL=1``) are left out: each rule runs once, for the write.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TextIO

from loguru import logger

from ..runtime.lifecycle.protocol import MTWATCH_ROOT
from .config import Config
from .rules import CommandFailed, Handler, RuleSet, RunHandler
from .schema import WatchRule

if TYPE_CHECKING:
    from loguru import Message

    from ..runtime.domain.context import DomainContext
    from ..testing.box import Sandbox
    from ..xs.subscription import WatchEvent

__all__ = ["Run", "describe_rule", "parse_write", "print_check", "print_runs", "try_rules"]

SETTLE_MARGIN = 5.0  # seconds past the longest rule timeout that a dry run waits for the rules to finish


def describe_rule(rule: WatchRule) -> str:
    """One line: what the rule watches and what it runs (as ``--check`` prints it)."""
    what = f"run {shlex.join(rule.run)}" if rule.run is not None else f"call {rule.call}"
    scope = (
        "per domain" if "{domid}" in rule.path else f"global, routed {rule.route}" if rule.route else "global"
    )
    extras = [scope, f"timeout {rule.timeout:g} s"]
    if not rule.initial:
        extras.append("initial = false")
    name = f"{rule.name}: " if rule.name else ""
    return f"watch[{rule.index}] {name}{rule.path} -> {what} ({', '.join(extras)})"


def print_check(config: Config, out: TextIO) -> None:
    """What ``--check`` prints for a valid file."""
    options = config.options
    print(f"{config.source or 'built-in defaults'}: valid", file=out)
    lifecycle = options.lifecycle if isinstance(options.lifecycle, str) else options.lifecycle.name
    print(f"xenstore: {config.xenstore_text}; lifecycle {lifecycle} (root {options.root})", file=out)
    print(f"{len(config.watches)} rule{'' if len(config.watches) == 1 else 's'}:", file=out)
    for rule in config.watches:
        print(f"  {describe_rule(rule)}", file=out)


def parse_write(text: str) -> tuple[str, str]:
    """``PATH=VALUE`` -> (path, value); ValueError otherwise."""
    path, sep, value = text.partition("=")
    if not sep or not path.startswith("/"):
        raise ValueError(f"--write {text!r}: expected /ABSOLUTE/PATH=VALUE")
    return path, value


@dataclass
class Run:
    """One rule run for one event: what ran, its output lines, and how it ended."""

    rule: WatchRule
    domid: int
    path: str
    command: list[str] | None = None
    output: list[str] = field(default_factory=list)
    status: int | None = None  # a command's exit status
    error: str | None = None  # None: it succeeded

    @property
    def ok(self) -> bool:
        return self.error is None


class Recorder:
    """Wraps each rule's handler: the registration events are left out, every other event runs the real
    handler and is recorded (with the output lines logged meanwhile for that domain: a command's, or a
    handler's own ``ctx.log``)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self._current: dict[int, Run] = {}  # domid -> its running rule (one at a time per domain)

    def wrap(self, rule: WatchRule, handler: Handler) -> Handler:
        async def recorded(ctx: DomainContext, event: WatchEvent) -> None:
            if event.initial:
                return
            run = Run(rule, ctx.domid, event.path)
            if rule.run is not None:
                run.command = RunHandler(rule.run, rule.label).command(ctx.domid, event.path)
            self.runs.append(run)
            self._current[ctx.domid] = run
            try:
                await handler(ctx, event)
                run.status = 0 if rule.run is not None else None
            except CommandFailed as exc:
                run.status, run.error = exc.status, str(exc)
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
            except BaseException:
                run.error = f"cancelled: ran past its timeout of {rule.timeout:g} s"
                raise
            finally:
                self._current.pop(ctx.domid, None)

        return recorded

    def sink(self, message: Message) -> None:
        """A loguru sink: a line logged by a running rule (a command's output, a handler's ctx.log)."""
        record = message.record
        extra = record["extra"]
        run = self._current.get(extra.get("domid", -1))
        if run is None:
            return
        if "stream" in extra:
            run.output.append(f"{extra['stream']}: {record['message'].split(': ', 1)[-1]}")
        elif not record["name"] or not record["name"].startswith("actors."):
            run.output.append(f"log {record['level'].name}: {record['message']}")


async def _write(box: Sandbox, domid: int, path: str, value: str, out: TextIO) -> None:
    """As guest ``domid`` for its own nodes, as dom0 (a backend, the toolstack) elsewhere."""
    if path == f"/local/domain/{domid}" or path.startswith(f"/local/domain/{domid}/"):
        async with box.guest(domid) as guest:
            await guest.write(path, value)
        print(f"wrote {path} = {value!r} as guest {domid}", file=out)
    else:
        await box.xs.write(path, value)
        print(f"wrote {path} = {value!r} as dom0", file=out)


async def try_rules(config: Config, domid: int, writes: list[tuple[str, str]], out: TextIO) -> list[Run]:
    """Make domain ``domid`` in a sandbox, run the configuration's rules on it as the agent does, make the
    writes and return the rule runs they caused. XenStoreError for a write the daemon refuses."""
    from ..testing.box import sandbox  # the kit, loaded only for this command

    lifecycle: Literal["mtwatch", "domains"] = "domains" if config.lifecycle == "domains" else "mtwatch"
    options = config.options.replace(root=MTWATCH_ROOT, lifecycle=lifecycle)
    recorder = Recorder()
    sink = logger.add(recorder.sink, level="DEBUG", format="{message}")
    logger.enable("actors")
    longest = max((rule.timeout for rule in config.watches), default=0.0)
    patience = longest * max(1, len(config.watches)) + SETTLE_MARGIN
    try:
        async with sandbox(lifecycle=lifecycle) as box, box.runtime(options=options) as rt:
            RuleSet(rt, wrap=recorder.wrap).apply(config.watches)
            domain = await box.create_domain(domid)
            print(
                f"sandbox: embedded xenstored {box.compat}, domain {domid} ({domain.name}, uuid {domain.uuid}),"
                f" lifecycle {lifecycle}",
                file=out,
            )
            await rt.settle(timeout=patience)  # the registration events (left out) are done
            for path, value in writes:
                await _write(box, domid, path, value, out)
            await rt.settle(timeout=patience if math.isfinite(patience) else 60.0)
    finally:
        logger.disable("actors")
        logger.remove(sink)
    return recorder.runs


def print_runs(runs: list[Run], out: TextIO) -> None:
    for run in runs:
        print(f"{describe_rule(run.rule)}", file=out)
        print(f"  event: {run.path} (domain {run.domid})", file=out)
        if run.command is not None:
            print(f"  ran: {shlex.join(run.command)}", file=out)
        for line in run.output:
            print(f"  {line}", file=out)
        if run.rule.run is not None and run.status is not None:
            print(f"  exit status {run.status}" + ("" if run.ok else f": {run.error}"), file=out)
        else:
            print("  ok" if run.ok else f"  failed: {run.error}", file=out)
    failed = sum(not run.ok for run in runs)
    print(f"{len(runs)} rule run{'' if len(runs) == 1 else 's'}, {failed} failed", file=out)
