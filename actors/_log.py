"""loguru for the library: the ``actors`` loggers stay disabled until the application enables them.

Imported by the packages that log (runtime, xenstored, agent, bridge) rather than by ``actors/__init__``, so
that ``import actors.xs.wire`` does not load loguru. The disabling runs once, at the first such import, and
leaves alone a decision the application already made (``logger.enable("actors")`` before that import).
"""

from __future__ import annotations

from loguru import logger

__all__ = ["logger"]


def _application_decided(name: str = "actors.") -> bool:
    # loguru keeps enable()/disable() calls in its core's activation list as (dotted-prefix, status) pairs.
    entries = getattr(getattr(logger, "_core", None), "activation_list", None)
    if not isinstance(entries, list):
        return False
    return any(isinstance(prefix, str) and prefix and name.startswith(prefix) for prefix, _ in entries)


if not _application_decided():
    logger.disable("actors")
