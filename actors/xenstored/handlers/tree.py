"""The handlers of the node ops: READ, DIRECTORY, DIRECTORY_PART, GET_PERMS, WRITE, MKDIR, RM, SET_PERMS.

Each takes the daemon, the connection, the request frame, the transaction the frame names (or None) and the
view of the store it works on; it returns the reply payload, or raises :class:`Fail` for an error reply.
"""

from __future__ import annotations

from actors.xs.wire import DOMID_FIRST_RESERVED, Feature, Frame

from ..connection import Connection
from ..core import Core
from ..failure import EACCES, EINVAL, ENOENT, ENOSPC, EPERM, Fail
from ..permissions import IGNORE, OWNER, READ, WRITE, format_perms, parse_perms, perm_for
from ..store import Node, parent_path
from ..transactions import Transaction, View
from .common import OK, domid_arg, onearg, strings

__all__ = [
    "do_directory",
    "do_directory_part",
    "do_get_perms",
    "do_mkdir",
    "do_read",
    "do_rm",
    "do_set_perms",
    "do_write",
]


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
    offset = domid_arg(offset_raw)
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


def _writable_or_missing(core: Core, view: View, conn: Connection, path: bytes | None) -> Node | None:
    """The node if ``conn`` may write it, None if it does not exist (any other failure is raised)."""
    try:
        return core.get_node(view, conn, path, WRITE)
    except Fail as exc:
        if exc.name != ENOENT:
            raise
        return None


def do_write(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    payload = frame.payload
    nul = payload.find(b"\0")
    if nul < 0:
        raise Fail(EINVAL)
    path = core.canonical(conn, payload[:nul])
    value = payload[nul + 1 :]
    node = _writable_or_missing(core, view, conn, path)
    assert path is not None
    if node is None:
        node = core.create_node(view, conn, path, value)
    else:
        generation = node.generation
        node = node.with_value(value)
        core.check_size(view, conn, node)
        view.write(path, core.persisted(node, generation))
    view.fire(path, False, node, None, None)
    return OK


def do_mkdir(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    path = core.canonical(conn, onearg(frame.payload))
    if _writable_or_missing(core, view, conn, path) is None:
        assert path is not None
        node = core.create_node(view, conn, path, b"")
        view.fire(path, False, node, None, None)
    return OK


def do_rm(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    path = core.canonical(conn, onearg(frame.payload))
    missing = _writable_or_missing(core, view, conn, path) is None
    assert path is not None
    if missing:
        if view.read(parent_path(path)) is not None:  # already gone: fine, if the parent exists
            return OK
        raise Fail(ENOENT)
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
    any_domain = core.any_domain if conn.features & Feature.DOMID_ANY else None
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
