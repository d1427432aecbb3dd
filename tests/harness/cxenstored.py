"""Debian's real C xenstored (Xen 4.17), run without a hypervisor, for tests (oxenstored: harness.oxenstored).

``open_cxenstored(workdir)`` compiles ``preload.c`` (cached under ``tests/harness/_build/``), starts the daemon
with that library preloaded and its socket at ``workdir/socket``, and stops it again (SIGTERM, then SIGKILL)
however the body ends. The preload library answers the daemon's Xen calls from files in ``workdir``:

- ``evtchn``: a FIFO that is the daemon's event-channel fd; writing a 4-byte port number to it is "an event
  on that port". Any event wakes the daemon, which then looks at every ring; port 4 (``VIRQ_DOM_EXC``) also makes
  it re-check which domains still exist.
- ``ring-N``: guest N's ring page (``struct xenstore_domain_interface``), mapped by both sides.
- ``notify-N``: a FIFO the daemon writes a byte to whenever it notifies guest N.
- ``dead-N``: guest N no longer exists.

:meth:`CXenStored.guest` speaks as an unprivileged guest through that ring; socket clients are always dom0.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import trio

from actors.xs.transport import connect_unix
from actors.xs.wire import Frame, FrameDecoder, Op, check_domid, encode, join
from harness.build import (
    C_XENSTORED,
    EXTRA_LIB_DIRS,
    CXenStoredUnavailable,
    Daemon,
    build_preload,
    build_preload_sync,
    find_xenstored,
    skip_or_fail,
)
from harness.ring import PAGE_SIZE, RING_ERROR, GuestRingStream, ring_fields

__all__ = [
    "C_XENSTORED",
    "DOM_PORT_BASE",
    "VIRQ_DOM_EXC_PORT",
    "CXenStored",
    "CXenStoredUnavailable",
    "Daemon",
    "find_xenstored",
    "open_cxenstored",
    "open_unix_stream",
    "probe_cxenstored",
    "skip_or_fail",
]


# Port numbering fixed by preload.c.
VIRQ_DOM_EXC_PORT: Final = 1 + 3  # MTW_VIRQ_PORT_BASE + VIRQ_DOM_EXC
DOM_PORT_BASE: Final = 1024  # the daemon's local port for domain N is DOM_PORT_BASE + N
GUEST_REMOTE_PORT: Final = 1  # the guest-side port named in INTRODUCE (must be > 0 for the C daemon)
GUEST_MFN: Final = 0  # ignored by the daemon

START_TIMEOUT: Final = 5.0
STOP_TIMEOUT: Final = 2.0
SOCKET_PATH_MAX: Final = 107  # sun_path is 108 bytes with its NUL
_PORT: Final = struct.Struct("=I")


_probed: set[str] = set()


def probe_cxenstored(daemon: Daemon = C_XENSTORED) -> None:
    """Synchronously check, once per process, that the daemon builds, starts and opens its socket.

    Raises :class:`CXenStoredUnavailable` with the reason. Meant for a sync (session) fixture, where
    ``pytest.skip(reason)`` keeps its message (pytest-trio drops the message of a skip raised in async code).
    """
    if daemon.name in _probed:
        return
    binary = find_xenstored(daemon)
    preload = build_preload_sync()
    work = Path(tempfile.mkdtemp(prefix="xsprobe", dir="/tmp"))
    try:
        command, env = _prepare_launch(work, daemon, binary, preload, trace=False)
        log_path = work / "xenstored.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                status = process.poll()
                if status is not None:
                    raise CXenStoredUnavailable(
                        f"{binary} exited with status {status} at start", _log_tail(log_path)
                    )
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(work / "socket"))
                        break
                    except OSError:
                        pass
                if time.monotonic() > deadline:
                    raise CXenStoredUnavailable(
                        f"{binary} did not open its socket within {START_TIMEOUT} s", _log_tail(log_path)
                    )
                time.sleep(0.005)
        finally:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _probed.add(daemon.name)


async def open_unix_stream(path: str) -> trio.SocketStream:
    """Like ``trio.open_unix_socket``, without its flaw against C xenstored's one-deep backlog (see
    :func:`actors.xs.transport.connect_unix`)."""
    return await connect_unix(path)


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


def _mkfifo(path: Path) -> None:
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise


class CXenStored:
    """A running real xenstored (``name`` "cxenstored" or "oxenstored"): its unix socket (dom0) and guests
    through ring pages."""

    def __init__(
        self, workdir: Path, socket_path: str, process: trio.Process, event_fd: int, name: str = "cxenstored"
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.socket_path = socket_path
        self.process = process
        self._event_fd = event_fd
        self._rings: dict[int, mmap.mmap] = {}
        self._active: set[int] = set()
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def _daemon_alive(self) -> bool:
        return not self._closed and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "xenstored.log"

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the daemon's stdout/stderr and own log (and trace, if tracing), for failure messages."""
        return "".join(
            _log_tail(self.workdir / name, limit) for name in ("xenstored.log", "oxenstored-log", "trace")
        )

    # -- event channel ----------------------------------------------------------------------------

    def _send_event(self, port: int, *, must_arrive: bool = False) -> None:
        """Write ``port`` to the daemon's event fd. Wake-ups may be dropped when the FIFO is full."""
        if self._closed:
            return
        data = _PORT.pack(port)
        for _ in range(1000 if must_arrive else 1):
            try:
                os.write(self._event_fd, data)
                return
            except BlockingIOError:
                if must_arrive:
                    time.sleep(0.001)  # sync API: the daemon drains the FIFO within microseconds
        if must_arrive:
            raise RuntimeError(f"cannot deliver event on port {port}: the daemon's event FIFO stays full")

    # -- dom0 -------------------------------------------------------------------------------------

    async def _dom0_request(self, op: Op, payload: bytes) -> Frame:
        """One request on a fresh dom0 socket connection; returns the reply frame."""
        stream = await open_unix_stream(self.socket_path)
        async with stream:
            await stream.send_all(encode(op, payload, req_id=1))
            decoder = FrameDecoder()
            while True:
                data = await stream.receive_some()
                if not data:
                    raise trio.BrokenResourceError(f"xenstored closed the connection during {op.name}")
                for frame in decoder.feed(data):
                    if frame.req_id == 1 and frame.op != Op.WATCH_EVENT:
                        return frame

    # -- guests -----------------------------------------------------------------------------------

    def _ring(self, domid: int) -> mmap.mmap:
        page = self._rings.get(domid)
        if page is None:
            fd = os.open(self.workdir / f"ring-{domid}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < PAGE_SIZE:
                    os.ftruncate(fd, PAGE_SIZE)
                page = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self._rings[domid] = page
        return page

    @asynccontextmanager
    async def guest(self, domid: int) -> AsyncIterator[trio.abc.Stream]:
        """A stream of XenStore frames as unprivileged guest ``domid``, through its ring page.

        Sends INTRODUCE ``domid 0 1`` from dom0 on every entry: the first introduces the domain (firing
        ``@introduceDomain``); later ones find it introduced and reset its connection (the C daemon drops the
        guest's watches, transactions and unread bytes; oxenstored keeps them, so the guest then reconnects its
        ring, which drops them there), so each stream starts clean. A domain marked dead by
        :meth:`domain_died` exists again. If the daemon had stopped serving the ring (after a protocol error:
        the stream then reads end-of-stream, like a socket the daemon closed), the domain is released (firing
        ``@releaseDomain``) and introduced again. On exit the stream is closed; the domain stays introduced.
        """
        domid = check_domid(domid, guest_only=True)
        if self._closed:
            raise trio.ClosedResourceError("xenstored has been stopped")
        if domid in self._active:
            raise trio.BusyResourceError(f"guest {domid} already has an open stream")
        self._active.add(domid)
        try:
            page = self._ring(domid)
            with ring_fields(page) as fields:
                broken = fields[RING_ERROR] != 0
            if broken:
                # The daemon stopped serving this ring (a protocol error in an earlier stream) and INTRODUCE
                # alone does not revive it: release the domain (firing @releaseDomain) and start afresh.
                await self._dom0_request(Op.RELEASE, join(str(domid)))
                page[:] = bytes(PAGE_SIZE)
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / f"dead-{domid}").unlink()
            fifo = self.workdir / f"notify-{domid}"
            _mkfifo(fifo)
            notify_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            stream = GuestRingStream(
                page, notify_fd, lambda: self._send_event(DOM_PORT_BASE + domid), self._daemon_alive
            )
            try:
                stream._drain()
                reply = await self._dom0_request(
                    Op.INTRODUCE, join(str(domid), str(GUEST_MFN), str(GUEST_REMOTE_PORT))
                )
                if reply.op == Op.ERROR:
                    raise RuntimeError(f"INTRODUCE {domid} failed: {reply.payload.rstrip(bytes(1)).decode()}")
                await stream.reconnect()
                stream._drain()
                yield stream
            finally:
                stream.close()
        finally:
            self._active.discard(domid)

    def domain_died(self, domid: int) -> None:
        """Mark ``domid`` as gone and raise VIRQ_DOM_EXC: the daemon then releases the domain (removing its
        nodes) and fires ``@releaseDomain``. This happens asynchronously: wait for the event."""
        domid = check_domid(domid, guest_only=True)
        (self.workdir / f"dead-{domid}").touch()
        self._send_event(VIRQ_DOM_EXC_PORT, must_arrive=True)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self._event_fd)
        for page in self._rings.values():
            with contextlib.suppress(BufferError):  # a view still exported: the mapping goes with it
                page.close()
        self._rings.clear()


