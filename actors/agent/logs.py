"""The agent's logging: loguru on stderr, text (default) or compact JSON, one line per record.

Inside a domain's scope the runtime binds or contextualizes ``domid``; text shows it as ``[dom5]`` (``[dom0]`` is
the default actor). JSON is one flat object a line: ``time``, ``level``, ``message``, then ``domid`` and the other
bound extras (``rule``, ``pid``, ...), and ``exception`` (the traceback's text) when there is one. When stderr is
the journal (``$JOURNAL_STREAM`` names it), every line starts with its syslog priority (``<3>`` for ERROR) and
text lines leave the time to the journal.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, Literal, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["configure_logging", "is_journal", "json_line", "text_format"]

_TIME = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> "
PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def text_format(record: Record, *, with_time: bool = True) -> str:
    """One line per record: time, level, ``[dom<domid>]`` when the record has one, the message."""
    domid = "[dom{extra[domid]}] " if "domid" in record["extra"] else ""
    return (_TIME if with_time else "") + "<level>{level: <7}</level> " + domid + "{message}\n{exception}"


def json_line(record: Record) -> str:
    """The record as one compact JSON object (no newline)."""
    flat: dict[str, Any] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
    }
    for key, value in record["extra"].items():
        flat.setdefault(key, value)
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        flat["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback)).rstrip()
    return json.dumps(flat, separators=(",", ":"), default=str, ensure_ascii=False)


def is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal's stream (systemd sets ``JOURNAL_STREAM=device:inode``)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure_logging(
    format: Literal["text", "json"] = "text", level: str = "INFO", sink: TextIO | None = None
) -> None:
    """Replace every loguru handler by one on ``sink`` (stderr) and enable the ``actors`` loggers."""
    logger.remove()
    out = sys.stderr if sink is None else sink
    journal = is_journal(out)

    def prefix(record: Record) -> str:
        return f"<{PRIORITY.get(record['level'].name, 6)}>" if journal else ""

    if format == "json":

        def write_json(message: Message) -> None:
            out.write(prefix(message.record) + json_line(message.record) + "\n")
            out.flush()

        logger.add(write_json, level=level, format="{message}", backtrace=False, diagnose=False)
    elif journal:

        def write_text(message: Message) -> None:
            out.write(prefix(message.record) + str(message))
            out.flush()

        fmt = lambda record: text_format(record, with_time=False)  # noqa: E731
        logger.add(write_text, level=level, format=fmt, colorize=False, backtrace=False, diagnose=False)
    else:
        logger.add(out, level=level, format=text_format, backtrace=False, diagnose=False)
    logger.enable("actors")
