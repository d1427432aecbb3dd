"""The ``mtwatch`` command: one argparse tree for ``agent``, ``status``, ``domains``, ``top``, ``reset``, ``stack``,
``contrib``, ``demo``,
``domain announce|retire|list|bridge`` and ``xenstored`` (whose options are the embedded server's own). Exit
statuses: :class:`actors.agent.exits.Exit` (``mtwatch --help`` lists them)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import __version__
from .agent import DEFAULT_CONTROL, DEFAULT_ROWS
from .agent.exits import Exit, epilog
from .demo import demo_arguments
from .xs.errors import XenStoreError

if TYPE_CHECKING:
    from .agent.config import Config, Overrides


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--version", action="version", version=f"mtwatch {__version__}")
    return p


def _control(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--control",
        metavar="PATH",
        default=DEFAULT_CONTROL,
        help="the agent's control socket (default %(default)s)",
    )
    return _common(p)


def _asking(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the agent's answer (default %(default)g; past it: exit 4, busy)",
    )
    return _control(p)


def _rows(p: argparse.ArgumentParser, text: str) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rows", type=int, metavar="N", help=text)
    which.add_argument("--all", action="store_true", help="every domain")


def _xenstore(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--xenstore", metavar="PATH", help="xenstored socket (default: $XENSTORED_PATH, ...)")
    p.add_argument("--root", default=None, help="mtwatch root (default /local/domain/0/mtwatch)")
    return _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _common(
        argparse.ArgumentParser(
            prog="mtwatch",
            description="A dom0 watch runtime for Xen hosts.",
            epilog=epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    agent = _control(sub.add_parser("agent", help="run the dom0 agent (SIGTERM stops, SIGHUP reloads)"))
    agent.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: built-in defaults, no rules)"
    )
    agent.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics and /healthz at HOST:PORT")
    agent.add_argument("--log-json", action="store_true", help="log one compact JSON object per line")
    agent.add_argument(
        "--log-level", metavar="LEVEL", help="TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL"
    )
    agent.add_argument("--xenstore", metavar="PATH", help="xenstored socket (default: $XENSTORED_PATH, ...)")
    agent.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration (every error, with its line) and print the rules; exit 0 or 78",
    )
    agent.set_defaults(control=None)  # None: the configuration's [control] socket
    status = _asking(sub.add_parser("status", help="the agent's health and domains (exit 0/1/2/3/4)"))
    status.add_argument("--json", action="store_true", help="print the agent's status document as JSON")
    _rows(status, f"rows of the table, trouble first (default {DEFAULT_ROWS})")
    _rows(
        _asking(sub.add_parser("domains", help="the domain table, plain (for scripts)")), "rows (default all)"
    )
    top = _control(sub.add_parser("top", help="a live view of the agent's domains (q quits)"))
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    _rows(top, "rows asked for at each refresh, trouble first (default 500)")
    stack = _asking(sub.add_parser("stack", help="where each task of a domain waits now, and for how long"))
    stack.add_argument("domid", type=int, help="the domain")
    contrib = _common(
        sub.add_parser("contrib", help="print the Grafana dashboard or the Prometheus alert rules")
    )
    contrib.add_argument(
        "what", choices=sorted(CONTRIB), help="grafana (dashboard JSON) or alerts (rules YAML)"
    )
    reset = _asking(sub.add_parser("reset", help="give failed domains a fresh start"))
    which = reset.add_mutually_exclusive_group(required=True)
    which.add_argument("domid", nargs="?", type=int, help="the failed domain")
    which.add_argument("--all-failed", action="store_true", help="every failed domain")
    rules = _common(sub.add_parser("rules", help="try the agent's rules: rules test"))
    rules_actions = rules.add_subparsers(dest="action", metavar="ACTION", required=True)
    rules_test = _common(
        rules_actions.add_parser(
            "test",
            help="run the rules a write fires, once, in a sandbox (embedded xenstored), and show what ran",
        )
    )
    rules_test.add_argument("--config", metavar="FILE", required=True, help="the agent's TOML configuration")
    rules_test.add_argument("--domain", metavar="DOMID", required=True, help="the guest domain to make")
    rules_test.add_argument(
        "--write",
        metavar="PATH=VALUE",
        action="append",
        default=[],
        help="a write to make (as the guest under its own /local/domain/DOMID, as dom0 elsewhere); repeatable",
    )
    demo_help = "the isolation demo on the embedded xenstored (no Xen, no root)"
    demo_arguments(_common(sub.add_parser("demo", help=demo_help)))
    sub.add_parser("xenstored", help="run the embedded xenstored (mtwatch xenstored --help)", add_help=False)
    domain = _common(sub.add_parser("domain", help="the toolstack side: announce, retire, list, bridge"))
    actions = domain.add_subparsers(dest="action", metavar="ACTION", required=True)
    announce = _xenstore(actions.add_parser("announce", help="make /local/domain/0/mtwatch/DOMID (perms n0)"))
    announce.add_argument("domid")
    announce.add_argument("--identity", default="", help="the node's value, e.g. the domain's UUID")
    _xenstore(actions.add_parser("retire", help="remove /local/domain/0/mtwatch/DOMID")).add_argument("domid")
    _xenstore(actions.add_parser("list", help="list announced domains and their identities"))
    _xenstore(actions.add_parser("bridge", help="announce and retire mtwatch nodes for a stock toolstack"))
    return parser


# -- the commands -------------------------------------------------------------------------------------------


def _agent(args: argparse.Namespace) -> int:
    from loguru import logger

    from .agent.config import Overrides
    from .agent.daemon import run_agent
    from .agent.logs import configure_logging

    overrides = Overrides(args.metrics, args.log_json, args.log_level, args.xenstore, args.control)
    config = _config("agent", args.config, overrides, located=args.check)
    if isinstance(config, Exit):
        return config
    if args.check:
        from .agent.dryrun import print_check

        print_check(config, sys.stdout)
        return Exit.OK
    configure_logging(config.log_format, config.log_level)
    import trio

    try:
        return trio.run(run_agent, config, overrides)
    except KeyboardInterrupt:  # SIGINT before the signal receiver was in place
        print("mtwatch agent: interrupted while starting", file=sys.stderr)
        return Exit.INTERRUPTED
    except Exception:
        logger.opt(exception=True).critical("internal error: the agent stops")
        return Exit.SOFTWARE


def _config(
    command: str, path: str | None, overrides: Overrides | None = None, *, located: bool = True
) -> Config | Exit:
    """The configuration, or the exit status after printing every error (``located``: as FILE:LINE: key:
    problem, one a line)."""
    from .agent.config import ConfigError, ConfigPermissionError, load_config

    try:
        return load_config(path, overrides)
    except ConfigPermissionError as exc:
        print(f"mtwatch {command}: {exc}", file=sys.stderr)
        return Exit.NOPERM
    except ConfigError as exc:
        for error in exc.errors:
            text = error.located() if located else str(error)
            print(f"mtwatch {command}: configuration error: {text}", file=sys.stderr)
        if located:
            count = len(exc.errors)
            print(f"mtwatch {command}: {count} error{'' if count == 1 else 's'}", file=sys.stderr)
        return Exit.CONFIG


def _rules(args: argparse.Namespace) -> int:
    from .agent.dryrun import parse_write, print_runs, try_rules
    from .xs.wire import check_domid

    try:
        domid = check_domid(args.domain, guest_only=True)
        writes = [parse_write(text) for text in args.write]
    except (ValueError, XenStoreError) as exc:
        print(f"mtwatch rules test: {exc}", file=sys.stderr)
        return Exit.USAGE
    if not writes:
        print("mtwatch rules test: give at least one --write PATH=VALUE", file=sys.stderr)
        return Exit.USAGE
    config = _config("rules test", args.config)
    if isinstance(config, Exit):
        return config
    import trio
    from loguru import logger

    logger.remove()  # what the rules print is the report; the runtime's own warnings go to stderr
    logger.add(sys.stderr, level="WARNING", filter=lambda record: "stream" not in record["extra"])
    try:
        runs = trio.run(try_rules, config, domid, writes, sys.stdout)
    except XenStoreError as exc:
        print(f"mtwatch rules test: {exc}", file=sys.stderr)
        return Exit.DEGRADED
    except TimeoutError as exc:
        print(f"mtwatch rules test: {exc}", file=sys.stderr)
        return Exit.DEGRADED
    print_runs(runs, sys.stdout)
    if not runs:
        print("mtwatch rules test: no rule ran for these writes", file=sys.stderr)
    return Exit.OK if runs and all(run.ok for run in runs) else Exit.DEGRADED


def _ask(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any] | Exit:
    """The agent's answer, or the exit status that says why there is none: busy (4) or no agent (3)."""
    from .agent.control import AgentBusy, ControlUnavailable, ask

    if args.timeout <= 0:
        print(f"mtwatch {args.command}: --timeout must be positive", file=sys.stderr)
        return Exit.USAGE
    try:
        return ask(args.control, request, timeout=args.timeout)
    except AgentBusy as exc:
        print(f"mtwatch {args.command}: {exc}", file=sys.stderr)
        return Exit.AGENT_BUSY
    except ControlUnavailable as exc:
        print(f"mtwatch {args.command}: {exc}", file=sys.stderr)
        return Exit.NO_DAEMON