async def _stop(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; always reaps. Not cancellable."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _check_workdir(workdir: str) -> Path:
    work = Path(os.path.abspath(workdir))
    socket_path = str(work / "socket")
    if len(socket_path.encode()) >= SOCKET_PATH_MAX:
        raise ValueError(f"socket path {socket_path!r} is too long for AF_UNIX: use a short workdir in /tmp")
    if not work.is_dir():
        raise FileNotFoundError(errno.ENOENT, "workdir does not exist", str(work))
    return work


def _prepare_launch(
    work: Path, daemon: Daemon, binary: Path, preload: Path, trace: bool
) -> tuple[list[str], dict[str, str]]:
    """Create the event FIFO, clear stale files; returns the daemon's command line and environment."""
    _mkfifo(work / "evtchn")
    for stale in ("socket", "pid"):
        with contextlib.suppress(FileNotFoundError):
            (work / stale).unlink()
    env = dict(os.environ)
    env.update(
        XENSTORED_RUNDIR=str(work),
        MTW_XS_DIR=str(work),
        MTW_XS_PARENT=str(os.getpid()),
        LD_PRELOAD=" ".join(filter(None, [str(preload), env.get("LD_PRELOAD", "")])),
    )
    lib_dirs = [str(d) for d in EXTRA_LIB_DIRS if d.is_dir()]
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [*lib_dirs, env.get("LD_LIBRARY_PATH", "")]))
    return daemon.command(work, binary, trace), env


