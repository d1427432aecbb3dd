"""systemd's notification protocol (sd_notify) without libsystemd: datagrams to ``$NOTIFY_SOCKET`` (a path, or
``@name`` in the abstract namespace). Sending never blocks nor raises; without ``$NOTIFY_SOCKET`` it is a no-op.
:meth:`Notifier.from_environment` unsets ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``, as
``sd_notify(unset_environment=1)`` does, so that the commands the agent runs do not inherit them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping
from types import TracebackType

import trio
from loguru import logger

__all__ = ["Notifier", "monotonic_usec"]


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _clean(value: object) -> str:
    return str(value).replace("\n", " ")


class Notifier:
    """Sends ``KEY=VALUE`` lines to the service manager. Use as a context manager (it owns a socket)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._target: str | None = None
        self._sock: socket.socket | None = None
        self._warned: set[int | None] = set()
        if address:
            if address.startswith("@"):
                self._target = "\0" + address[1:]
            elif address.startswith("/"):
                self._target = address
            else:
                logger.warning("NOTIFY_SOCKET {!r}: only unix socket addresses are supported", address)
        if self._target is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec:
            try:
                watchdog = int(usec)
            except ValueError:
                logger.warning("ignoring WATCHDOG_USEC={!r}: not a number", usec)
            if watchdog is not None and watchdog <= 0:
                watchdog = None
            if pid and pid != str(os.getpid()):
                watchdog = None  # meant for another process
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the service manager's timeout (None: no watchdog)."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` for each field (``notify(READY=1, STATUS="...")``); True if it was sent."""
        if self._sock is None or self._target is None or not fields:
            return False
        message = "\n".join(f"{key}={_clean(value)}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, self._target)
        except OSError as exc:
            if exc.errno not in self._warned:
                self._warned.add(exc.errno)
                logger.warning(
                    "cannot notify the service manager at {}: {}", self.address, exc.strerror or exc
                )
            return False
        return True

    async def watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` at half the timeout, forever, from this trio task: a blocked event loop stops the
        pings, and the service manager restarts the agent."""
        interval = self.watchdog_interval
        if interval is None:
            return
        logger.debug("watchdog: pinging every {:g} s", interval)
        while True:
            self.notify(WATCHDOG=1)
            await trio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
