"""``mtwatch agent``: the long-running dom0 daemon that runs watch rules per domain.

It connects to xenstored, follows the mtwatch registry, runs one supervised actor per guest domain, and for each
``[[watch]]`` rule of its TOML configuration (:mod:`actors.agent.config`) runs a command or calls a Python
function per event (:mod:`actors.agent.rules`).

Signals: SIGTERM or SIGINT stop it gracefully within ``runtime.stop_deadline`` (running handlers may finish within
most of it, then are cancelled and their processes killed), exit status 0. SIGHUP reloads the file: rules added or
removed take effect at once, without restarting the domains they do not touch, and ``[log]`` changes apply; the
other sections need a restart (the log says which). An invalid file on reload keeps the running configuration.

systemd (``Type=notify-reload``): ``READY=1`` after the first full reconcile of the registry, ``STATUS=`` with the
domain counts, ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``, ``RELOADING=1`` then ``READY=1`` around a reload,
``STOPPING=1``. See ``scripts/mtwatch-agent.service``.

An unreachable xenstored, at start or later, is not fatal: the agent says so in the log and retries with
backoff (READY=1 waits for it; systemd's TimeoutStartSec bounds the wait at start), since xenstored may start
after the agent or be restarted under it.

Exit status:

- 0: stopped by SIGTERM or SIGINT
- 2: bad command line usage
- 70 (EX_SOFTWARE): internal error (a bug: the log has the traceback)
- 75 (EX_TEMPFAIL): the metrics address cannot be bound (in use, or not available on this host)
- 77 (EX_NOPERM): permission denied: the xenstored socket or xenbus device, the metrics port, the config file
- 78 (EX_CONFIG): invalid configuration (the message names the key and the problem)
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import NoReturn

import trio
from loguru import logger

from ..runtime.context import State
from ..runtime.runtime import Runtime, open_runtime
from ..xs.client import XenStore, connect
from ..xs.errors import XenStoreUnavailable
from .config import Config, ConfigError, ConfigPermissionError, Overrides, load_config
from .logs import configure_logging
from .metrics import Metrics, listener_addresses, open_metrics_listeners, serve_metrics
from .notify import Notifier, monotonic_usec
from .rules import RuleSet

__all__ = [
    "EXIT_CONFIG",
    "EXIT_METRICS_ADDRESS",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_SOFTWARE",
    "EXIT_USAGE",
    "Agent",
    "Fatal",
    "main",
    "run_agent",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_METRICS_ADDRESS = 75
EXIT_PERMISSION = 77
EXIT_CONFIG = 78

STATUS_INTERVAL = 1.0  # at most one STATUS= update per this many seconds

EPILOG = """\
exit status:
  0   stopped by SIGTERM or SIGINT
  2   bad command line usage
  70  internal error (a bug: the log has the traceback)
  75  the metrics address cannot be bound (in use, or not available here)
  77  permission denied (xenstored socket or xenbus device, metrics port, config file)
  78  invalid configuration (the message names the key)

An unreachable xenstored is not fatal: the agent logs it and retries with backoff.
signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the configuration file.
"""


class Fatal(Exception):
    """An expected condition that ends the agent: a one-line message and an exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _find_fatal(exc: BaseException) -> Fatal | None:
    if isinstance(exc, Fatal):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_fatal(inner)
            if found is not None:
                return found
    return None


def status_text(rt: Runtime) -> str:
    """``STATUS=``: the domain counts by state, and whether xenstored is reachable."""
    counts = Counter(snapshot.state for snapshot in rt.domains.values())
    total = sum(counts.values())
    parts = ", ".join(f"{counts[state]} {state.value}" for state in State if counts.get(state))
    text = f"{total} domain{'' if total == 1 else 's'}" + (f" ({parts})" if parts else "")
    conn = rt.connection
    if conn is None or conn.is_lost:
        text = f"xenstored unreachable, retrying; {text}"
    elif not rt.ready.is_set():
        text = f"reading the registry; {text}"
    return text