@asynccontextmanager
async def open_cxenstored(
    workdir: str, *, trace: bool | None = None, daemon: Daemon = C_XENSTORED
) -> AsyncIterator[CXenStored]:
    """Run the real C xenstored (or another ``daemon``) with its socket at ``workdir/socket`` for the body.

    ``workdir`` must exist and be short (AF_UNIX paths < 107 bytes). ``trace`` (default: $MTW_CXS_TRACE set
    and not "0") adds ``--trace-file workdir/trace --verbose``. Raises :class:`CXenStoredUnavailable` when
    the daemon cannot be built or started; raises RuntimeError after the body if the daemon died during it.
    """
    work = _check_workdir(workdir)
    socket_path = str(work / "socket")
    if trace is None:
        trace = os.environ.get("MTW_CXS_TRACE", "0") not in ("", "0")
    binary = find_xenstored(daemon)
    preload = await build_preload()
    command, env = _prepare_launch(work, daemon, binary, preload, trace)

    log_path = work / "xenstored.log"
    event_fd = os.open(work / "evtchn", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with log_path.open("ab") as log:
            try:
                process = await trio.lowlevel.open_process(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                raise CXenStoredUnavailable(f"cannot start {binary}: {exc}") from exc
    except BaseException:
        os.close(event_fd)
        raise

    server = CXenStored(work, socket_path, process, event_fd, daemon.name)
    died_during_body: int | None = None
    try:
        await _wait_for_socket(server, binary)
        yield server
        died_during_body = process.poll()
    finally:
        server._close()
        await _stop(process)
    if died_during_body is not None:
        raise RuntimeError(
            f"{daemon.name} (pid {process.pid}) exited with status {died_during_body} during the test:\n"
            + server.log_tail()
        )


async def _wait_for_socket(server: CXenStored, binary: Path) -> None:
    try:
        with trio.fail_after(START_TIMEOUT):
            while True:
                status = server.process.poll()
                if status is not None:
                    raise CXenStoredUnavailable(
                        f"{binary} exited with status {status} at start", server.log_tail()
                    )
                try:
                    stream = await open_unix_stream(server.socket_path)
                except OSError:
                    await trio.sleep(0.005)
                    continue
                await stream.aclose()
                return
    except trio.TooSlowError:
        raise CXenStoredUnavailable(
            f"{binary} did not open {server.socket_path} within {START_TIMEOUT} s", server.log_tail()
        ) from None
