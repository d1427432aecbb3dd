"""The runtime's connection: kept (reconnected after a loss, with ``connect=``), and the lifecycle source
followed on it. Nothing a daemon does - a lost connection at any moment, an error reply, a protocol error - ends
a runtime that can reconnect; exception groups (a loss during a concurrent listing) are handled with
``except*`` (Python 3.11 unwraps nothing by itself)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

import trio

from .._log import logger
from ..xs.client import XenStore
from ..xs.errors import ConnectionLost, XenStoreError
from .domain.owner import Observing
from .domain.supervisor import ReconnectPolicy
from .exception_groups import first_leaf
from .lifecycle.protocol import LifecycleSink, LifecycleSource

__all__ = ["ConnectionFactory", "ConnectionHost", "follow_lifecycle", "keep_connected"]

ConnectionFactory = Callable[[], AbstractAsyncContextManager[XenStore]]


class ConnectionHost(Protocol):
    """What keeping the connection needs of the runtime."""

    reconnects: int
    owns_connection: bool  # the connection now served is the runtime's own (made by connect=), closed with it

    @property
    def observers(self) -> Observing: ...

    @property
    def reconnect_policy(self) -> ReconnectPolicy: ...


async def follow_lifecycle(
    source: LifecycleSource, xs: XenStore, sink: LifecycleSink, policy: ReconnectPolicy
) -> None:
    """Follow ``source`` until the connection is lost. A request of the source's that fails with an error
    reply (or a bug in the source) is logged and the source follows again after a backoff: nothing it raises
    ends the runtime."""
    attempt = 0
    while not xs.is_lost:
        try:
            await source.follow(xs, sink)
        except* ConnectionLost:
            pass
        except* XenStoreError as group:
            logger.warning("following the {} lifecycle failed: {}", source.name, first_leaf(group))
        except* Exception as group:
            logger.opt(exception=first_leaf(group)).error("lifecycle source {} failed", source.name)
        attempt += 1
        if not xs.is_lost:
            await trio.sleep(policy.delay(attempt))


async def keep_connected(
    host: ConnectionHost,
    serve: Callable[[XenStore], Awaitable[None]],
    xs: XenStore | None,
    connect: ConnectionFactory | None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve (``serve(xs)``, until it is lost) the given connection, then (with ``connect``) every later one; without ``connect``, raise
    ConnectionLost once the connection is gone. ``host.reconnects`` counts the connections made after the
    first; failed attempts are logged with the backoff before the next."""
    attempt = 0  # failed attempts since the last good connection
    connections = 0
    task_status.started()
    while True:
        if xs is not None:
            conn_cm: AbstractAsyncContextManager[XenStore] = nullcontext(xs)
            xs = None
            host.owns_connection = False
        elif connect is not None:
            conn_cm = connect()
            host.owns_connection = True
        else:
            raise ConnectionLost("connection to xenstored lost, and the runtime has no connect= to reconnect")
        try:
            async with conn_cm as conn:
                connections += 1
                if connections > 1:
                    host.reconnects += 1
                    host.observers.emit("reconnect", 0)
                    logger.info("reconnected to xenstored ({})", conn.name)
                attempt = 0
                await serve(conn)
            logger.warning("connection to xenstored lost")
        except* (XenStoreError, OSError) as group:  # a loss, a refused connect, a daemon's protocol error
            logger.warning("xenstored unreachable: {}", first_leaf(group))
        if connect is None:
            continue  # raises above
        attempt += 1
        delay = host.reconnect_policy.delay(attempt)
        logger.info("connecting to xenstored again in {:.2g} s", delay)
        await trio.sleep(delay)
