"""``mtwatch agent``: the long-running dom0 daemon (README "The agent" describes what it promises).

It follows the mtwatch registry with one supervised actor per guest domain and runs the ``[[watch]]`` rules of
its configuration (:mod:`.config`, :mod:`.rules`); the commands talk to it over its control socket
(:mod:`.control`). SIGTERM/SIGINT stop it within ``runtime.stop_deadline``; SIGHUP reloads the rules and
``[log]`` (an invalid file keeps the running configuration; other sections need a restart). It tells systemd
READY/STATUS/WATCHDOG/RELOADING/STOPPING. An unreachable xenstored is retried, never fatal.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from typing import Any

import trio
from loguru import logger

from ..runtime.domain.context import State
from ..runtime.runtime import Runtime, open_runtime
from ..xs.client import XenStore, connect
from ..xs.errors import XenStoreUnavailable
from . import DEFAULT_ROWS
from .config import Config, ConfigError, Overrides, load_config
from .control import ControlInUse, Encoded, bind_control, serve_control, unlink_if_ours
from .exits import Exit
from .forensics import add_busy_stacks, stack_answer
from .logs import configure_logging
from .metrics import Metrics, listener_addresses, serve_metrics
from .notify import Notifier, monotonic_usec
from .rules import RuleSet
from .status import describe, encode, health

__all__ = ["Agent", "Fatal", "run_agent"]

STATUS_INTERVAL = 1.0  # STATUS= is sent when it changed, checked this often


class Fatal(Exception):
    """An expected condition that ends the agent: a one-line message and an exit status."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _find_fatal(exc: BaseException) -> Fatal | None:
    if isinstance(exc, Fatal):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find_fatal(inner)) is not None:
                return found
    return None


def _bind_error(what: str, exc: OSError) -> Fatal:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Fatal(f"{what}: permission denied ({reason})", Exit.NOPERM)
    if exc.errno == errno.EADDRINUSE or isinstance(exc, ControlInUse):
        return Fatal(f"{what} is already in use ({reason})", Exit.TEMPFAIL)
    return Fatal(f"{what}: {reason}", Exit.TEMPFAIL)


