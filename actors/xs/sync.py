"""A blocking XenStore client for code that is not on trio: a process handler's worker, a script.

The same sans-IO :class:`~actors.xs.protocol.ClientProtocol` and request builder (:mod:`.builder`) as the trio
client, driven by a blocking unix socket (or the xenbus device): one request at a time, every wait bounded by
``timeout``. No watches and no transactions: a worker handles one event and reads or writes what it needs; the
runtime keeps the watches.

    with SyncXenStore("/run/xenstored/socket") as xs:
        xs.write("/local/domain/7/data/seen", "1")
        print(xs.read("/local/domain/7/name"))
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar

from . import builder
from .builder import Call
from .errors import NotFound, QuotaExceeded, RequestTimeout, XenStoreUnavailable
from .protocol import ClientProtocol, DirectoryParts
from .transport import XENBUS_DEVICES, socket_path

T = TypeVar("T")

__all__ = ["SyncXenStore"]


class SyncXenStore:
    """One blocking connection to xenstored: ``path`` is its unix socket (default: as :func:`actors.connect`
    finds it), or the xenbus device with ``xenbus=True``. Each call waits at most ``timeout`` seconds for its
    reply (RequestTimeout, and the connection is closed: its late reply could not be told apart). Errors are
    the trio client's (NotFound, PermissionDenied, ...)."""

    def __init__(self, path: str | None = None, *, xenbus: bool = False, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.xenbus = xenbus
        self._protocol = ClientProtocol(xenbus=xenbus)
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        if xenbus:
            self.name = path or XENBUS_DEVICES[0]
            try:
                self._fd = os.open(self.name, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise XenStoreUnavailable(f"cannot open {self.name}: {exc.strerror}") from exc
        else:
            self.name = socket_path(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(timeout)
            try:
                sock.connect(self.name)
            except OSError as exc:
                sock.close()
                raise XenStoreUnavailable(f"cannot connect to {self.name}: {exc.strerror or exc}") from exc
            self._sock = sock

    def __enter__(self) -> SyncXenStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def closed(self) -> bool:
        return self._sock is None and self._fd is None

    # -- the operations (the client's request builder: one definition of each op's payload and answer) -------

    def read(self, path: str) -> bytes:
        """The node's value. NotFound if it does not exist."""
        return self._call(builder.read(path))

    def write(self, path: str, value: bytes | str) -> None:
        self._call(builder.write(path, value))

    def mkdir(self, path: str) -> None:
        self._call(builder.mkdir(path))

    def rm(self, path: str) -> None:
        self._call(builder.rm(path))

    def ls(self, path: str) -> list[str]:
        """The names of the node's children (DIRECTORY_PART for a listing too long for one reply)."""
        call = builder.directory(path)
        try:
            return self._call(call)
        except QuotaExceeded as exc:
            if exc.errno_name != "E2BIG":
                raise
        parts = DirectoryParts(call.payload[:-1], label=path)
        while True:
            names = parts.feed(self._call(builder.directory_part(parts.next_payload(), path)))
            if names is not None:
                return [name.decode("utf-8", "surrogateescape") for name in names]

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
        except NotFound:
            return False
        return True

    def get_perms(self, path: str) -> list[str]:
        return self._call(builder.get_perms(path))

    def set_perms(self, path: str, perms: Iterable[str]) -> None:
        self._call(builder.set_perms(path, perms))

    # -- one request at a time ----------------------------------------------------------------------------

    def _call(self, call: Call[T]) -> T:
        if self.closed:
            raise XenStoreUnavailable(f"connection to {self.name} is closed")
        op, path = call.op, call.path
        request = self._protocol.request(op, call.payload, 0, path)
        deadline = time.monotonic() + self.timeout
        try:
            for data in self._protocol.data_to_send():
                self._send(data)
            while request.reply is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                data = self._receive(remaining)
                if not data:
                    raise XenStoreUnavailable(f"xenstored ({self.name}) closed the connection")
                self._protocol.receive_data(data)
        except TimeoutError:
            self.close()
            raise RequestTimeout.of(op.name, path, self.timeout, self.name) from None
        except OSError as exc:
            self.close()
            raise XenStoreUnavailable(f"connection to {self.name} failed: {exc}") from exc
        error = request.reply.error(path, op.name)
        if error is not None:
            raise error
        return call.decode(request.reply.payload)

    def _send(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            assert self._fd is not None
            os.write(self._fd, data)  # the device takes one whole message per write()

    def _receive(self, timeout: float) -> bytes:
        if self._sock is not None:
            self._sock.settimeout(timeout)
            return self._sock.recv(65536)
        assert self._fd is not None
        readable, _, _ = select.select([self._fd], [], [], timeout)
        if not readable:
            raise TimeoutError
        return os.read(self._fd, 65536)
