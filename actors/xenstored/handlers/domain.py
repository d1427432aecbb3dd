"""The handlers of the domain ops: INTRODUCE, RELEASE, RESUME, SET_TARGET, GET_DOMAIN_PATH,
IS_DOMAIN_INTRODUCED."""

from __future__ import annotations

from actors.xs.wire import DOMID_FIRST_RESERVED, DOMID_SELF, Frame

from .. import lifecycle
from ..connection import Connection
from ..core import Core
from ..failure import EINVAL, ENOENT, Fail
from ..transactions import Transaction, View
from .common import OK, domid_arg, onearg, strings

__all__ = [
    "do_get_domain_path",
    "do_introduce",
    "do_is_domain_introduced",
    "do_release",
    "do_resume",
    "do_set_target",
]


def do_introduce(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = strings(frame.payload)
    if len(args) < 3:
        raise Fail(EINVAL)
    domid = domid_arg(args[0])
    port = domid_arg(args[2])  # the gfn (args[1]) is not needed
    if port == 0:
        raise Fail(EINVAL)
    if domid >= DOMID_FIRST_RESERVED:  # no such domain to map the ring of
        raise Fail(EINVAL)
    if domid != 0:
        lifecycle.introduce(core, domid)
    return OK


def _connected_domain(core: Core, domid: int) -> int:
    """``find_connected_domain()``: ENOENT unless introduced."""
    if core.domains.introduced(domid) is None:
        raise Fail(ENOENT)
    return domid


def _onearg_domid(frame: Frame) -> int:
    """The single argument, read as a domid; EINVAL if the payload is not exactly one string."""
    raw = onearg(frame.payload)
    if raw is None:
        raise Fail(EINVAL)
    return domid_arg(raw)


def _onearg_domain(core: Core, frame: Frame) -> int:
    domid = _onearg_domid(frame)
    if domid == 0:
        raise Fail(EINVAL)
    return _connected_domain(core, domid)


def do_release(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    domid = _onearg_domain(core, frame)
    domain = core.domains.get(domid)
    assert domain is not None
    if domain.conn is not None:  # no watch events while its nodes go
        for watch in domain.conn.watches.values():
            core.watches.remove(watch)
        domain.conn.watches.clear()
    if domain.refs:  # talloc_free() of a referenced connection only drops one reference
        domain.refs -= 1
        return OK
    lifecycle.destroy_domain(core, domid)
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
    domid = _connected_domain(core, domid_arg(args[0]))
    target = _connected_domain(core, domid_arg(args[1]))
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
    return b"/local/domain/%d\0" % _onearg_domid(frame)


def do_is_domain_introduced(
    core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View
) -> bytes:
    domid = _onearg_domid(frame)
    return b"T\0" if domid == DOMID_SELF or core.domains.introduced(domid) is not None else b"F\0"