class Agent:
    """One run of the agent with a validated configuration. :meth:`run` returns when stopped by a signal;
    expected conditions that end it early raise :class:`Fatal`."""

    def __init__(self, config: Config, overrides: Overrides, notifier: Notifier) -> None:
        self.config = config
        self.overrides = overrides
        self.notifier = notifier
        self.started_at = 0.0
        self.rules: RuleSet | None = None
        self.rt: Runtime | None = None
        self.metrics: Metrics | None = None
        self._connected_once = False
        self._refusing: dict[int, str] = {}  # domid -> why its events are refused (logged once per change)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[XenStore]:
        """The runtime's connection factory: XenStoreUnavailable is retried by the runtime (it logs it);
        permission denied is not something waiting fixes, so it ends the agent."""
        async with AsyncExitStack() as stack:
            try:
                xs = await stack.enter_async_context(
                    connect(self.config.xenstore_socket, xenbus=self.config.xenbus)
                )
            except XenStoreUnavailable as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise Fatal(f"permission denied: {exc.strerror or exc}", Exit.NOPERM) from None
                raise
            if not self._connected_once:
                self._connected_once = True
                logger.info("connected to xenstored at {}", xs.name)
            yield xs

    async def open_metrics(self) -> list[trio.SocketListener]:
        listen = self.config.metrics
        if listen is None:
            return []
        try:
            return await trio.open_tcp_listeners(listen.port, host=listen.host)
        except socket.gaierror as exc:
            raise Fatal(f"metrics address {listen}: {exc.strerror}", Exit.TEMPFAIL) from None
        except OSError as exc:
            raise _bind_error(f"metrics address {listen}", exc) from None

    def open_control(self, stack: ExitStack) -> socket.socket | None:
        """Bind the control socket; without ``[control] socket`` a default that cannot be made is skipped."""
        path = self.config.control_path
        try:
            sock, made = bind_control(path)
        except OSError as exc:
            if self.config.control is None and not isinstance(exc, ControlInUse):
                logger.warning("no control socket ({}: {}): set [control] socket", path, exc.strerror or exc)
                return None
            raise _bind_error(f"control socket {path}", exc) from None
        stack.callback(unlink_if_ours, path, made)
        stack.callback(sock.close)
        return sock

    # -- the whole life ------------------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        with (
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals,
            ExitStack() as stack,
        ):
            control = self.open_control(stack)
            listeners = await self.open_metrics()
            try:
                async with trio.open_nursery() as nursery:
                    self.started_at = trio.current_time()
                    logger.info(
                        "mtwatch agent starting: xenstored {}, registry {} ({}), {} watch rule{}",
                        config.xenstore_text,
                        config.root,
                        config.lifecycle,
                        len(config.watches),
                        "" if len(config.watches) == 1 else "s",
                    )
                    overrun: threading.Timer | None = None
                    try:
                        async with open_runtime(connect=self.connect, options=config.options) as rt:
                            self.rt = rt
                            rt.observe(self._observe)
                            self.rules = RuleSet(rt)
                            self.rules.apply(config.watches)
                            await self._serve(nursery, rt, control, listeners)
                            task_status.started(rt)
                            await self._serve_signals(signals)
                            self.notifier.notify(STOPPING=1, STATUS="stopping")
                            overrun = _arm_stop_overrun(rt, config.stop_deadline + STOP_GRACE)
                    finally:
                        if overrun is not None:  # stopped (or failed) in time: its own exit status stands
                            overrun.cancel()
                    logger.info("mtwatch agent stopped")
                    nursery.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)

    async def _serve(
        self,
        nursery: trio.Nursery,
        rt: Runtime,
        control: socket.socket | None,
        listeners: list[trio.SocketListener],
    ) -> None:
        self.metrics = Metrics(rt, self.config.metrics_per_domain)
        if listeners:
            await nursery.start(serve_metrics, self.metrics, listeners)
            urls = ", ".join(f"http://{a}/metrics" for a in listener_addresses(listeners))
            logger.info("metrics on {}", urls)
        if control is not None:
            await nursery.start(serve_control, control, self.answer)
            logger.info("control socket {}", self.config.control_path)
        nursery.start_soon(self._announce_ready, rt)
        nursery.start_soon(self._status_loop, rt)
        nursery.start_soon(self.notifier.watchdog)

    async def _serve_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                logger.info(
                    "{} received: reloading {}", name, self.config.source or "(no configuration file)"
                )
                self.reload()
                continue
            logger.info("{} received: stopping (deadline {:g} s)", name, self.config.stop_deadline)
            return

    def _observe(self, kind: str, domid: int, value: float) -> None:
        if kind.startswith("dropped:"):
            reason = kind.partition(":")[2]
            # (unwatched: a rule removed while its events waited, not a domain refusing them)
            if reason != "unwatched" and self._refusing.get(domid) != reason:
                self._refusing[domid] = reason
                logger.bind(domid=domid).warning(
                    "domain {} is {}: its events are dropped (mtwatch_events_dropped_total)", domid, reason
                )
        elif kind in ("restart", "gone"):
            self._refusing.pop(domid, None)

    async def _announce_ready(self, rt: Runtime) -> None:
        await rt.ready.wait()
        logger.info("ready: {}", health(rt)[1])
        self.notifier.notify(READY=1, STATUS=health(rt)[1])

    async def _status_loop(self, rt: Runtime) -> None:
        """STATUS= whenever the health's text changed, looked at every STATUS_INTERVAL; the health is computed
        again only when what it is made of moved (the kept counts, the connection, readiness, a stall)."""
        last_key: object = None
        last = None
        while True:
            xs = rt.connection
            key = (
                rt.census.version,
                rt.connected.value,
                rt.ready.is_set(),
                xs,
                xs is not None and xs.stalled.value,
            )
            if key != last_key:
                last_key = key
                text = health(rt)[1]
                if text != last:
                    self.notifier.notify(STATUS=text)
                    last = text
            await trio.sleep(STATUS_INTERVAL)

    # -- the control socket ----------------------------------------------------------------------------------

    async def answer(self, request: dict[str, Any]) -> dict[str, Any] | Encoded:
        """One control request (see :mod:`actors.agent.control`)."""
        rt = self.rt
        assert rt is not None
        if request["op"] == "status":
            limit = request.get("limit", DEFAULT_ROWS)
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
                return {"ok": False, "error": '"limit" is a number of rows (0 or more), or null for all'}
            doc = await describe(
                rt, started_at=self.started_at, xenstore=self.config.xenstore_text, limit=limit
            )
            await add_busy_stacks(doc, rt)
            doc["latency"] = self.metrics.latency_summary() if self.metrics is not None else None
            return Encoded(await encode(doc))
        if request["op"] == "reset":
            return self._reset(rt, request)
        if request["op"] == "stack":
            return stack_answer(rt, request)
        return {"ok": False, "error": f"unknown op {request['op']!r} (status, reset, stack)"}

    def _reset(self, rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
        domains = rt.domains
        if request.get("failed") is True:
            domids = sorted(rt.census.members(State.FAILED))
        else:
            domid = request.get("domid")
            if not isinstance(domid, int) or isinstance(domid, bool):
                return {"ok": False, "error": 'reset needs "domid": N or "failed": true'}
            if domid not in domains:
                return {"ok": False, "error": f"no domain {domid} (not announced, or gone)"}
            if domains[domid].state not in (State.FAILED, State.BACKOFF):
                return {"ok": False, "error": f"domain {domid} is {domains[domid].state}, not failed"}
            domids = [domid]
        for domid in domids:
            rt.reset(domid)
            self._refusing.pop(domid, None)
            logger.info("control: reset of domain {} (was {})", domid, domains[domid].state)
        return {"ok": True, "reset": domids}

    # -- reload ----------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: re-read the file; apply its rules and [log]; keep everything on an invalid file.

        Once READY=1 was sent, the reload is framed by RELOADING=1 (with MONOTONIC_USEC=) and READY=1; before
        that (still connecting), READY=1 stays for the first full reconcile."""
        rt = self.rt
        announce = rt is not None and rt.ready.is_set()
        if announce:
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS="reloading")
        try:
            return self._reload()
        finally:
            if announce and rt is not None:
                self.notifier.notify(READY=1, STATUS=health(rt)[1])

    def _reload(self) -> bool:
        old = self.config
        if old.source is None:
            logger.warning("reload: the agent runs without a configuration file; nothing to reload")
            return False
        try:
            new = load_config(old.source, self.overrides, fresh=True)
        except ConfigError as exc:
            logger.error("reload failed, keeping the running configuration: {}", exc)
            return False
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure_logging(new.log_format, new.log_level)
            logger.info("reload: logging now {} at {}", new.log_format, new.log_level)
        if needs_restart := new.restart_required(old):
            logger.warning(
                "reload: {} changed; that takes a restart of the agent (keeping the running values)",
                ", ".join(needs_restart),
            )
        assert self.rules is not None and self.rt is not None
        if self.metrics is not None and new.metrics_per_domain != old.metrics_per_domain:
            self.metrics.per_domain = new.metrics_per_domain
            logger.info("reload: per-domain metrics now for {} domains", new.metrics_per_domain)
        added, removed = self.rules.apply(new.watches)
        for rule in removed:
            logger.info("reload: removed rule {!r}", rule.label)
        for rule in added:
            logger.info("reload: added rule {!r}", rule.label)
        if any("{domid}" in rule.path for rule in (*added, *removed)):
            self._reset(self.rt, {"failed": True})  # every domain runs every per-domain rule
        if any(rule.isolation == "process" for rule in added):
            self.rt.renew_workers()  # workers import a process rule's module once: fresh ones import it anew
        n = len(new.watches)
        logger.info(
            "reload done: {} rule{} ({} added, {} removed)",
            n,
            "" if n == 1 else "s",
            len(added),
            len(removed),
        )
        # What a restart would apply stays as it runs; the rest is the new file.
        self.config = dataclasses.replace(
            old,
            source=new.source,
            log_format=new.log_format,
            log_level=new.log_level,
            watches=new.watches,
            metrics_per_domain=new.metrics_per_domain,
        )
        return True


STOP_GRACE = 2.0  # seconds past the stop deadline before the agent gives up on a domain that will not stop


def _arm_stop_overrun(rt: Runtime, seconds: float) -> threading.Timer:
    """A thread that ends the process with Exit.STOP_OVERRUN if the runtime has not stopped ``seconds`` from
    now: a task that ignores cancellation (or blocks the event loop) cannot hold the agent up for ever. A
    thread, because the loop may be the thing that is stuck. The log line names the domains still there."""

    def give_up() -> None:
        try:  # whatever goes wrong in naming the domains (read from outside the loop), the process ends
            stuck = dict(rt.domains)
            names = ", ".join(
                f"domain {domid} ({snap.state.value}, busy with {snap.busy_path or 'its tasks'})"
                for domid, snap in sorted(stuck.items())
            )
            logger.critical(
                "stop overran the deadline by {:g} s: {}; exiting with status {}",
                STOP_GRACE,
                names or "the runtime itself",
                int(Exit.STOP_OVERRUN),
            )
            logger.complete()
        finally:
            os._exit(Exit.STOP_OVERRUN)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer


async def run_agent(config: Config, overrides: Overrides | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; the exit status (a :class:`Fatal` is logged in one line)."""
    with Notifier.from_environment() as notifier:
        try:
            await Agent(config, overrides or Overrides(), notifier).run()
        except BaseException as exc:
            fatal = _find_fatal(exc)
            if fatal is None:
                raise
            logger.error("{}", fatal.message)
            code = {Exit.NOPERM: errno.EACCES, Exit.TEMPFAIL: errno.EADDRINUSE}.get(fatal.code, errno.EINVAL)
            notifier.notify(STATUS=fatal.message, ERRNO=code)
            return fatal.code
    return Exit.OK
