"""The handlers of WATCH, UNWATCH and RESET_WATCHES, and of TRANSACTION_START and TRANSACTION_END."""

from __future__ import annotations

from actors.xs.wire import Feature, Frame

from ..connection import Connection
from ..core import Core
from ..failure import E2BIG, EBUSY, EEXIST, EINVAL, ENOENT, ENOSPC, Fail
from ..permissions import atoi
from ..store import is_valid_nodename
from ..transactions import Transaction, View
from .common import OK, REL_PATH_MAX, onearg, strings

__all__ = ["do_reset_watches", "do_transaction_end", "do_transaction_start", "do_unwatch", "do_watch"]


def do_watch(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> None:
    args = strings(frame.payload)
    depth: int | None = None
    if len(args) == 3 and conn.features & Feature.WATCHDEPTH:  # 4.22: the depth, for a domain allowed it
        depth = atoi(args.pop())
        if depth < 0:
            raise Fail(EINVAL)
    elif len(args) != 2:
        raise Fail(EINVAL)
    name, token = args
    relative: bytes | None = None
    if name.startswith(b"@"):
        if len(name) > REL_PATH_MAX:
            raise Fail(EINVAL)
        path = name
    else:
        if not name.startswith(b"/"):
            relative = conn.implicit
        path = conn.implicit + b"/" + name if relative is not None else name
        if not is_valid_nodename(path, core.quotas.path_length):
            raise Fail(EINVAL)
    if (path, token) in conn.watches:  # a dict: 32,000 watches on one connection cost no scan each
        raise Fail(EEXIST)
    if not conn.privileged and len(conn.watches) > conn.quotas.watches:
        raise Fail(E2BIG)
    watch = core.watches.add(conn, path, token, relative, depth)
    conn.watches[path, token] = watch
    conn.reply(frame.op, frame.req_id, frame.tx_id, OK)
    # We fire once up front: simplifies clients and restart.
    conn.send_event(name if relative is not None else path, token)


def do_unwatch(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    if frame.payload.count(b"\0") != 2:
        raise Fail(EINVAL)
    name, token = strings(frame.payload)
    path = core.canonical(conn, name)
    watch = None if path is None else conn.watches.pop((path, token), None)
    if watch is None:
        raise Fail(ENOENT)
    core.watches.remove(watch)
    return OK


def do_reset_watches(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    for watch in conn.watches.values():
        core.watches.remove(watch)
    conn.watches.clear()
    conn.transactions.clear()
    return OK


# -- transactions ----------------------------------------------------------------------------------------


def do_transaction_start(
    core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View
) -> bytes:
    if tx is not None:
        raise Fail(EBUSY)
    if not conn.privileged and len(conn.transactions) > conn.quotas.transactions:
        raise Fail(ENOSPC)
    tx_id = conn.next_tx_id
    while tx_id == 0 or tx_id in conn.transactions:
        tx_id = (tx_id + 1) & 0xFFFFFFFF
    conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
    core.store.next_generation()
    conn.transactions[tx_id] = Transaction(core, conn, tx_id)
    return b"%d\0" % tx_id


def do_transaction_end(
    core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View
) -> bytes:
    arg = onearg(frame.payload)
    if arg not in (b"T", b"F"):
        raise Fail(EINVAL)
    if tx is None:
        raise Fail(ENOENT)
    del conn.transactions[tx.id]
    if arg == b"T":
        tx.commit()
    return OK
