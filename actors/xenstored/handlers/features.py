"""The ops C xenstored 4.22 added: GET_FEATURE, SET_FEATURE, GET_QUOTA and SET_QUOTA (``domain.c``).

Features are per domain: every domain starts with all of them (``FEATURES``); dom0 may change a domain's
before it is introduced (EBUSY after), so dom0 always has them all. Quotas are global (the values a new
domain starts with) and per domain; the names are those of C 4.22, ``soft-`` marking a soft quota. Only dom0
may use these ops, except GET_FEATURE for the caller's own features.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from actors.xs.wire import DOMID_FIRST_RESERVED, Frame, Op

from ..connection import Connection
from ..core import Core, Handler
from ..domains import FEATURES, Domain, Quotas
from ..failure import EACCES, EBUSY, EINVAL, ENOENT, Fail
from ..permissions import atoi
from ..transactions import Transaction, View

__all__ = ["FEATURE_HANDLERS", "FEATURE_PRIVILEGED", "QUOTA_NAMES"]

# The quota names of C 4.22 in its order, each with the Quotas field it sets. Every other soft quota is off.
QUOTA_NAMES: Final = (
    ("nodes", "nodes"),
    ("watches", "watches"),
    ("outstanding", "outstanding"),
    ("memory", "memory"),
    ("soft-memory", "memory_soft"),
    ("transactions", "transactions"),
    ("transaction-nodes", "transaction_nodes"),
    ("node-permissions", "permissions"),
    ("path-max", "path_length"),
    ("node-size", "node_size"),
)
_FIELDS: Final = {name.encode(): field for name, field in QUOTA_NAMES}
_LIST: Final = " ".join(name for name, _ in QUOTA_NAMES).encode() + b"\0"


def _strings(payload: bytes) -> list[bytes]:
    return payload.split(b"\0")[:-1]


def _parse_domid(raw: bytes) -> int:
    """``parse_domid()``: ``strtoul`` that must read the whole string, at most 65535; else EINVAL."""
    text = raw.lstrip(b" \t\n\v\f\r")
    negative = text[:1] == b"-"
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if digits and not digits.isdigit():
        raise Fail(EINVAL)
    value = int(digits) if digits else 0
    if negative and value:
        raise Fail(EINVAL)  # strtoul wraps it past 65535
    if value > 65535:
        raise Fail(EINVAL)
    return value


def _existing_domain(core: Core, raw: bytes) -> Domain[Connection]:
    """``find_or_alloc_existing_domain()``: every domid below DOMID_FIRST_RESERVED exists here."""
    domid = _parse_domid(raw)
    if domid >= DOMID_FIRST_RESERVED:
        raise Fail(ENOENT)
    return core.domains.ensure(domid, core.store.generation)


def do_get_feature(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = _strings(frame.payload)
    if not args:
        features = conn.features
    else:
        if not conn.privileged:
            raise Fail(EACCES)
        if len(args) > 1:
            raise Fail(EINVAL)
        features = _existing_domain(core, args[0]).features
    return b"%d\0" % features


def do_set_feature(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = _strings(frame.payload)
    if len(args) != 2:
        raise Fail(EINVAL)
    domain_raw, features_raw = args
    domid = _parse_domid(domain_raw)
    features = atoi(features_raw) & 0xFFFFFFFF
    domain = _existing_domain(core, b"%d" % domid)
    if domain.introduced:
        raise Fail(EBUSY)
    if features & ~FEATURES:
        raise Fail(EINVAL)
    domain.features = features
    return b"OK\0"


def _quota_field(name: bytes) -> str:
    field = _FIELDS.get(name)
    if field is None:  # unknown, or a soft quota that is off
        raise Fail(EINVAL)
    return field


def do_get_quota(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = _strings(frame.payload)
    if len(args) > 2:
        raise Fail(EINVAL)
    if not args:
        return _LIST
    quotas: Quotas = core.quotas if len(args) == 1 else _existing_domain(core, args[0]).quotas
    return b"%d\0" % int(getattr(quotas, _quota_field(args[-1])))


def do_set_quota(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = _strings(frame.payload)
    if len(args) not in (2, 3):
        raise Fail(EINVAL)
    domain = _existing_domain(core, args[0]) if len(args) == 3 else None
    field = _quota_field(args[-2])
    value = atoi(args[-1]) & 0xFFFFFFFF
    if value == 0:  # "0" would mean "no quota": C 4.22 refuses to set it
        raise Fail(EINVAL)
    if domain is None:
        core.quotas = dataclasses.replace(core.quotas, **{field: value})
    else:
        domain.quotas = dataclasses.replace(domain.quotas, **{field: value})
    return b"OK\0"


FEATURE_HANDLERS: Final[dict[int, Handler]] = {
    int(Op.GET_FEATURE): do_get_feature,
    int(Op.SET_FEATURE): do_set_feature,
    int(Op.GET_QUOTA): do_get_quota,
    int(Op.SET_QUOTA): do_set_quota,
}
FEATURE_PRIVILEGED: Final = frozenset(int(op) for op in (Op.SET_FEATURE, Op.GET_QUOTA, Op.SET_QUOTA))