class _Dirty:
    """A flag with a wake-up: marks pile up into one while the reader is busy."""

    def __init__(self) -> None:
        self.flag = True
        self._event = trio.Event()

    def mark(self) -> None:
        self.flag = True
        self._event.set()

    async def wait(self) -> None:
        if not self.flag:
            await self._event.wait()
        self.flag = False
        self._event = trio.Event()


class Agent:
    """One run of the agent with a validated configuration. :meth:`run` returns when stopped by a signal;
    expected conditions that end it early raise :class:`Fatal`."""

    def __init__(self, config: Config, overrides: Overrides, notifier: Notifier) -> None:
        self.config = config
        self.overrides = overrides
        self.notifier = notifier
        self._connected_once = False
        self._status = _Dirty()
        self.rules: RuleSet | None = None

    # -- the connection -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[XenStore]:
        """The runtime's connection factory: XenStoreUnavailable is retried by the runtime (it logs it);
        permission denied is not something waiting fixes, so it ends the agent."""
        config = self.config
        async with AsyncExitStack() as stack:
            try:
                xs = await stack.enter_async_context(connect(config.xenstore_socket, xenbus=config.xenbus))
            except XenStoreUnavailable as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise Fatal(f"permission denied: {exc.strerror or exc}", EXIT_PERMISSION) from None
                self._status.mark()
                raise
            if not self._connected_once:
                self._connected_once = True
                logger.info("connected to xenstored at {}", xs.name)
            self._status.mark()
            yield xs

    # -- metrics -----------------------------------------------------------------------------------------

    async def open_metrics(self) -> list[trio.SocketListener]:
        listen = self.config.metrics
        if listen is None:
            return []
        try:
            return await open_metrics_listeners(listen.host, listen.port)
        except socket.gaierror as exc:
            raise Fatal(f"metrics address {listen}: {exc.strerror}", EXIT_METRICS_ADDRESS) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise Fatal(
                    f"metrics address {listen}: permission denied ({reason})", EXIT_PERMISSION
                ) from None
            if exc.errno == errno.EADDRINUSE:
                raise Fatal(f"metrics address {listen} is already in use", EXIT_METRICS_ADDRESS) from None
            raise Fatal(f"metrics address {listen}: {reason}", EXIT_METRICS_ADDRESS) from None

    # -- the whole life ------------------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            listeners = await self.open_metrics()
            try:
                async with trio.open_nursery() as nursery:
                    logger.info(
                        "mtwatch agent starting: xenstored {}, registry {} ({}), {} watch rule{}",
                        config.xenstore_text,
                        config.root,
                        config.lifecycle,
                        len(config.watches),
                        "" if len(config.watches) == 1 else "s",
                    )
                    async with open_runtime(
                        connect=self.connect,
                        root=config.root,
                        lifecycle=config.lifecycle,
                        mailbox_size=config.mailbox_size,
                        restart=config.restart,
                        stop_deadline=config.stop_deadline,
                    ) as rt:
                        rt.observe(self._observe)
                        self.rules = RuleSet(rt)
                        self.rules.apply(config.watches)
                        if listeners:
                            metrics = Metrics(rt)
                            await nursery.start(serve_metrics, metrics, listeners)
                            logger.info(
                                "metrics on {}",
                                ", ".join(f"http://{a}/metrics" for a in listener_addresses(listeners)),
                            )
                        nursery.start_soon(self._announce_ready, rt)
                        nursery.start_soon(self._follow_changes, rt)
                        nursery.start_soon(self._status_loop, rt)
                        nursery.start_soon(self.notifier.watchdog)
                        task_status.started(rt)
                        await self._serve_signals(signals)
                        self.notifier.notify(STOPPING=1, STATUS="stopping")
                    logger.info("mtwatch agent stopped")
                    nursery.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)

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
        if kind in ("reconnect", "gone"):
            self._status.mark()

    async def _announce_ready(self, rt: Runtime) -> None:
        await rt.ready.wait()
        logger.info("ready: {}", status_text(rt))
        self.notifier.notify(READY=1, STATUS=status_text(rt))

    async def _follow_changes(self, rt: Runtime) -> None:
        while True:
            await rt.changed.wait()
            self._status.mark()  # no checkpoint before the next wait(): no change is missed

    async def _status_loop(self, rt: Runtime) -> None:
        last = None
        while True:
            await self._status.wait()
            text = status_text(rt)
            if text != last:
                self.notifier.notify(STATUS=text)
                last = text
            await trio.sleep(STATUS_INTERVAL)

    # -- reload ----------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: re-read the file; apply its rules and [log]; keep everything on an invalid file.

        Once READY=1 was sent, the reload is framed by RELOADING=1 (with MONOTONIC_USEC=) and READY=1; before
        that (still connecting), READY=1 stays for the first full reconcile."""
        rt = self.rules.rt if self.rules is not None else None
        announce = rt is not None and rt.ready.is_set()
        if announce:
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS="reloading")
        try:
            ok = self._reload()
        finally:
            if announce and rt is not None:
                self.notifier.notify(READY=1, STATUS=status_text(rt))
        return ok

    def _reload(self) -> bool:
        old = self.config
        if old.source is None:
            logger.warning("reload: the agent runs without a configuration file; nothing to reload")
            return False
        try:
            new = load_config(old.source, self.overrides)
        except ConfigError as exc:
            logger.error("reload failed, keeping the running configuration: {}", exc)
            return False
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure_logging(new.log_format, new.log_level)
            logger.info("reload: logging now {} at {}", new.log_format, new.log_level)
        needs_restart = new.restart_required(old)
        if needs_restart:
            logger.warning(
                "reload: {} changed; that takes a restart of the agent (keeping the running values)",
                ", ".join(needs_restart),
            )
        assert self.rules is not None
        added, removed = self.rules.apply(new.watches)
        for rule in removed:
            logger.info("reload: removed rule {!r}", rule.label)
        for rule in added:
            logger.info("reload: added rule {!r}", rule.label)
        logger.info(
            "reload done: {} rule{} ({} added, {} removed)",
            len(new.watches),
            "" if len(new.watches) == 1 else "s",
            len(added),
            len(removed),
        )
        # What a restart would apply stays as it runs; the rest is the new file.
        self.config = dataclasses.replace(
            old, source=new.source, log_format=new.log_format, log_level=new.log_level, watches=new.watches
        )
        return True


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
            notifier.notify(STATUS=fatal.message, ERRNO=_errno_for(fatal.code))
            return fatal.code
    return EXIT_OK


def _errno_for(code: int) -> int:
    return {EXIT_PERMISSION: errno.EACCES, EXIT_METRICS_ADDRESS: errno.EADDRINUSE}.get(code, errno.EINVAL)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtwatch agent",
        description="The dom0 mtwatch agent: one supervised actor per guest domain, running the watch rules\n"
        "of its TOML configuration (a command or a Python function per event).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: built-in defaults, no rules)"
    )
    parser.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics"
    )
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument(
        "--log-level", metavar="LEVEL", help="TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL"
    )
    parser.add_argument("--xenstore", metavar="PATH", help="xenstored socket (default: $XENSTORED_PATH, ...)")
    return parser


def main(argv: list[str]) -> int:
    """``mtwatch agent [--config FILE] ...``: the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    overrides = Overrides(
        metrics=args.metrics, log_json=args.log_json, log_level=args.log_level, xenstore=args.xenstore
    )
    try:
        config = load_config(args.config, overrides)
    except ConfigPermissionError as exc:
        print(f"mtwatch agent: {exc}", file=sys.stderr)
        return EXIT_PERMISSION
    except ConfigError as exc:
        print(f"mtwatch agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_format, config.log_level)
    try:
        return trio.run(run_agent, config, overrides)
    except KeyboardInterrupt:  # SIGINT before the signal receiver was in place
        return 130
    except Exception:
        logger.opt(exception=True).critical("internal error: the agent stops")
        return EXIT_SOFTWARE
