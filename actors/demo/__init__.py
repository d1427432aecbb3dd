"""``mtwatch demo``: the isolation show on the embedded xenstored (no Xen, no root). It starts xenstored and the
agent as child processes and plays a toolstack and guests against them; it is not part of the agent."""

from __future__ import annotations

import argparse


def demo_arguments(demo: argparse.ArgumentParser) -> None:
    """``mtwatch demo``'s options (its parser in the one argparse tree of :mod:`actors.cli`)."""
    demo.add_argument("--seconds", type=float, default=20.0, help="how long to run (default %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON (no live view)")
    demo.add_argument("--interval", type=float, help="live view refresh (default 1 s, 5 s when not a tty)")
    demo.add_argument("--seed", type=int, help="seed of the churn's randomness")
    demo.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, config)")
