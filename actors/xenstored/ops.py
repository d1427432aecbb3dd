"""The op handlers (``wire_funcs[]`` of C xenstored 4.17).

Each takes the daemon, the connection, the request frame, the transaction the frame names (or None) and the
view of the store it works on; it returns the reply payload, or None when it queued its reply itself, or
raises :class:`Fail` for an error reply. Payload parsing follows C: ``onearg()`` wants exactly one string
ending at the payload's end, other ops count NUL-terminated strings, numbers are read with ``atoi()``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from loguru import logger

from actors.xs.wire import Frame, Op

from .domains import DOMID_FIRST_RESERVED, DOMID_SELF, FEATURE_DOMID_ANY, FEATURE_WATCHDEPTH
from .failure import (
    E2BIG,
    EACCES,
    EBADF,
    EBUSY,
    EEXIST,
    EINVAL,
    ENOENT,
    ENOSPC,
    EPERM,
    Fail,
)
from .permissions import IGNORE, OWNER, READ, WRITE, atoi, format_perms, parse_perms, perm_for
from .store import is_valid_nodename, parent_path
from .transactions import Transaction, View

if TYPE_CHECKING:
    from .connection import Connection
    from .core import Core, Handler

__all__ = ["HANDLERS", "NOTID", "PRIVILEGED"]

OK: Final = b"OK\0"
_REL_PATH_MAX: Final = 2048


def onearg(payload: bytes) -> bytes | None:
    """The single argument: the payload must contain exactly one NUL, at its end."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload (``get_strings()``); bytes after the last NUL are ignored."""
    return payload.split(b"\0")[:-1]


def _domid(raw: bytes) -> int:
    return atoi(raw) & 0xFFFFFFFF


# -- reading ---------------------------------------------------------------------------------------------


