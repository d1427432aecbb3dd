"""The op handlers (``wire_funcs[]`` of C xenstored), by op family, and the table a daemon version has.

Each handler takes the daemon, the connection, the request frame, the transaction the frame names (or None)
and the view of the store it works on; it returns the reply payload, or None when it queued its reply
itself, or raises :class:`~actors.xenstored.failure.Fail` for an error reply.
"""

from __future__ import annotations

from typing import Final

from actors.xs.wire import Op

from ..core import Handler, OpTable
from .control import do_control
from .domain import (
    do_get_domain_path,
    do_introduce,
    do_is_domain_introduced,
    do_release,
    do_resume,
    do_set_target,
)
from .features import FEATURE_HANDLERS, FEATURE_PRIVILEGED
from .session import do_reset_watches, do_transaction_end, do_transaction_start, do_unwatch, do_watch
from .tree import (
    do_directory,
    do_directory_part,
    do_get_perms,
    do_mkdir,
    do_read,
    do_rm,
    do_set_perms,
    do_write,
)

__all__ = ["op_table"]

_HANDLERS_417: Final[dict[int, Handler]] = {
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
_PRIVILEGED_417: Final = frozenset(
    int(op) for op in (Op.DEBUG, Op.INTRODUCE, Op.RELEASE, Op.IS_DOMAIN_INTRODUCED, Op.RESUME, Op.SET_TARGET)
)
_NOTID: Final = frozenset({int(Op.WATCH), int(Op.UNWATCH)})


def op_table(compat: str) -> OpTable:
    """The ops C xenstored ``compat`` has: 4.17's, and from 4.22 also GET/SET_FEATURE and GET/SET_QUOTA."""
    if compat == "4.17":
        return OpTable(_HANDLERS_417, _PRIVILEGED_417, _NOTID)
    return OpTable({**_HANDLERS_417, **FEATURE_HANDLERS}, _PRIVILEGED_417 | FEATURE_PRIVILEGED, _NOTID)
