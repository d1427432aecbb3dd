"""A guest's side of a xenstore ring page (``struct xenstore_domain_interface``, xen/io/xs_wire.h) as a trio
Stream: the harness speaks through it as an unprivileged guest to a real daemon that maps the same page."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["PAGE_SIZE", "RING_ERROR", "GuestRingStream", "ring_fields"]

RECONNECT_TIMEOUT: Final = 5.0
# Safety net only: waits for the daemon's notification also end after this long, then re-check the ring.
WAKEUP_FALLBACK: Final = 0.5

# struct xenstore_domain_interface (xen/io/xs_wire.h): req[1024], rsp[1024], then native uint32
# req_cons, req_prod, rsp_cons, rsp_prod, server_features, connection, error.
RING_SIZE: Final = 1024
PAGE_SIZE: Final = 4096
REQ_OFFSET: Final = 0
RSP_OFFSET: Final = RING_SIZE
# The uint32 fields after the two rings, as indexes into a memoryview cast to "I". Every index is read and
# written as one aligned 4-byte access: the daemon must never see a half-written index, nor we read one.
# (struct.pack_into is no good here: it zeroes the target bytes before packing into them.)
FIELDS_OFFSET: Final = 2 * RING_SIZE
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, SERVER_FEATURES, CONNECTION, RING_ERROR = range(7)
RING_ERRORS: Final = {1: "COMM", 2: "RINGIDX", 3: "PROTO"}  # XENSTORE_ERROR_*: why the daemon stopped
FEATURE_RECONNECTION: Final = 1  # XENSTORE_SERVER_FEATURE_RECONNECTION in server_features
CONNECTED: Final = 0  # XENSTORE_CONNECTED in connection
RECONNECT: Final = 1  # XENSTORE_RECONNECT
_MASK32: Final = 0xFFFFFFFF


def ring_fields(page: mmap.mmap) -> memoryview:
    return memoryview(page)[FIELDS_OFFSET : FIELDS_OFFSET + 7 * 4].cast("I")


class GuestRingStream(trio.abc.Stream):
    """Bytes to and from the daemon through a guest's ring page, as that guest.

    Replies are awaited on the guest's notification FIFO (the daemon notifies the guest whenever it
    produces or consumes ring bytes); one task at a time waits on the fd, any other waits on an Event.
    """

    def __init__(
        self, page: mmap.mmap, notify_fd: int, kick: Callable[[], None], alive: Callable[[], bool]
    ) -> None:
        self._page = page
        self._fields = ring_fields(page)
        self._fd = notify_fd
        self._kick = kick
        self._alive = alive
        self._closed = False
        self._sending = False
        self._receiving = False
        self._fd_waiter = False
        self._wakeup = trio.Event()

    def _u32(self, field: int) -> int:
        value: int = self._fields[field]
        return value

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("guest stream is closed")

    def _ring_error(self) -> str | None:
        """Why the daemon stopped serving this ring (like a socket it closed), or None."""
        code = self._u32(RING_ERROR)
        if code == 0:
            return None
        indices = "/".join(str(self._u32(field)) for field in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD))
        return f"XENSTORE_ERROR_{RING_ERRORS.get(code, code)}, req_cons/req_prod/rsp_cons/rsp_prod {indices}"

    async def _wait_for_daemon(self) -> None:
        if self._fd_waiter:
            event = self._wakeup
            with trio.move_on_after(WAKEUP_FALLBACK):
                await event.wait()
            return
        self._fd_waiter = True
        try:
            with trio.move_on_after(WAKEUP_FALLBACK):
                await trio.lowlevel.wait_readable(self._fd)
            self._drain()
        finally:
            self._fd_waiter = False
            event, self._wakeup = self._wakeup, trio.Event()
            event.set()

    def _drain(self) -> None:
        while not self._closed:
            try:
                if not os.read(self._fd, 4096):
                    return
            except BlockingIOError:
                return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this guest stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
            view = memoryview(data).cast("B")
            pos = 0
            while pos < len(view):
                self._check_open()
                error = self._ring_error()
                if error is not None:
                    raise trio.BrokenResourceError(f"xenstored stopped serving this guest ({error})")
                cons, prod = self._u32(REQ_CONS), self._u32(REQ_PROD)
                used = (prod - cons) & _MASK32
                if used > RING_SIZE:
                    raise trio.BrokenResourceError(f"corrupt request ring indices {cons}/{prod}")
                if used == RING_SIZE:
                    if not self._alive():
                        raise trio.BrokenResourceError("xenstored is not running")
                    await self._wait_for_daemon()  # the daemon notifies once it has consumed
                    continue
                start = prod % RING_SIZE
                n = min(RING_SIZE - used, RING_SIZE - start, len(view) - pos)
                self._page[REQ_OFFSET + start : REQ_OFFSET + start + n] = view[pos : pos + n]
                self._fields[REQ_PROD] = (prod + n) & _MASK32  # after the data (x86: stores stay in order)
                pos += n
                self._kick()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        while (self._u32(REQ_PROD) - self._u32(REQ_CONS)) & _MASK32 >= RING_SIZE:
            if self._ring_error() is not None or not self._alive():
                break  # send_all will say why
            await self._wait_for_daemon()
            self._check_open()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this guest stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                self._check_open()
                cons, prod = self._u32(RSP_CONS), self._u32(RSP_PROD)
                avail = (prod - cons) & _MASK32
                if avail > RING_SIZE:
                    raise trio.BrokenResourceError(f"corrupt response ring indices {cons}/{prod}")
                if avail:
                    break
                if self._ring_error() is not None or not self._alive():
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""  # end of stream, as from a socket the daemon closed
                await self._wait_for_daemon()
            n = avail if max_bytes is None else min(avail, max_bytes)
            start = cons % RING_SIZE
            first = min(n, RING_SIZE - start)
            out = self._page[RSP_OFFSET + start : RSP_OFFSET + start + first]
            if n > first:
                out += self._page[RSP_OFFSET : RSP_OFFSET + n - first]
            self._fields[RSP_CONS] = (cons + n) & _MASK32
            self._kick()  # the daemon may be waiting for room to write more
            await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        finally:
            self._receiving = False

    async def reconnect(self) -> bool:
        """Start the ring afresh, if the daemon offers XENSTORE_SERVER_FEATURE_RECONNECTION (oxenstored does, C
        xenstored 4.17 does not): it then drops the guest's watches, transactions and unread bytes. Returns
        whether it did."""
        if not self._u32(SERVER_FEATURES) & FEATURE_RECONNECTION:
            return False
        self._fields[CONNECTION] = RECONNECT
        self._kick()
        with trio.fail_after(RECONNECT_TIMEOUT):
            while self._u32(CONNECTION) != CONNECTED:
                if not self._alive():
                    raise trio.BrokenResourceError("xenstored is not running")
                await self._wait_for_daemon()
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)
        self._fields.release()
        self._wakeup.set()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