def do_read(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    return core.get_node(view, conn, core.canonical(conn, onearg(frame.payload)), READ).value


def do_directory(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    return core.get_node(view, conn, core.canonical(conn, onearg(frame.payload)), READ).listing()


def do_directory_part(
    core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View
) -> bytes:
    """``path\\0offset\\0`` -> ``generation\\0`` and as many children as fit from byte ``offset`` of the
    children list; an extra NUL ends the last chunk."""
    if frame.payload.count(b"\0") != 2:
        raise Fail(EINVAL)
    name, offset_raw = strings(frame.payload)
    node = core.get_node(view, conn, core.canonical(conn, name), READ)
    offset = _domid(offset_raw)
    gen = b"%d\0" % node.generation
    children = node.listing()
    total = len(children)
    if offset >= total:
        return gen + b"\0"
    maxlen = 4096 - len(gen) - 1
    length = 0
    while True:
        end = children.find(b"\0", offset + length)
        size = end - (offset + length)
        if length + size >= maxlen:
            break
        length += size + 1
        if offset + length == total:
            break
    data = gen + children[offset : offset + length]
    return data + b"\0" if offset + length == total else data


def do_get_perms(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    name = onearg(frame.payload)
    if core.v422 and name is not None and name.startswith(b"@"):  # 4.22 lists a special node's too
        perms = core.special_perms.get(name)
        if perms is None:
            raise Fail(ENOENT)
        if not perm_for(conn, perms, core.any_domain) & READ:
            raise Fail(EACCES)
        return format_perms(perms)
    return format_perms(core.get_node(view, conn, core.canonical(conn, name), READ).perms)


# -- writing ---------------------------------------------------------------------------------------------


def do_write(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    payload = frame.payload
    nul = payload.find(b"\0")
    if nul < 0:
        raise Fail(EINVAL)
    path = core.canonical(conn, payload[:nul])
    value = payload[nul + 1 :]
    try:
        node = core.get_node(view, conn, path, WRITE)
    except Fail as exc:
        if exc.name != ENOENT:
            raise
        assert path is not None
        node = core.create_node(view, conn, path, value)
    else:
        assert path is not None
        generation = node.generation
        node = node.with_value(value)
        core.check_size(view, conn, node)
        view.write(path, core.persisted(node, generation))
    view.fire(path, False, node, None, None)
    return OK


def do_mkdir(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    path = core.canonical(conn, onearg(frame.payload))
    try:
        core.get_node(view, conn, path, WRITE)
    except Fail as exc:
        if exc.name != ENOENT:
            raise
        assert path is not None
        node = core.create_node(view, conn, path, b"")
        view.fire(path, False, node, None, None)
    return OK


def do_rm(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    path = core.canonical(conn, onearg(frame.payload))
    try:
        core.get_node(view, conn, path, WRITE)
    except Fail as exc:
        if exc.name != ENOENT:
            raise
        assert path is not None
        if view.read(parent_path(path)) is not None:  # already gone: fine, if the parent exists
            return OK
        raise
    assert path is not None
    if path == b"/":
        raise Fail(EINVAL)
    parent = view.read(parent_path(path))
    if parent is None:  # possible in a transaction's view only: C's rm_node() says EINVAL
        raise Fail(EINVAL)
    core.rm_node(view, path, parent)
    return OK


def do_set_perms(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = strings(frame.payload)
    if len(args) < 2:
        raise Fail(EINVAL)
    name, perm_strings = args[0], args[1:]
    if not conn.privileged and len(perm_strings) > conn.quotas.permissions:
        raise Fail(ENOSPC)
    perms = parse_perms(perm_strings)
    # domain_alloc_permrefs(): every domain named exists here (there is no hypervisor to ask).
    for _, domid in perms:
        if domid < DOMID_FIRST_RESERVED:
            core.domains.ensure(domid, core.store.generation)
    # 4.22: DOMID_ANY stands for every domain, if the writer's domain may use it; other reserved ids: nobody.
    any_domain = core.any_domain if conn.features & FEATURE_DOMID_ANY else None
    perms = tuple(
        (bits if d < DOMID_FIRST_RESERVED or d == any_domain else bits | IGNORE, d) for bits, d in perms
    )
    if perms[0][0] & IGNORE:
        raise Fail(ENOENT)
    if name.startswith(b"@"):  # set_perms_special(): at once, even inside a transaction
        old = core.special_perms.get(name)
        if old is None:
            raise Fail(EINVAL)
        if perm_for(conn, old, core.any_domain) & (WRITE | OWNER) != WRITE | OWNER:
            raise Fail(EACCES)
        core.special_perms[name] = perms
        return OK
    path = core.canonical(conn, name)
    node = core.get_node(view, conn, path, WRITE | OWNER)
    assert path is not None
    if not conn.privileged and perms[0][1] != node.perms[0][1]:
        raise Fail(EPERM)
    old_perms = node.perms
    new = node.with_perms(perms)
    core.check_size(view, conn, new)
    view.write(path, core.persisted(new))
    view.fire(path, False, new, old_perms, None)
    return OK


# -- watches ---------------------------------------------------------------------------------------------


def do_watch(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> None:
    args = strings(frame.payload)
    depth: int | None = None
    if len(args) == 3 and conn.features & FEATURE_WATCHDEPTH:  # 4.22: the depth, for a domain allowed it
        depth = atoi(args.pop())
        if depth < 0:
            raise Fail(EINVAL)
    elif len(args) != 2:
        raise Fail(EINVAL)
    name, token = args
    relative: bytes | None = None
    if name.startswith(b"@"):
        if len(name) > _REL_PATH_MAX:
            raise Fail(EINVAL)
        path = name
    else:
        if not name.startswith(b"/"):
            relative = conn.implicit
        path = conn.implicit + b"/" + name if relative is not None else name
        if not is_valid_nodename(path, core.quotas.path_length):
            raise Fail(EINVAL)
    for watch in conn.watches:
        if watch.path == path and watch.token == token:
            raise Fail(EEXIST)
    if not conn.privileged and len(conn.watches) > conn.quotas.watches:
        raise Fail(E2BIG)
    watch = core.watches.add(conn, path, token, relative, depth)
    conn.watches.append(watch)
    conn.reply(frame.op, frame.req_id, frame.tx_id, OK)
    # We fire once up front: simplifies clients and restart.
    conn.send_event(name if relative is not None else path, token)


def do_unwatch(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    if frame.payload.count(b"\0") != 2:
        raise Fail(EINVAL)
    name, token = strings(frame.payload)
    path = core.canonical(conn, name)
    for watch in conn.watches:
        if watch.path == path and watch.token == token:
            conn.watches.remove(watch)
            core.watches.remove(watch)
            return OK
    raise Fail(ENOENT)


def do_reset_watches(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    for watch in conn.watches:
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


# -- domains ---------------------------------------------------------------------------------------------


def do_introduce(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = strings(frame.payload)
    if len(args) < 3:
        raise Fail(EINVAL)
    domid = _domid(args[0])
    port = _domid(args[2])  # the gfn (args[1]) is not needed
    if port == 0:
        raise Fail(EINVAL)
    if domid >= DOMID_FIRST_RESERVED:  # no such domain to map the ring of
        raise Fail(EINVAL)
    if domid != 0:
        core.introduce(domid)
    return OK


def _connected_domain(core: Core, domid: int) -> int:
    """``find_connected_domain()``: ENOENT unless introduced."""
    if core.domains.introduced(domid) is None:
        raise Fail(ENOENT)
    return domid


def _onearg_domain(core: Core, frame: Frame) -> int:
    raw = onearg(frame.payload)
    if raw is None:
        raise Fail(EINVAL)
    domid = _domid(raw)
    if domid == 0:
        raise Fail(EINVAL)
    return _connected_domain(core, domid)


def do_release(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    domid = _onearg_domain(core, frame)
    domain = core.domains.get(domid)
    assert domain is not None
    if domain.conn is not None:  # no watch events while its nodes go
        for watch in domain.conn.watches:
            core.watches.remove(watch)
        domain.conn.watches.clear()
    if domain.refs:  # talloc_free() of a referenced connection only drops one reference
        domain.refs -= 1
        return OK
    core.destroy_domain(domid)
    return OK


def do_resume(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    domain = core.domains.get(_onearg_domain(core, frame))
    assert domain is not None
    domain.shutdown = False
    return OK


def do_set_target(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = strings(frame.payload)
    if len(args) < 2:
        raise Fail(EINVAL)
    domid = _connected_domain(core, _domid(args[0]))
    target = _connected_domain(core, _domid(args[1]))
    domain = core.domains.get(domid)
    target_domain = core.domains.get(target)
    assert domain is not None and target_domain is not None
    domain.target = target
    if target:
        target_domain.refs += 1
    if domain.conn is not None:
        domain.conn.target = target
    return OK


def do_get_domain_path(
    core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View
) -> bytes:
    raw = onearg(frame.payload)
    if raw is None:
        raise Fail(EINVAL)
    return b"/local/domain/%d\0" % _domid(raw)


def do_is_domain_introduced(
    core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View
) -> bytes:
    raw = onearg(frame.payload)
    if raw is None:
        raise Fail(EINVAL)
    domid = _domid(raw)
    return b"T\0" if domid == DOMID_SELF or core.domains.introduced(domid) is not None else b"F\0"


# -- control ---------------------------------------------------------------------------------------------

_HARD_QUOTAS: Final = (
    ("nodes", "nodes", "Nodes per domain"),
    ("watches", "watches", "Watches per domain"),
    ("transactions", "transactions", "Transactions per domain"),
    ("outstanding", "outstanding", "Outstanding requests per domain"),
    ("transaction-nodes", "transaction_nodes", "Max. number of accessed nodes per transaction"),
    ("memory", "memory", "Total Xenstore memory per domain (error level)"),
    ("node-size", "node_size", "Max. size of a node"),
    ("path-max", "path_length", "Max. length of a node path"),
    ("permissions", "permissions", "Max. number of permissions per node"),
)
_SOFT_QUOTAS: Final = (("memory", "memory_soft", "Total Xenstore memory per domain (warning level)"),)
_COMMANDS: Final = (
    ("check", ""),
    ("log", "on|off"),
    ("live-update", "[-c <cmdline>] [-F] [-t <timeout>] <file>\n    Default timeout is 60 seconds."),
    ("logfile", "<file>"),
    ("memreport", "[<file>]"),
    ("print", "<string>"),
    ("quota", "[set <name> <val>|<domid>]"),
    ("quota-soft", "[set <name> <val>]"),
    ("help", ""),
)


def _quota_show(core: Core, table: tuple[tuple[str, str, str], ...]) -> bytes:
    lines = ["Quota settings:\n"]
    for name, attr, descr in table:
        lines.append(f"{name:<17s}: {int(getattr(core.quotas, attr)):8d} {descr}\n")
    return "".join(lines).encode() + b"\0"


def _quota_set(core: Core, args: list[bytes], table: tuple[tuple[str, str, str], ...]) -> bytes:
    import dataclasses

    if len(args) != 2:
        raise Fail(EINVAL)
    value = atoi(args[1])
    if value < 1:
        raise Fail(EINVAL)
    for name, attr, _ in table:
        if args[0] == name.encode():
            core.quotas = dataclasses.replace(core.quotas, **{attr: value})
            return OK
    raise Fail(EINVAL)


def _memory(core: Core, domid: int, conns: list[Connection]) -> int:
    """Roughly C's per-domain memory accounting: node records and keys, watches, queued output."""
    nodes = sum(node.size() + len(path) for path, node in core.store.nodes.items() if node.owner == domid)
    watches = sum(len(w.path) + len(w.token) for c in conns for w in c.watches)
    return nodes + watches + sum(c.queued_bytes for c in conns)


def _quota_domain(core: Core, raw: bytes) -> bytes:
    domid = _domid(raw)
    domain = core.domains.get(domid)
    if domain is None:
        raise Fail(ENOENT)
    conns = [c for c in core.connections.values() if c.domid == domid]
    rows = (
        ("nodes", core.store.count(domid)),
        ("watches", sum(len(c.watches) for c in conns)),
        ("transactions", sum(len(c.transactions) for c in conns)),
        ("outstanding", 0),
        ("memory", _memory(core, domid, conns)),
    )
    text = f"Domain {domid}:\n" + "".join(f"{name:<16s}: {value:8d}\n" for name, value in rows)
    return text.encode() + b"\0"


def do_control(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = strings(frame.payload)
    if not args:
        raise Fail(EINVAL)
    cmd, rest = args[0], args[1:]
    if cmd == b"check":
        if rest:
            raise Fail(EINVAL)
        return OK
    if cmd == b"log":
        if len(rest) != 1 or rest[0] not in (b"on", b"off"):
            raise Fail(EINVAL)
        return OK
    if cmd == b"logfile":
        if len(rest) != 1:
            raise Fail(EINVAL)
        return OK
    if cmd == b"memreport":
        if len(rest) > 1:
            raise Fail(EINVAL)
        if not rest:
            raise Fail(EBADF)  # no trace file
        try:
            with open(os.fsdecode(rest[0]), "a") as fp:
                fp.write(f"xenstored: {len(core.store)} nodes, {len(core.connections)} connections\n")
        except OSError:
            raise Fail(EBADF) from None
        return OK
    if cmd == b"print":
        if len(rest) != 1:
            raise Fail(EINVAL)
        logger.info("control: {}", rest[0].decode("utf-8", "replace"))
        return OK
    if cmd == b"quota":
        if not rest:
            return _quota_show(core, _HARD_QUOTAS)
        if rest[0] == b"set":
            return _quota_set(core, rest[1:], _HARD_QUOTAS)
        if len(rest) != 1:
            raise Fail(EINVAL)
        return _quota_domain(core, rest[0])
    if cmd == b"quota-soft":
        if not rest:
            return _quota_show(core, _SOFT_QUOTAS)
        if rest[0] == b"set":
            return _quota_set(core, rest[1:], _SOFT_QUOTAS)
        raise Fail(EINVAL)
    if cmd == b"live-update":  # not supported here; C answers EINVAL to a bare "live-update" too
        raise Fail(EINVAL)
    if cmd == b"help":
        if rest:
            raise Fail(EINVAL)
        return "".join(f"{name}\t{pars}\n" for name, pars in _COMMANDS).encode() + b"\0"
    raise Fail(EINVAL)


HANDLERS: Final[dict[int, Handler]] = {
    int(Op.DEBUG): do_control,
    int(Op.DIRECTORY): do_directory,
    int(Op.READ): do_read,
    int(Op.GET_PERMS): do_get_perms,
    int(Op.WATCH): do_watch,
    int(Op.UNWATCH): do_unwatch,
    int(Op.TRANSACTION_START): do_transaction_start,
    int(Op.TRANSACTION_END): do_transaction_end,
    int(Op.INTRODUCE): do_introduce,
    int(Op.RELEASE): do_release,
    int(Op.GET_DOMAIN_PATH): do_get_domain_path,
    int(Op.WRITE): do_write,
    int(Op.MKDIR): do_mkdir,
    int(Op.RM): do_rm,
    int(Op.SET_PERMS): do_set_perms,
    int(Op.IS_DOMAIN_INTRODUCED): do_is_domain_introduced,
    int(Op.RESUME): do_resume,
    int(Op.SET_TARGET): do_set_target,
    int(Op.RESET_WATCHES): do_reset_watches,
    int(Op.DIRECTORY_PART): do_directory_part,
}
PRIVILEGED: Final = frozenset(
    int(op) for op in (Op.DEBUG, Op.INTRODUCE, Op.RELEASE, Op.IS_DOMAIN_INTRODUCED, Op.RESUME, Op.SET_TARGET)
)
NOTID: Final = frozenset({int(Op.WATCH), int(Op.UNWATCH)})
