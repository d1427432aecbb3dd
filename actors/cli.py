"""The ``mtwatch`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mtwatch", description="A dom0 watch runtime for Xen hosts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("xenstored", help="run the embedded xenstored (see: mtwatch xenstored --help)", add_help=False)
    if args and args[0] == "xenstored":
        from .xenstored import main as xenstored_main

        return xenstored_main(args[1:])
    parser.parse_args(args)
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
