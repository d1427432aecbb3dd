"""Every exit status of the ``mtwatch`` commands, in one table (``mtwatch --help`` prints it)."""

from __future__ import annotations

import enum

__all__ = ["Exit", "epilog"]


class Exit(enum.IntEnum):
    OK = 0
    DEGRADED = 1  # status: failed or throttled domains; demo, reset: the command failed
    USAGE = 2  # bad command line (argparse); status: not connected to xenstored or not ready
    NO_DAEMON = 3  # no agent answers on the control socket; domain: no xenstored
    SOFTWARE = 70  # internal error (a bug: the log has the traceback)
    TEMPFAIL = 75  # the metrics address or the control socket is in use or not available
    NOPERM = 77  # permission denied: xenstored socket or xenbus, metrics port, control socket, config file
    CONFIG = 78  # invalid configuration (the message names the key)
    STOP_OVERRUN = 124  # agent: a domain did not stop within the stop deadline plus 2 s (the log names it)
    INTERRUPTED = 130  # Ctrl-C before the command could stop in order

    @property
    def meaning(self) -> str:
        return _MEANING[self]


NOT_READY = Exit.USAGE  # the same number, for ``mtwatch status``

_MEANING = {
    Exit.OK: "success; status: healthy; agent: stopped by SIGTERM or SIGINT",
    Exit.DEGRADED: "status: degraded (failed or throttled domains); reset, demo: failed",
    Exit.USAGE: "bad command line; status: not connected to xenstored, or not ready",
    Exit.NO_DAEMON: "no agent answers on the control socket; domain: xenstored unreachable",
    Exit.SOFTWARE: "internal error (a bug: the log has the traceback)",
    Exit.TEMPFAIL: "the metrics address or the control socket is in use or not available",
    Exit.NOPERM: "permission denied (xenstored socket, xenbus, metrics port, control socket, config file)",
    Exit.CONFIG: "invalid configuration (the message names the key)",
    Exit.STOP_OVERRUN: "agent: a domain did not stop within the stop deadline plus 2 s (the log names it)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C) before it could stop in order",
}


def epilog() -> str:
    return "exit status:\n" + "\n".join(f"  {int(e):<4}{e.meaning}" for e in Exit)
