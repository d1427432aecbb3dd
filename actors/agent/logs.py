"""The agent's logging: loguru on stderr, text (default) or one JSON object per line.

Inside a domain's scope the runtime binds or contextualizes ``domid``; the text format shows it as
``[dom5]`` (``[dom0]`` is the default actor), the JSON format carries it in ``record.extra.domid``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["configure_logging", "text_format"]

_TIME = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green>"


def text_format(record: Record) -> str:
    """One line per record: time, level, ``[dom<domid>]`` when the record has one, the message."""
    domid = "[dom{extra[domid]}] " if "domid" in record["extra"] else ""
    return _TIME + " <level>{level: <7}</level> " + domid + "{message}\n{exception}"


def configure_logging(
    format: Literal["text", "json"] = "text", level: str = "INFO", sink: TextIO | None = None
) -> None:
    """Replace every loguru handler by one on ``sink`` (stderr) and enable the ``actors`` loggers."""
    logger.remove()
    out = sys.stderr if sink is None else sink
    if format == "json":
        logger.add(out, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(out, level=level, format=text_format, backtrace=False, diagnose=False)
    logger.enable("actors")
