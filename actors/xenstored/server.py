"""The embedded XenStore daemon: a unix-socket listener around :class:`~.core.Core`."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Final

import trio
from loguru import logger

from actors.xs.wire import check_domid

from . import lifecycle
from .connection import Connection
from .core import COMPATS, Core
from .domains import Quotas
from .handlers import op_table
from .sockets import FolderLocked, SocketInUse, take_socket_path
from .store import Store

__all__ = ["DEFAULT_SOCKET", "XenStored", "main", "open_xenstored"]

DEFAULT_SOCKET: Final = "/run/xenstored/socket"


class XenStored:
    """An in-process XenStore daemon that behaves like C xenstored 4.22, or 4.17 with ``compat="4.17"``.

    Every socket client is privileged dom0; :meth:`guest` gives a connection as an unprivileged domain.
    """

    def __init__(self, quotas: Quotas | None = None, compat: str = "4.22") -> None:
        self.core = Core(op_table(compat), quotas, compat)

    @property
    def compat(self) -> str:
        """The C xenstored version answered as: "4.22" or "4.17"."""
        return self.core.compat

    @property
    def store(self) -> Store:
        """The tree (``len(server.store)`` nodes; ``server.store.get(b"/path")``)."""
        return self.core.store

    @property
    def quotas(self) -> Quotas:
        return self.core.quotas

    @property
    def connections(self) -> list[Connection]:
        return list(self.core.connections.values())

    async def serve(
        self, socket_path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``socket_path`` until cancelled; then close every connection and remove the socket.

        Only a new socket file is made, never a folder. A stale socket at ``socket_path`` (nobody listens on
        it: its daemon was killed) is replaced; a live daemon's socket, any other file or a missing folder is
        an OSError that says so, and nothing is removed (see :func:`~.sockets.take_socket_path`, which also
        keeps two daemons starting at once from both taking the path). On the way out the socket is removed
        only if it is still the one made here."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The socket appears at its path only once it listens (bound under a private name, then hard-linked
        # into place, which never replaces an existing file): whoever sees the file can connect.
        # A short private name beside it (a unix socket path has room for 107 bytes).
        private = os.path.join(os.path.dirname(socket_path), f".{os.getpid():x}.{id(sock) % 4096:x}")
        try:
            try:
                await sock.bind(private)
                identity = os.stat(private).st_ino
                os.chmod(private, 0o600)
                sock.listen(128)
                link = partial(os.link, private, socket_path)
                try:
                    # Uncontended (the usual case) this is a few syscalls, made inline: the daemon listens at
                    # once. (In a thread the loop would sit idle meanwhile, and a test's autojump clock would
                    # race ahead: its clients would see a silent daemon and stall.) Another start holding the
                    # folder is waited for in a thread.
                    stale = take_socket_path(socket_path, link, lock_timeout=0)
                except FolderLocked:
                    stale = await trio.to_thread.run_sync(take_socket_path, socket_path, link)
            except OSError as exc:
                raise _bind_error(socket_path, exc) from None
            finally:
                with suppress(OSError):
                    os.unlink(private)
        except BaseException:
            sock.close()
            raise
        listener = trio.SocketListener(sock)
        if stale:
            logger.warning("replaced the stale socket {} (its daemon did not stop cleanly)", socket_path)
        logger.info("xenstored listening on {}", socket_path)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            logger.warning("accept failed: {}", exc)
                            await trio.sleep(0.1)
                            continue
                        raise
                    nursery.start_soon(self.handle_stream, stream, 0)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            with suppress(OSError):
                if os.stat(socket_path).st_ino == identity:
                    os.unlink(socket_path)
            logger.info("xenstored on {} stopped", socket_path)

    async def handle_stream(self, stream: trio.abc.Stream, domid: int = 0) -> None:
        """Serve one connection as ``domid`` (0: privileged dom0, like every socket client) until it
        closes; closes ``stream``. A guest domid is introduced first if it is not yet."""
        core = self.core
        if domid:
            _check_guest(domid)
            if core.domains.introduced(domid) is None:
                lifecycle.introduce(core, domid)
            conn = lifecycle.attach(core, domid, stream)
        else:
            conn = core.connect(stream, 0)
        try:
            await conn.serve()
        except Exception:  # a bug must cost only this connection
            logger.exception("dropping {!r} after an internal error", conn)
        finally:
            if domid:
                lifecycle.detach(core, conn)
            else:
                core.disconnect(conn)
            await trio.aclose_forcefully(stream)

    @asynccontextmanager
    async def guest(self, domid: int) -> AsyncIterator[trio.SocketStream]:
        """A connection as unprivileged domain ``domid`` (introduced first, firing @introduceDomain, if
        it is not yet): yields the client end of a socket pair whose other end this server serves.

        Each entry starts clean, as C xenstored's re-INTRODUCE resets the domain's connection. On exit the
        socket is closed and the domain stays introduced; like a ring nobody reads, its connection keeps its
        watches and transactions (their events are dropped) until the next entry, RELEASE or death."""
        _check_guest(domid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server_end = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        client_end = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
        if self.core.domains.introduced(domid) is None:
            lifecycle.introduce(self.core, domid)
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.handle_stream, server_end, domid)
                try:
                    yield client_end
                except BaseException as exc:
                    body_error = exc  # raised again below, outside the nursery: unwrapped
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            # Outside the cancelled nursery: a checkpoint in there, on the way out of a body that raised,
            # would raise Cancelled in place of the body's exception, and the nursery would swallow it.
            await trio.aclose_forcefully(client_end)
        if body_error is not None:
            raise body_error

    def introduce(self, domid: int) -> bool:
        """Introduce guest ``domid`` as INTRODUCE does (fires @introduceDomain); False if it already was."""
        _check_guest(domid)
        return lifecycle.introduce(self.core, domid)

    def domain_shutdown(self, domid: int) -> None:
        """The hypervisor reports ``domid`` shut down: fire @releaseDomain once (4.22: ``@releaseDomain/<domid>``
        first), until RESUME re-arms it. The domain stays until it dies or is released."""
        lifecycle.shutdown_domain(self.core, domid)

    def domain_died(self, domid: int) -> None:
        """The hypervisor reports ``domid`` dead: drop its connection, remove the nodes it owns and, if it
        had been introduced, fire @releaseDomain (as C xenstored's ``check_domains()``)."""
        lifecycle.destroy_domain(self.core, domid)

    def is_introduced(self, domid: int) -> bool:
        return self.core.domains.introduced(domid) is not None


def _bind_error(socket_path: str, exc: OSError) -> OSError:
    """Why ``socket_path`` cannot be ours, in words an operator can act on."""
    if isinstance(exc, (SocketInUse, FileExistsError)):
        return exc
    if exc.errno == errno.ENOENT:
        folder = os.path.dirname(socket_path) or "."
        return OSError(
            errno.ENOENT, f"folder {folder} does not exist (only the socket file is made): create it"
        )
    return OSError(exc.errno, f"cannot listen on {socket_path}: {exc.strerror or exc}")


def _check_guest(domid: int) -> None:
    """A guest's domid, 1..32751, as an int (the wire's one check; InvalidDomid is a ValueError)."""
    check_domid(domid if isinstance(domid, int) else repr(domid), guest_only=True)


@asynccontextmanager
async def open_xenstored(
    socket_path: str, *, quotas: Quotas | None = None, compat: str = "4.22"
) -> AsyncIterator[XenStored]:
    """Run a :class:`XenStored` (answering as C xenstored ``compat``) on ``socket_path`` for the block."""
    server = XenStored(quotas, compat)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, socket_path)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """``mtwatch xenstored``: run the embedded daemon in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="xenstored", description="Embedded XenStore daemon (C xenstored)")
    parser.add_argument(
        "--socket",
        default=os.environ.get("XENSTORED_PATH") or DEFAULT_SOCKET,
        help="unix socket path (default: $XENSTORED_PATH, else %(default)s)",
    )
    parser.add_argument(
        "--compat",
        choices=COMPATS,
        default="4.22",
        help="the C xenstored version to answer as (default: %(default)s; 4.17 lacks ops 23-26 and watch depth)",
    )
    parser.add_argument("--log-level", default="INFO", help="loguru level (default: %(default)s)")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    logger.enable("actors")

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_xenstored(args.socket, compat=args.compat):
                async for signum in signals:
                    logger.info("{} received: stopping", signal.Signals(signum).name)
                    break

    failures: list[OSError] = []
    try:
        trio.run(run)
    except* OSError as group:
        failures.extend(exc for exc in group.exceptions if isinstance(exc, OSError))
    for exc in failures:
        logger.error("xenstored: {}", exc.strerror or exc)
    return 1 if failures else 0