def _status(args: argparse.Namespace) -> int:
    from .agent import status
    from .agent.quotas import quota_lines

    if args.rows is not None and args.rows < 0:
        print(f"mtwatch {args.command}: --rows must not be negative", file=sys.stderr)
        return Exit.USAGE
    default = None if args.command == "domains" else DEFAULT_ROWS
    limit = None if args.all else (args.rows if args.rows is not None else default)
    doc = _ask(args, {"op": "status", "limit": limit})
    if isinstance(doc, Exit):
        return doc
    table = [line for _, line in status.rows(doc)]
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.command == "domains":
        print(status.COLUMNS.rstrip(), *table, sep="\n")
        return Exit.OK
    else:
        print(
            *status.header(doc), "", status.COLUMNS, *table, status.totals(doc), *quota_lines(doc), sep="\n"
        )
    return int(doc["health"]["code"])


def _reset(args: argparse.Namespace) -> int:
    request = {"op": "reset", "failed": True} if args.all_failed else {"op": "reset", "domid": args.domid}
    answer = _ask(args, request)
    if isinstance(answer, Exit):
        return answer
    if not answer.get("ok"):
        print(f"mtwatch reset: {answer.get('error')}", file=sys.stderr)
        return Exit.DEGRADED
    reset = answer.get("reset") or []
    print(f"reset: {', '.join(map(str, reset))}" if reset else "no failed domain")
    return Exit.OK


