"""What runs inside a worker process around each call: the memory cap and the log channel set up once
(:func:`init`), the call itself (:func:`run`), and whether the worker retires after it (:func:`retire`).

The log channel is a unix datagram socket the runtime listens on (in a folder only its user may enter): a
``start`` datagram says which worker (pid) took which call, ``log`` datagrams carry the handler's log lines, as
JSON (plain data: nothing a worker sends is code the runtime would run). No trio here: a worker starts light.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["MAX_DATAGRAM", "init", "retire", "run"]

MAX_DATAGRAM = 65536  # a log line longer than this is cut
_TEXT_MAX = MAX_DATAGRAM - 4096

_channel: socket.socket | None = None
_call: int | None = None
_retire = False


def init(log_address: str, memory_limit: int | None, nice: int = 0) -> None:
    """Once per worker, before its first call: lower its CPU priority by ``nice`` (the runtime's loop comes
    first), cap its memory (RLIMIT_DATA: heap and anonymous mappings, where a runaway allocation goes; past it
    allocations fail with MemoryError) and send loguru's lines of this process to the runtime."""
    global _channel
    if nice:
        os.nice(nice)
    if memory_limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    channel.settimeout(1.0)  # a runtime that does not read for that long loses the line, not the worker
    channel.connect(log_address)
    _channel = channel
    from loguru import logger

    logger.remove()
    logger.enable("")
    logger.add(_forward, level=0, format="{message}", catch=True)


def _send(item: tuple[Any, ...]) -> None:
    if _channel is None:
        return
    # The runtime is going, or its buffer stayed full: the line is lost, the handler goes on.
    with contextlib.suppress(OSError, ValueError):
        _channel.send(json.dumps(item).encode())


def _forward(message: Message) -> None:
    record = message.record
    extra = {
        key: value
        for key, value in record["extra"].items()
        if isinstance(value, (str, int, float, bool)) and key != "pid"
    }
    text = record["message"]
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        text += "\n" + "".join(
            traceback.format_exception(exception.type, exception.value, exception.traceback)
        )
    if len(text) > _TEXT_MAX:
        text = text[:_TEXT_MAX] + " [cut]"
    where = [record["name"], record["function"], record["line"]]
    _send(("log", _call, os.getpid(), record["level"].name, text, extra, where))


def run(call: int, handler: Callable[[Any, Any], Any], ctx: Any, payload: Any) -> Any:
    """One call: say which worker took it, then ``handler(ctx, payload)``. A MemoryError (the cap reached)
    retires the worker after it: what is left of its heap is not trusted."""
    global _call, _retire
    _call = call
    _send(("start", call, os.getpid()))
    try:
        return handler(ctx, payload)
    except MemoryError:
        _retire = True
        raise
    finally:
        _call = None


def retire() -> bool:
    return _retire
