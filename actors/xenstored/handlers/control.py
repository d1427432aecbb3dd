"""The handler of CONTROL (alias DEBUG): the commands of C xenstored's ``control.c`` this daemon has."""

from __future__ import annotations

import dataclasses
import os
from typing import Final

from loguru import logger

from actors.xs.wire import Frame

from ..connection import Connection
from ..core import Core
from ..failure import EBADF, EINVAL, ENOENT, Fail
from ..permissions import atoi
from ..transactions import Transaction, View
from .common import OK, domid_arg, strings

__all__ = ["do_control"]

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
# C 4.22 lists its accounting items (``quota_adm``) in their enum's order, with their own descriptions.
_HARD_QUOTAS_422: Final = (
    ("nodes", "nodes", "Nodes per domain"),
    ("watches", "watches", "Watches per domain"),
    ("outstanding", "outstanding", "Outstanding requests per domain"),
    ("memory", "memory", "Total Xenstore memory per domain"),
    ("transactions", "transactions", "Active transactions per domain"),
    ("transaction-nodes", "transaction_nodes", "Max. number of accessed nodes per transaction"),
    ("node-permissions", "permissions", "Max. number of permissions per node"),
    ("path-max", "path_length", "Max. length of a node path"),
    ("node-size", "node_size", "Max. size of a node"),
)
_SOFT_QUOTAS_422: Final = (("memory", "memory_soft", "Total Xenstore memory per domain"),)
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
    nodes = core.store.memory(domid)
    watches = sum(len(w.path) + len(w.token) for c in conns for w in c.watches.values())
    return nodes + watches + sum(c.queued_bytes for c in conns)


def _quota_domain(core: Core, raw: bytes) -> bytes:
    """``domain_get_quota()``: 4.17 prints five counts; 4.22 every accounting item with the highest value
    seen (here: the highest seen by these queries, as the embedded daemon keeps no running maximum)."""
    domid = domid_arg(raw)
    domain = core.domains.get(domid)
    if domain is None:
        raise Fail(ENOENT)
    conns = [c for c in core.connections.values() if c.domid == domid]
    use = {
        "nodes": core.store.count(domid),
        "watches": sum(len(c.watches) for c in conns),
        "transactions": sum(len(c.transactions) for c in conns),
        "outstanding": sum(c.outstanding for c in conns),
        "memory": _memory(core, domid, conns),
    }
    if not core.v422:
        rows = "".join(f"{name:<16s}: {use[name]:8d}\n" for name in _USE_417)
        return f"Domain {domid}:\n{rows}".encode() + b"\0"
    seen = domain.quota_max
    lines = []
    for name, _, _ in _HARD_QUOTAS_422:
        value = use.get(name, 0)  # the per-request items are no domain-wide count: 0, as in C
        seen[name] = max(seen.get(name, 0), value)
        lines.append(f"{name:<17s}: {value:8d} (max {seen[name]:8d})\n")
    return f"Domain {domid}:\n{''.join(lines)}".encode() + b"\0"


_USE_417: Final = ("nodes", "watches", "transactions", "outstanding", "memory")


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
    hard, soft = (_HARD_QUOTAS_422, _SOFT_QUOTAS_422) if core.v422 else (_HARD_QUOTAS, _SOFT_QUOTAS)
    if cmd == b"quota":
        if not rest:
            return _quota_show(core, hard)
        if rest[0] == b"set":
            return _quota_set(core, rest[1:], hard)
        if len(rest) != 1:
            raise Fail(EINVAL)
        return _quota_domain(core, rest[0])
    if cmd == b"quota-soft":
        if not rest:
            return _quota_show(core, soft)
        if rest[0] == b"set":
            return _quota_set(core, rest[1:], soft)
        raise Fail(EINVAL)
    if cmd == b"live-update":  # not supported here; C answers EINVAL to a bare "live-update" too
        raise Fail(EINVAL)
    if cmd == b"help":
        if rest:
            raise Fail(EINVAL)
        return "".join(f"{name}\t{pars}\n" for name, pars in _COMMANDS).encode() + b"\0"
    raise Fail(EINVAL)
