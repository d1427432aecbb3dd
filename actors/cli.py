"""The ``mtwatch`` command: ``xenstored``, ``domain announce|retire|list|bridge`` (and, with the agent,
``agent``, ``status``, ``top``, ``demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

import trio

from .xs.errors import XenStoreError

EXIT_USAGE = 2
EXIT_XENSTORE = 3

# Subcommands with parsers of their own: name -> (module, function, help).
_DELEGATED_HELP = {
    "xenstored": (".xenstored", "main", "run the embedded xenstored (mtwatch xenstored --help)"),
    "agent": (".agent.daemon", "main", "run the dom0 agent (mtwatch agent --help)"),
    "status": (".agent.status", "main_status", "show a running agent's domains"),
    "top": (".agent.status", "main_top", "a live view of a running agent's domains"),
    "demo": (".agent.demo", "main", "the isolation demo on the embedded xenstored (no Xen, no root)"),
}
_DELEGATED = {name: (module, function) for name, (module, function, _) in _DELEGATED_HELP.items()}


def _domain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    domain = sub.add_parser("domain", help="the toolstack side of mtwatch: announce, retire, list, bridge")
    actions = domain.add_subparsers(dest="action", metavar="ACTION", required=True)

    def with_xenstore(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--xenstore", metavar="PATH", help="xenstored socket (default: $XENSTORED_PATH, ...)")
        p.add_argument("--root", default=None, help="mtwatch root (default /local/domain/0/mtwatch)")
        return p

    announce = with_xenstore(
        actions.add_parser("announce", help="make /local/domain/0/mtwatch/DOMID (perms n0)")
    )
    announce.add_argument("domid")
    announce.add_argument("--identity", default="", help="the node's value, e.g. the domain's UUID")
    retire = with_xenstore(actions.add_parser("retire", help="remove /local/domain/0/mtwatch/DOMID"))
    retire.add_argument("domid")
    with_xenstore(actions.add_parser("list", help="list announced domains and their identities"))
    with_xenstore(
        actions.add_parser(
            "bridge",
            help="announce and retire mtwatch nodes for a stock toolstack, following @introduceDomain/"
            "@releaseDomain (runs until SIGINT/SIGTERM)",
        )
    )


def _run(fn: Callable[[], Awaitable[int]]) -> int:
    try:
        return trio.run(fn)
    except XenStoreError as exc:
        print(f"mtwatch: {exc}", file=sys.stderr)
        return EXIT_XENSTORE
    except KeyboardInterrupt:
        return 130


def _domain(args: argparse.Namespace) -> int:
    from . import toolstack
    from .runtime.lifecycle import MTWATCH_ROOT
    from .xs.client import connect
    from .xs.wire import check_domid

    root = args.root or MTWATCH_ROOT
    domid = None
    if args.action in ("announce", "retire"):
        try:
            domid = check_domid(args.domid, guest_only=True)
        except XenStoreError as exc:
            print(f"mtwatch: {exc}", file=sys.stderr)
            return EXIT_USAGE

    async def main() -> int:
        async with connect(args.xenstore) as xs:
            if args.action == "announce":
                assert domid is not None
                await toolstack.announce_domain(xs, domid, identity=args.identity, root=root)
            elif args.action == "retire":
                assert domid is not None
                await toolstack.retire_domain(xs, domid, root=root)
            elif args.action == "list":
                from .runtime.lifecycle import MtwatchSource

                listing = await MtwatchSource(root).listing(xs)
                for d in sorted(listing):
                    print(f"{d}\t{listing[d].decode(errors='replace')}")
            elif args.action == "bridge":
                from .bridge import run_bridge

                await run_bridge(xs, root=root)
        return 0

    return _run(main)


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DELEGATED:
        module_name, function = _DELEGATED[args_list[0]]
        import importlib

        module = importlib.import_module(module_name, __package__)
        result: int = getattr(module, function)(args_list[1:])
        return result
    parser = argparse.ArgumentParser(prog="mtwatch", description="A dom0 watch runtime for Xen hosts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, text) in _DELEGATED_HELP.items():
        sub.add_parser(name, help=text, add_help=False)
    _domain_parser(sub)
    args = parser.parse_args(args_list)
    if args.command == "domain":
        return _domain(args)
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
