"""Every exit status of the ``mtwatch`` commands, in one table (``mtwatch --help`` prints it)."""

from __future__ import annotations

import enum

__all__ = ["Exit", "epilog"]


class Exit(enum.IntEnum):
    """An exit status; ``meaning`` says when a command ends with it."""

    meaning: str

    def __new__(cls, value: int, meaning: str) -> Exit:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "success; status: healthy; agent: stopped by SIGTERM or SIGINT"
    DEGRADED = (
        1,
        "status: degraded (failed, throttled or above a quota threshold); reset, stack, demo: failed; rules test: a"
        " rule failed or none ran",
    )
    USAGE = 2, "bad command line; status: not connected to xenstored, or not ready"
    NO_DAEMON = 3, "no agent answers on the control socket; domain: xenstored unreachable"
    AGENT_BUSY = 4, "an agent is there (it took the connection) but did not answer in time (--timeout)"
    SOFTWARE = 70, "internal error (a bug: the log has the traceback)"
    TEMPFAIL = 75, "the metrics address or the control socket is in use or not available"
    NOPERM = 77, "permission denied (xenstored socket, xenbus, metrics port, control socket, config file)"
    CONFIG = 78, "invalid configuration (the messages name each key and its line)"
    STOP_OVERRUN = 124, "agent: a domain did not stop within the stop deadline plus 2 s (the log names it)"
    INTERRUPTED = 130, "interrupted (Ctrl-C) before it could stop in order"


NOT_READY = Exit.USAGE  # the same number, for ``mtwatch status``


def epilog() -> str:
    return "exit status:\n" + "\n".join(f"  {int(e):<4}{e.meaning}" for e in Exit)