def _stack(args: argparse.Namespace) -> int:
    from .agent.forensics import format_stacks

    answer = _ask(args, {"op": "stack", "domid": args.domid})
    if isinstance(answer, Exit):
        return answer
    if not answer.get("ok"):
        print(f"mtwatch stack: {answer.get('error')}", file=sys.stderr)
        return Exit.DEGRADED
    print(format_stacks(answer))
    return Exit.OK


# What ``mtwatch contrib`` prints: package data under actors/agent/contrib/ (scripts/install copies them).
CONTRIB = {"grafana": "grafana-dashboard.json", "alerts": "prometheus-alerts.yml"}


def _contrib(args: argparse.Namespace) -> int:
    from importlib.resources import files

    sys.stdout.write(files("actors.agent").joinpath("contrib").joinpath(CONTRIB[args.what]).read_text())
    return Exit.OK


def _top(args: argparse.Namespace) -> int:
    from .agent.top import run_top

    if args.interval <= 0:
        print("mtwatch top: --interval must be positive", file=sys.stderr)
        return Exit.USAGE
    if args.rows is not None and args.rows < 0:
        print("mtwatch top: --rows must not be negative", file=sys.stderr)
        return Exit.USAGE
    return run_top(args.control, args.interval, None if args.all else (args.rows or 500))


def _demo(args: argparse.Namespace) -> int:
    from .demo.show import main

    return main(args)


async def _until_signal(name: str, fn: Callable[[], Awaitable[object]]) -> None:
    """Run ``fn()`` until it returns or SIGINT/SIGTERM, which ends it with one line, the last (written once
    ``fn`` is cancelled, so that nothing it logs on its way out comes after)."""
    import trio

    received: list[int] = []
    async with trio.open_nursery() as nursery:

        async def body() -> None:
            await fn()
            nursery.cancel_scope.cancel()

        nursery.start_soon(body)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                received.append(signum)
                nursery.cancel_scope.cancel()
                break
    for signum in received:
        print(f"mtwatch {name}: {signal.Signals(signum).name} received, stopping", file=sys.stderr)


def _domain(args: argparse.Namespace) -> int:
    import trio

    from . import toolstack
    from .runtime.lifecycle.mtwatch import MtwatchSource
    from .runtime.lifecycle.protocol import MTWATCH_ROOT
    from .xs.client import connect
    from .xs.wire import check_domid

    root = args.root or MTWATCH_ROOT
    domid = 0
    try:
        if args.action in ("announce", "retire"):
            domid = check_domid(args.domid, guest_only=True)
    except XenStoreError as exc:
        print(f"mtwatch: {exc}", file=sys.stderr)
        return Exit.USAGE

    async def main() -> None:
        async with connect(args.xenstore) as xs:
            if args.action == "announce":
                await toolstack.announce_domain(xs, domid, identity=args.identity, root=root)
            elif args.action == "retire":
                await toolstack.retire_domain(xs, domid, root=root)
            elif args.action == "list":
                listing = await MtwatchSource(root).listing(xs)
                for d in sorted(listing):
                    print(f"{d}\t{listing[d].decode(errors='replace')}")
            else:
                from loguru import logger

                from .agent.logs import configure_logging
                from .bridge import run_bridge

                configure_logging()

                async def bridge() -> None:  # says it runs once SIGINT/SIGTERM are caught, not before
                    logger.info(
                        "domain bridge: keeping {} in step with the host's domains on {}", root, xs.name
                    )
                    await run_bridge(xs, root=root)

                await _until_signal("domain bridge", bridge)

    try:
        trio.run(main)
    except XenStoreError as exc:
        print(f"mtwatch: {exc}", file=sys.stderr)
        return Exit.NO_DAEMON
    except KeyboardInterrupt:
        print("mtwatch: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    return Exit.OK


def _xenstored(argv: list[str]) -> int:
    from .xenstored.server import main

    if "--version" in argv:
        print(f"mtwatch {__version__}")
        return Exit.OK
    try:
        return main(argv)
    except KeyboardInterrupt:  # SIGINT before its signal receiver was in place
        print("mtwatch xenstored: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "agent": _agent,
    "status": _status,
    "domains": _status,
    "reset": _reset,
    "stack": _stack,
    "contrib": _contrib,
    "top": _top,
    "demo": _demo,
    "domain": _domain,
    "rules": _rules,
}


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["xenstored"]:
        return _xenstored(args_list[1:])
    args = build_parser().parse_args(args_list)
    if args.command == "domains":
        args.json = False
    return int(_COMMANDS[args.command](args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
